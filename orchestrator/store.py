"""The run store: cached node executions and the runs that used them.

```
<storage>/
  cache/<kind>/<key>/              one node execution, keyed by its cache key
    outputs/<name>/                the artifacts (plain files)
    log.txt metrics.json metrics.jsonl tensorboard/ work/ (checkpoints, scratch)
    manifest.json                  written last, atomically: the entry is complete only once it exists
  <recipe>/
    index.json                     per node: the key parts of its last completed execution (for `plan`'s "why")
    <run-id>/
      recipe.resolved.yaml plan.json status.json
      <node>/node.json             which cache entry this run used (+ a symlink `entry` where possible)
      report/                      written by evaluation components
```
A crash leaves an entry without manifest.json: it is never reused, its outputs are cleared before the
next attempt, and its work/ folder (checkpoints) is kept so training resumes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@dataclass
class Store:
    root: Path

    @classmethod
    def at(cls, storage: str) -> "Store":
        if "://" in storage and not storage.startswith("file://"):
            raise ValueError(
                f"storage '{storage}': remote URIs need a shared mount in this version; mount the bucket "
                "(e.g. with s3fs/gcsfuse) on every node and give its path")
        path = Path(storage.removeprefix("file://")).expanduser().resolve()
        return cls(path)

    # -- cache entries ----------------------------------------------------------------------
    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / "cache" / kind / key

    def is_complete(self, kind: str, key: str) -> bool:
        return (self.entry_dir(kind, key) / MANIFEST).is_file()

    def manifest(self, kind: str, key: str) -> dict[str, Any] | None:
        return read_json(self.entry_dir(kind, key) / MANIFEST)

    def prepare_entry(self, kind: str, key: str) -> Path:
        """Make an entry ready for a (new or repeated) attempt: clear half-written outputs, keep work/."""
        entry = self.entry_dir(kind, key)
        (entry / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(entry / "outputs", ignore_errors=True)
        for name in ("metrics.json",):
            (entry / name).unlink(missing_ok=True)
        entry.mkdir(parents=True, exist_ok=True)
        return entry

    def finish_entry(self, kind: str, key: str, node: str, outputs: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
        """Check every declared output was written, then write the manifest (last)."""
        entry = self.entry_dir(kind, key)
        missing = [name for name in outputs if not (entry / "outputs" / name).is_dir()
                   or not any((entry / "outputs" / name).iterdir())]
        if missing:
            raise RuntimeError(f"component '{kind}' finished without writing output(s) {', '.join(missing)}; "
                               "this is a bug in the component")
        manifest = {
            "kind": kind, "key": key, "node": node, "completed_at": time.time(),
            "outputs": {name: {"kind": akind, "path": f"outputs/{name}"} for name, akind in outputs.items()},
            **extra,
        }
        write_json_atomic(entry / MANIFEST, manifest)
        return manifest

    # -- per-recipe index ---------------------------------------------------------------------
    def index_path(self, recipe: str) -> Path:
        return self.root / recipe / "index.json"

    def read_index(self, recipe: str) -> dict[str, Any]:
        return read_json(self.index_path(recipe), {}) or {}

    def update_index(self, recipe: str, node: str, parts: dict[str, Any], key: str) -> None:
        index = self.read_index(recipe)
        index[node] = {"key": key, "parts": parts}
        write_json_atomic(self.index_path(recipe), index)

    # -- runs -------------------------------------------------------------------------------
    def new_run(self, recipe: str) -> tuple[str, Path]:
        now = time.time()
        # Sortable by time to the millisecond, plus a short random tail against collisions.
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}{secrets.token_hex(1)}"
        run_dir = self.root / recipe / run_id
        run_dir.mkdir(parents=True)
        return run_id, run_dir

    def link_node(self, run_dir: Path, node: str, kind: str, key: str, state: str) -> None:
        node_dir = run_dir / node
        node_dir.mkdir(parents=True, exist_ok=True)
        entry = self.entry_dir(kind, key)
        write_json_atomic(node_dir / "node.json", {"kind": kind, "key": key, "entry": str(entry), "state": state})
        link = node_dir / "entry"
        if not link.is_symlink():
            try:
                link.symlink_to(os.path.relpath(entry, node_dir), target_is_directory=True)
            except OSError:  # filesystems without symlinks: node.json is the pointer
                pass

    def runs(self) -> list[Path]:
        """Every run folder, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.parent for p in self.root.glob("*/*/status.json")]
        return sorted(found, key=lambda p: p.name)

    def find_run(self, ref: str | None) -> Path:
        """A run by id, by 'recipe/id', by recipe name (its latest) or the latest of all when None."""
        runs = self.runs()
        if not runs:
            raise LookupError(f"no runs under {self.root}")
        if ref in (None, "", "latest"):
            return runs[-1]
        candidates = [r for r in runs if r.name == ref or f"{r.parent.name}/{r.name}" == ref]
        if not candidates:
            candidates = [r for r in runs if r.parent.name == ref]
        if not candidates:
            candidates = [r for r in runs if r.name.startswith(ref) or r.name.endswith(ref)]
        if not candidates:
            raise LookupError(f"no run '{ref}' under {self.root}; `orch ls` lists them")
        return candidates[-1]


def run_artifacts(run_dir: Path) -> list[Any]:
    """Every output of a run's finished nodes, as Artifacts (meta: node, output), in the run's node order."""
    from .api import Artifact

    status = read_json(Path(run_dir) / "status.json", {}) or {}
    found = []
    for node in status.get("nodes") or {}:
        info = read_json(Path(run_dir) / node / "node.json")
        if not info:
            continue
        entry = Path(info["entry"])
        manifest = read_json(entry / MANIFEST)
        if not manifest:
            continue
        for name, out in (manifest.get("outputs") or {}).items():
            found.append(Artifact(kind=out["kind"], path=entry / out["path"], key=f"{manifest['key']}:{name}",
                                  meta={"node": node, "output": name}))
    return found
