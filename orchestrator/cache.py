"""Cache keys: sha256 of canonical JSON of everything that decides a node's output.

A key covers the component kind and version, the validated params (defaults included, so a
changed default changes the key), the recipe seed, the keys of the input artifacts, content
digests of the external files the params name, fingerprints of local model folders, the sweep
spec, and for training nodes the worker count (it changes the global batch).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import LOCAL_FILE, MODEL_REF
from .graph import Node
from .recipe.fields import iter_marked

# Folders larger than this are fingerprinted by (name, size, mtime) instead of content.
CONTENT_DIGEST_LIMIT = 256 * 1024 * 1024


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest_path(path: Path) -> str:
    """Content digest of a file, or of a folder's files (by relative path) when small enough."""
    if path.is_file():
        return "sha256:" + _file_sha(path)
    if not path.is_dir():
        return "missing"
    files = sorted(p for p in path.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    if total <= CONTENT_DIGEST_LIMIT:
        for p in files:
            h.update(str(p.relative_to(path)).encode() + b"\0" + _file_sha(p).encode() + b"\n")
        return "sha256:" + h.hexdigest()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "stat:" + h.hexdigest()


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class KeyParts:
    """What went into a key, kept so that `orch plan` can say why a key changed."""

    kind: str
    version: str
    params: dict[str, Any]
    seed: int
    inputs: dict[str, list[str]]
    files: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    sweep: Any = None
    workers: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "version": self.version, "params": self.params, "seed": self.seed,
            "inputs": self.inputs, "files": self.files, "models": self.models, "sweep": self.sweep,
            "workers": self.workers,
        }

    @property
    def key(self) -> str:
        return sha256_text(canonical_json(self.to_json()))[:24]


def key_parts(node: Node, seed: int, input_keys: dict[str, list[str]], recipe_dir: Path) -> KeyParts:
    params = node.params.model_dump(mode="json")
    files: dict[str, str] = {}
    for loc, value in iter_marked(node.params, LOCAL_FILE):
        files[".".join(map(str, loc))] = digest_path(_resolve(recipe_dir, str(value)))
    models: dict[str, str] = {}
    for loc, value in iter_marked(node.params, MODEL_REF):
        p = _resolve(recipe_dir, str(value))
        # A local folder is fingerprinted; an alias or hub id is identified by its name.
        models[".".join(map(str, loc))] = digest_path(p) if p.exists() else f"ref:{value}"
    sweep = node.sweep.model_dump(mode="json") if hasattr(node.sweep, "model_dump") else node.sweep
    return KeyParts(
        kind=node.kind, version=node.spec.version, params=params, seed=seed, inputs=input_keys,
        files=files, models=models, sweep=sweep,
        workers=node.resources.workers if node.is_training else None,
    )


def _resolve(recipe_dir: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (recipe_dir / p)


def explain_change(old: dict[str, Any] | None, new: KeyParts, upstream_changed: list[str]) -> str:
    """Why a node must run, in words: new, params changed (which), input changed (from where)..."""
    if old is None:
        return "new"
    reasons: list[str] = []
    if old.get("version") != new.version:
        reasons.append(f"version changed ({old.get('version')} -> {new.version})")
    if old.get("params") != new.params:
        reasons.append("params changed: " + ", ".join(_diff(old.get("params") or {}, new.params)))
    if old.get("seed") != new.seed:
        reasons.append(f"seed changed ({old.get('seed')} -> {new.seed})")
    if old.get("inputs") != new.inputs:
        if upstream_changed:
            reasons.append("input changed (" + ", ".join(upstream_changed) + ")")
        else:
            names = sorted(k for k in set(old.get("inputs") or {}) | set(new.inputs)
                           if (old.get("inputs") or {}).get(k) != new.inputs.get(k))
            reasons.append("inputs changed (" + ", ".join(names) + ")")
    if old.get("files") != new.files:
        changed = sorted(k for k in set(old.get("files") or {}) | set(new.files)
                         if (old.get("files") or {}).get(k) != new.files.get(k))
        reasons.append("file changed (" + ", ".join(changed) + ")")
    if old.get("models") != new.models:
        reasons.append("model changed")
    if old.get("sweep") != new.sweep:
        reasons.append("sweep changed")
    if old.get("workers") != new.workers:
        reasons.append(f"workers changed ({old.get('workers')} -> {new.workers})")
    return "; ".join(reasons) if reasons else "not in the cache (removed, or the last attempt did not finish)"


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                out.extend(_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return [f"{prefix.rstrip('.')} {_short(old)} -> {_short(new)}"]


def _short(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
