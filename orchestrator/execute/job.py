"""What travels to a Ray worker to run one node, and the code that runs it there.

A ``NodeJob`` is plain data (picklable, no component objects): the worker re-imports the
component from the registry by kind, validates the params again and builds the context.

On a remote store (``remote`` set) the paths in a job are those of the driver's staging mirror; a
worker maps them onto its own machine's mirror (``localize``), downloads the input entries it lacks,
and uploads what it wrote (``finish`` uploads the entry, then the manifest).
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, field, replace
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
    remote: str = ""  # URI of a remote store ("" for a local or shared-mount store)
    home_node: str = ""  # Ray node id of the training driver (its workers elsewhere upload what they write)

    def __post_init__(self) -> None:
        # A job is pickled into Ray's object store (which may spill to disk) and travels to other nodes:
        # whatever adds to its environment, nothing whose name looks secret goes with it.
        self.env = {k: v for k, v in self.env.items() if not looks_secret(k)}

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


# TOKENIZERS_PARALLELISM is the one common name with TOKEN in it that is not a secret.
_SECRET_NAME = re.compile(r"TOKEN(?!IZER)|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """Environment variables orch never forwards, records or prints (HF_TOKEN, AWS_SECRET_ACCESS_KEY...)."""
    return bool(_SECRET_NAME.search(name))


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` safe to show or store: values of secret-looking names replaced."""
    return {k: ("<redacted>" if looks_secret(k) else v) for k, v in env.items()}


def job_store(job: NodeJob):
    """The job's run store as seen from this process (for a remote store: this machine's mirror)."""
    from ..store import Store

    if job.remote:
        return Store.at(job.remote, probe=False)
    return Store(Path(job.store_root))


def localize(job: NodeJob) -> tuple[NodeJob, Any]:
    """The job with its paths in this machine's mirror of a remote store (unchanged otherwise), and the store."""
    store = job_store(job)
    old = job.store_root
    new = str(store.root)
    if not job.remote or old == new:
        return job, store

    def move(path: str) -> str:
        p = Path(path)
        return str(store.root / p.relative_to(old)) if p.is_relative_to(old) else path

    inputs = {name: [{**i, "path": move(i["path"])} for i in items] for name, items in job.inputs.items()}
    return replace(job, entry_dir=move(job.entry_dir), store_root=new, inputs=inputs), store


def pull_inputs(job: NodeJob, store) -> None:
    """Bring the entries of a job's inputs into this machine's mirror (a no-op for a local store)."""
    if store.remote is None:
        return
    for items in job.inputs.values():
        for item in items:
            parts = Path(store.rel(item["path"])).parts  # cache/<kind>/<key>/outputs/<name>
            if len(parts) >= 3 and parts[0] == "cache":
                store.pull_entry(parts[1], parts[2])


def push_log(job: NodeJob, store) -> None:
    """Best effort: a failed node's log reaches the remote store."""
    if store.remote is None:
        return
    try:
        store.push(Path(job.entry_dir) / "log.txt")
    except Exception:  # pragma: no cover - the failure itself is what matters
        pass


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
    """Write the manifest once outputs are complete (the last step of a successful node); on a remote
    store, upload the entry and then the manifest."""
    from ..store import read_json

    store = job_store(job)
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
    job, store = localize(job)
    if store.remote is not None:
        store.prepare_entry(job.kind, job.key, local_only=True)  # this machine's mirror may hold an old attempt
    spec = load_component(job.kind, job.module)
    params = spec.params.model_validate(job.params)
    ctx = job.context(num_gpus=int(job.resources.get("gpus", 0) or 0))
    ctx.log(f"start {job.kind} (key {job.key})")
    try:
        pull_inputs(job, store)
        with ctx.capture_warnings():
            spec.fn(params, job.artifacts(), ctx)
        ctx.log(f"done in {time.time() - started:.1f}s")
        ctx.close()
        return finish(job, started)
    except BaseException as exc:
        append_failure(job, exc)
        push_log(job, store)
        raise
    finally:
        ctx.close()
