"""What travels to a Ray worker to run one node, and the code that runs it there.

A ``NodeJob`` is plain data (picklable, no component objects): the worker re-imports the
component from the registry by kind, validates the params again and builds the context.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..api import Artifact
from ..context import NodeContext


@dataclass
class NodeJob:
    node: str
    kind: str
    key: str
    params: dict[str, Any]
    inputs: dict[str, list[dict[str, Any]]]  # name -> [{kind, path, key}]
    many: dict[str, bool]
    outputs: dict[str, str]
    entry_dir: str
    store_root: str
    recipe_dir: str
    seed: int
    resources: dict[str, Any]
    parts: dict[str, Any] = field(default_factory=dict)
    progress: Any = None  # a ProgressBoard actor handle, or None
    env: dict[str, str] = field(default_factory=dict)
    module: str = ""  # the module that registered the kind (imported in the worker if needed)

    def artifacts(self) -> dict[str, Artifact | list[Artifact] | None]:
        out: dict[str, Artifact | list[Artifact] | None] = {}
        for name, items in self.inputs.items():
            arts = [Artifact(kind=i["kind"], path=Path(i["path"]), key=i["key"], meta=i.get("meta", {})) for i in items]
            out[name] = arts if self.many.get(name) else (arts[0] if arts else None)
        return out

    def context(self, **overrides: Any) -> NodeContext:
        sink: Callable[[dict[str, Any]], None] | None = None
        if self.progress is not None:
            board = self.progress

            def sink(event: dict[str, Any]) -> None:
                board.update.remote(event)

        fields = dict(node=self.node, entry_dir=Path(self.entry_dir), recipe_dir=Path(self.recipe_dir),
                      seed=self.seed, progress_sink=sink)
        fields.update(overrides)
        return NodeContext(**fields)


def load_component(kind: str, module: str = ""):
    """The component spec in this (worker) process: built-ins, entry points, else the registering module."""
    import importlib

    from ..api import _REGISTRY
    from ..registry import load_registry

    registry = load_registry()
    if kind not in registry and module:
        importlib.import_module(module)  # a module the driver had registered (e.g. a test's components)
        return _REGISTRY[kind]
    return registry[kind]


def finish(job: NodeJob, started: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the manifest once outputs are complete (the last step of a successful node)."""
    from ..store import Store, read_json

    store = Store(Path(job.store_root))
    summary = read_json(Path(job.entry_dir) / "metrics.json", {}) or {}
    return store.finish_entry(job.kind, job.key, job.node, job.outputs,
                              {"duration_s": round(time.time() - started, 3), "parts": job.parts,
                               "summary": summary, **(extra or {})})


def append_failure(job: NodeJob, exc: BaseException, who: str = "") -> None:
    """Append a traceback to the node's log; ``who`` names the worker rank for training jobs."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with open(Path(job.entry_dir) / "log.txt", "a", encoding="utf-8") as fh:
        fh.write(f"[{time.strftime('%H:%M:%S')}{' ' + who if who else ''}] FAILED\n{text}\n")


def run_task_job(job: NodeJob) -> dict[str, Any]:
    """Body of the Ray task for a plain component: run it once, then write the manifest."""
    import os

    os.environ.update(job.env)
    started = time.time()
    spec = load_component(job.kind, job.module)
    params = spec.params.model_validate(job.params)
    ctx = job.context(num_gpus=int(job.resources.get("gpus", 0) or 0))
    ctx.log(f"start {job.kind} (key {job.key})")
    try:
        spec.fn(params, job.artifacts(), ctx)
        ctx.log(f"done in {time.time() - started:.1f}s")
        return finish(job, started)
    except BaseException as exc:
        append_failure(job, exc)
        raise
    finally:
        ctx.close()
