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

A remote store (``storage: s3://bucket/prefix``, see ``remote.py``) has the same layout twice: on the
remote, which is the truth, and in a local staging mirror (``root``) on every machine, where nodes
read and write plain files. An entry is complete when its manifest exists *on the remote*; a node
uploads its entry (all but work/, whose Ray Train state goes to the remote directly) and then its
manifest; a node that needs an input entry downloads it into its machine's mirror, manifest last.
Run folders and index.json are uploaded as they change and downloaded when listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
# Never uploaded with an entry: scratch and checkpoints (Ray Train writes its state to the remote itself).
LOCAL_ONLY = ("work",)


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
    root: Path  # the store, or for a remote store this machine's staging mirror of it
    remote: Any = None  # a remote.Remote, or None for a local (or shared-mount) store

    @classmethod
    def at(cls, storage: str, probe: bool = True) -> "Store":
        """The store named by `storage:`: a local path, file://PATH, or a URI pyarrow can open (s3://, gs://).
        A remote store is checked to be reachable (``probe``); errors are ValueErrors naming the URI."""
        from .remote import is_remote_uri

        if is_remote_uri(storage):
            from .remote import Remote, staging_dir

            remote = Remote(storage)
            if probe:
                remote.probe()
            return cls(staging_dir(storage), remote)
        path = Path(storage.removeprefix("file://")).expanduser().resolve()
        return cls(path)

    @property
    def location(self) -> str:
        """What the user named: the URI of a remote store, else the local path."""
        return self.remote.uri if self.remote is not None else str(self.root)

    def rel(self, path: Path | str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def push(self, *paths: Path) -> None:
        """Upload files of the local mirror to the remote (a no-op for a local store)."""
        if self.remote is None:
            return
        for path in paths:
            if Path(path).is_file():
                self.remote.upload_file(Path(path), self.rel(path))

    # -- cache entries ----------------------------------------------------------------------
    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / "cache" / kind / key

    def is_complete(self, kind: str, key: str) -> bool:
        if self.remote is not None:  # the remote is the truth: a manifest only in a local mirror does not count
            return self.remote.exists(f"cache/{kind}/{key}/{MANIFEST}")
        return (self.entry_dir(kind, key) / MANIFEST).is_file()

    def manifest(self, kind: str, key: str) -> dict[str, Any] | None:
        return read_json(self.entry_dir(kind, key) / MANIFEST)

    def prepare_entry(self, kind: str, key: str, local_only: bool = False, fresh: bool = False) -> Path:
        """Make an entry ready for a (new or repeated) attempt: clear half-written outputs, keep work/
        (on the remote too, unless ``local_only``) so the attempt resumes; ``fresh`` (``--force``) clears
        work/ as well, so the node starts from scratch."""
        entry = self.entry_dir(kind, key)
        if fresh:
            shutil.rmtree(entry / "work", ignore_errors=True)
        (entry / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(entry / "outputs", ignore_errors=True)
        for name in ("metrics.json",):
            (entry / name).unlink(missing_ok=True)
        entry.mkdir(parents=True, exist_ok=True)
        if self.remote is not None and not local_only:
            rel = f"cache/{kind}/{key}"
            self.remote.delete(f"{rel}/{MANIFEST}")  # first: from here on the entry is incomplete everywhere
            self.remote.delete_dir(f"{rel}/outputs")
            self.remote.delete(f"{rel}/metrics.json")
            if fresh:
                self.remote.delete_dir(f"{rel}/work")
        return entry

    def pull_entry(self, kind: str, key: str) -> Path:
        """A complete entry in this machine's mirror: downloaded from the remote (manifest last) unless
        it is already here. Machine-wide lock, so two workers of one node never download it twice."""
        entry = self.entry_dir(kind, key)
        if self.remote is None or (entry / MANIFEST).is_file():
            return entry
        with self._lock(f"{kind}-{key}"):
            if (entry / MANIFEST).is_file():
                return entry
            rel = f"cache/{kind}/{key}"
            if not self.remote.exists(f"{rel}/{MANIFEST}"):
                raise LookupError(f"entry {rel} is not complete in {self.location} (no {MANIFEST})")
            shutil.rmtree(entry / "outputs", ignore_errors=True)  # a local half-attempt is never mixed in
            self.remote.download_dir(rel, entry, exclude=LOCAL_ONLY + (MANIFEST,))
            self.remote.download_file(f"{rel}/{MANIFEST}", entry / MANIFEST)
        return entry

    def pull_missing(self, entry: Path) -> int:
        """Files of an entry (or a sweep trial's folder) that other machines uploaded and this mirror lacks."""
        if self.remote is None:
            return 0
        return self.remote.download_dir(self.rel(entry), entry, exclude=LOCAL_ONLY + (MANIFEST,), only="missing")

    def push_dir(self, folder: Path, rename: dict[str, str] | None = None) -> None:
        """Upload a folder of the mirror (an entry's or a trial's), all but work/ and the manifest."""
        if self.remote is not None and folder.is_dir():
            self.remote.upload_dir(folder, self.rel(folder), exclude=LOCAL_ONLY + (MANIFEST,), rename=rename)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        import fcntl

        path = self.root / ".locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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
        if self.remote is not None:  # everything else first, the manifest last
            self.push_dir(entry)
        write_json_atomic(entry / MANIFEST, manifest)
        if self.remote is not None:
            try:
                self.remote.upload_file(entry / MANIFEST, f"{self.rel(entry)}/{MANIFEST}")
            except BaseException:
                (entry / MANIFEST).unlink(missing_ok=True)
                raise
        return manifest

    # -- per-recipe index ---------------------------------------------------------------------
    def index_path(self, recipe: str) -> Path:
        return self.root / recipe / "index.json"

    def read_index(self, recipe: str) -> dict[str, Any]:
        path = self.index_path(recipe)
        if self.remote is not None and self.remote.exists(self.rel(path)):
            self.remote.download_file(self.rel(path), path)
        return read_json(path, {}) or {}

    def update_index(self, recipe: str, node: str, parts: dict[str, Any], key: str) -> None:
        index = self.read_index(recipe)
        index[node] = {"key": key, "parts": parts}
        write_json_atomic(self.index_path(recipe), index)
        self.push(self.index_path(recipe))

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
        self.push(node_dir / "node.json")
        link = node_dir / "entry"
        if not link.is_symlink():
            try:
                link.symlink_to(os.path.relpath(entry, node_dir), target_is_directory=True)
            except OSError:  # filesystems without symlinks: node.json is the pointer
                pass

    def runs(self) -> list[Path]:
        """Every run folder, oldest first (a remote store's run folders are downloaded first)."""
        if self.remote is not None:
            for recipe in self.remote.dirs():
                if recipe != "cache":
                    self.remote.download_dir(recipe, self.root / recipe, only="changed")
        if not self.root.is_dir():
            return []
        found = [p.parent for p in self.root.glob("*/*/status.json")]
        return sorted(found, key=lambda p: p.name)

    def find_run(self, ref: str | None, entries: bool = False) -> Path:
        """A run by id, by 'recipe/id', by recipe name (its latest) or the latest of all when None.
        ``entries``: also bring the run's complete cache entries into a remote store's local mirror."""
        run = self._find_run(ref)
        if entries and self.remote is not None:
            for node in (read_json(run / "status.json", {}) or {}).get("nodes") or {}:
                info = read_json(run / node / "node.json")
                if info and self.is_complete(info["kind"], info["key"]):
                    self.pull_entry(info["kind"], info["key"])
        return run

    def _find_run(self, ref: str | None) -> Path:
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
        entry = node_entry(Path(run_dir), node)
        if entry is None:
            continue
        manifest = read_json(entry / MANIFEST)
        if not manifest:
            continue
        for name, out in (manifest.get("outputs") or {}).items():
            found.append(Artifact(kind=out["kind"], path=entry / out["path"], key=f"{manifest['key']}:{name}",
                                  meta={"node": node, "output": name}))
    return found


def node_entry(run_dir: Path, node: str) -> Path | None:
    """The cache entry a run's node used. node.json holds the path on the machine that ran it; when that
    path is not here (a remote store's mirror elsewhere, a copied store), the entry is found by kind and key
    in the store that holds the run folder (<root>/<recipe>/<run-id>)."""
    info = read_json(Path(run_dir) / node / "node.json")
    if not info:
        return None
    entry = Path(info["entry"])
    if entry.exists():
        return entry
    return Path(run_dir).resolve().parent.parent / "cache" / info["kind"] / info["key"]
