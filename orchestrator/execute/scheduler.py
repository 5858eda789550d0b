"""Run a plan on Ray: submit every ready node at once, follow them, record what happened.

Plain components run as Ray tasks with their node's cpus/gpus; training components run as a
CPU-less Ray task that drives a Ray Train job (its workers hold the resources). A failed node
marks its descendants skipped; other branches go on. Nothing here knows what a node computes.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plan import Plan
from ..store import Store, write_json_atomic
from .job import NodeJob

# Environment for Ray processes. Ray Train's report() waits on a health-check tick; a short tick
# keeps per-report overhead low for the short jobs orch runs on laptops and in tests.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# Environment variables a node job carries to its Ray workers (settings, never secrets; see NodeJob).
# Per-machine settings (ORCH_STAGING_DIR, credentials) are not: each node has its own.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ORCH_MODEL_CACHE", "HF_HOME")


@dataclass
class NodeOutcome:
    state: str  # done | failed | skipped | cached | interrupted | not selected
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    log: str | None = None


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    outcomes: dict[str, NodeOutcome] = field(default_factory=dict)
    started_ray: bool = False
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.state in ("done", "cached", "not selected") for o in self.outcomes.values())


class Scheduler:
    def __init__(self, plan: Plan, store: Store, run_id: str, run_dir: Path, console, address: str | None = None):
        self.plan = plan
        self.store = store
        self.graph = plan.recipe.graph
        self.run_id = run_id
        self.run_dir = run_dir
        self.console = console
        self.address = address
        self.result = RunResult(run_id, run_dir)
        self._pushed: str | None = None  # what status.json said when last uploaded (remote store)

    # -- bookkeeping ------------------------------------------------------------------------
    def write_status(self, state: str) -> None:
        """status.json, rewritten at every check; a remote store gets it when a state changed."""
        nodes = {}
        for name, p in self.plan.nodes.items():
            o = self.result.outcomes.get(name)
            nodes[name] = {
                "kind": p.kind, "key": p.key, "planned": p.action, "reason": p.reason,
                "state": o.state if o else "waiting",
                "started": o.started if o else None, "ended": o.ended if o else None,
                "error": o.error if o else None,
                "log": str(self.store.entry_dir(p.kind, p.key) / "log.txt"),
            }
        write_json_atomic(self.run_dir / "status.json", {
            "recipe": self.plan.recipe.name, "run_id": self.run_id, "state": state,
            "recipe_file": str(self.plan.recipe.loaded.path), "profile": self.plan.recipe.loaded.profile,
            "overrides": self.plan.recipe.loaded.overrides, "storage": self.store.location,
            "updated": time.time(), "nodes": nodes,
        })
        if self.store.remote is not None:
            signature = repr((state, [(n["state"], n["error"]) for n in nodes.values()]))
            if signature != self._pushed:
                self.store.push(self.run_dir / "status.json")
                self._pushed = signature

    def record_complete(self, name: str) -> None:
        p = self.plan.nodes[name]
        self.store.update_index(self.plan.recipe.name, name, p.parts.to_json(), p.key)

    # -- execution --------------------------------------------------------------------------
    def run(self, view) -> RunResult:
        plan = self.plan
        for name, p in plan.nodes.items():
            self.store.link_node(self.run_dir, name, p.kind, p.key, p.action)
            if p.action == "cached":
                self.result.outcomes[name] = NodeOutcome("cached")
                view.set_state(name, "cached")
                self.record_complete(name)
            elif p.action == "skip":
                self.result.outcomes[name] = NodeOutcome("not selected")
                view.set_state(name, "not selected")
        self.write_status("running")
        if not plan.to_run:
            self.write_status("done")
            return self.result
        try:
            self._connect()
        except BaseException:
            self.write_status("failed")
            self._disconnect()
            raise
        try:
            self._loop(view)
        except KeyboardInterrupt:
            self.result.interrupted = True
            for name in plan.to_run:
                o = self.result.outcomes.get(name)
                if o is None or o.state == "running":
                    self.result.outcomes[name] = NodeOutcome("interrupted", o.started if o else None, time.time())
                    view.set_state(name, "interrupted")
        finally:
            final = "interrupted" if self.result.interrupted else ("done" if self.result.ok else "failed")
            self.write_status(final)
            self._disconnect()
        return self.result

    def _connect(self) -> None:
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
            # Clusters started by cluster/local_cluster.sh (and Ray's defaults) use token authentication;
            # Ray reads the mode at import, so it is set before the first `import ray`.
            token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).expanduser()
            if os.environ.get("RAY_AUTH_TOKEN") or token.exists():
                os.environ["RAY_AUTH_MODE"] = "token"
        import ray

        for k, v in RAY_ENV_DEFAULTS.items():
            os.environ.setdefault(k, v)
        # Ray's token authentication stays on (its default); a local cluster's token is in ~/.ray/auth_token.
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                # A local Ray for this run; everything listens on loopback.
                ray.init(include_dashboard=True, log_to_driver=False, configure_logging=False,
                         dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
                self.result.started_ray = True
        check_storage_visible(self.store)

    def _disconnect(self) -> None:
        if self.result.started_ray:
            import ray

            ray.shutdown()

    def _job(self, name: str, board) -> NodeJob:
        p = self.plan.nodes[name]
        node = self.graph.nodes[name]
        inputs: dict[str, list[dict[str, Any]]] = {}
        for inp, refs in node.inputs.items():
            items = []
            for ref in refs:
                producer = self.plan.nodes[ref.node]
                entry = self.store.entry_dir(producer.kind, producer.key)
                kind = self.graph.nodes[ref.node].spec.outputs[ref.output]
                items.append({"kind": kind, "path": str(entry / "outputs" / ref.output),
                              "key": f"{producer.key}:{ref.output}", "meta": {"node": ref.node, "output": ref.output}})
            inputs[inp] = items
        entry = self.store.prepare_entry(p.kind, p.key, fresh=p.fresh)
        # Settings only, by name: secrets (tokens, bucket keys) come from the environment of each node.
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        env.update({k: os.environ.get(k, v) for k, v in RAY_ENV_DEFAULTS.items()})
        return NodeJob(
            node=name, kind=p.kind, key=p.key, params=node.params.model_dump(mode="json"), inputs=inputs,
            many={k: v.many for k, v in node.spec.inputs.items()}, outputs=dict(node.spec.outputs),
            entry_dir=str(entry), store_root=str(self.store.root), recipe_dir=str(self.plan.recipe.recipe_dir),
            seed=self.plan.recipe.seed, resources=node.resources.model_dump(), parts=p.parts.to_json(),
            progress=board, env=env, module=node.spec.module,
            remote=self.store.remote.uri if self.store.remote is not None else "",
        )

    def _submit(self, name: str, board):
        import ray

        from .job import run_task_job
        from .train import run_train_job

        node = self.graph.nodes[name]
        job = self._job(name, board)
        res = node.resources
        opts: dict[str, Any] = {"max_retries": 0, "name": f"orch:{name}"}
        # Drivers of training nodes and sweeps hold no CPU and stay on this (the driver's) node if it can
        # run tasks; if their process or node is lost they are retried, and Ray Train / Tune restore
        # from the state they keep in the node's cache entry. Exceptions in user code are not retried.
        driver = {"num_cpus": 0, "max_retries": 2, "retry_exceptions": False, "name": f"orch:{name}",
                  "scheduling_strategy": self._here}
        if node.sweep is not None:
            from .sweep import run_sweep_job

            return ray.remote(run_sweep_job).options(**driver).remote(job, node.sweep.model_dump(mode="json"))
        if node.is_training:
            return ray.remote(run_train_job).options(**driver).remote(job)
        if res.memory_gb:
            opts["memory"] = int(res.memory_gb * 1024**3)
        return ray.remote(run_task_job).options(num_cpus=res.cpus, num_gpus=res.gpus, **opts).remote(job)

    def _loop(self, view) -> None:
        import ray

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        board = ray.remote(num_cpus=0)(ProgressBoardActor).options(scheduling_strategy=self._here).remote()
        pending = list(self.plan.to_run)
        running: dict[Any, str] = {}
        outcomes = self.result.outcomes
        while pending or running:
            for name in list(pending):
                ups = self.graph.nodes[name].upstream
                if any(outcomes.get(u) and outcomes[u].state in ("failed", "skipped") for u in ups):
                    pending.remove(name)
                    bad = sorted(u for u in ups if outcomes[u].state in ("failed", "skipped"))
                    outcomes[name] = NodeOutcome("skipped", error=f"upstream {', '.join(bad)} did not finish")
                    view.set_state(name, "skipped", f"upstream {', '.join(bad)} did not finish")
                    continue
                if all(outcomes.get(u) and outcomes[u].state in ("done", "cached") for u in ups):
                    pending.remove(name)
                    running[self._submit(name, board)] = name
                    outcomes[name] = NodeOutcome("running", started=time.time())
                    view.set_state(name, "running")
            self.write_status("running")
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            try:
                view.update_progress(ray.get(board.snapshot.remote(), timeout=5))
            except Exception:  # progress is best effort
                pass
            for ref in ready:
                name = running.pop(ref)
                o = outcomes[name]
                o.ended = time.time()
                p = self.plan.nodes[name]
                o.log = str(self.store.entry_dir(p.kind, p.key) / "log.txt")
                try:
                    ray.get(ref)
                    o.state = "done"
                    self.record_complete(name)
                    view.set_state(name, "done")
                except Exception as exc:  # the node failed; its branch stops, others go on
                    o.state = "failed"
                    o.error = _error_line(exc)
                    view.set_state(name, "failed", o.error)
                    self._fetch_log(Path(o.log))

    def _fetch_log(self, log: Path) -> None:
        """A failed node's log, when it ran on another machine than this one's mirror (remote store)."""
        if self.store.remote is None or log.exists():
            return
        try:
            self.store.remote.download_file(self.store.rel(log), log)
        except Exception:  # best effort: the error line is already shown
            pass


class StorageNotShared(RuntimeError):
    pass


def check_storage_visible(store: Store | Path) -> None:
    """On a multi-node cluster, every node must see the run store at the same path. A remote store
    (s3://, gs://) is reached by every node through its URI: nothing to check here."""
    import secrets

    if isinstance(store, Store):
        if store.remote is not None:
            return
        root = store.root
    else:
        root = Path(store)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if len(nodes) <= 1:
        return
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".orch-visible-{secrets.token_hex(4)}"
    marker.write_text("orch")
    try:
        probe = ray.remote(num_cpus=0)(_path_exists)
        refs = {n["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
            for n in nodes}
        missing = [addr for addr, ref in refs.items() if not ray.get(ref, timeout=60)]
    finally:
        marker.unlink(missing_ok=True)
    if missing:
        raise StorageNotShared(
            f"storage {root} is not visible from node(s) {', '.join(sorted(missing))}: on a multi-node cluster "
            "the run store must be shared. Give `storage:` (or --storage) a path on a shared mount (NFS, "
            "s3fs/gcsfuse) that every node sees at the same path, or a bucket URI (s3://BUCKET/PREFIX, "
            "gs://BUCKET/PREFIX).")


def _path_exists(path: str) -> bool:
    return Path(path).exists()


class ProgressBoardActor:
    """Thin actor wrapper (kept separate so ProgressBoard stays importable without Ray)."""

    def __init__(self) -> None:
        from .progress import ProgressBoard

        self.board = ProgressBoard()

    def update(self, event: dict[str, Any]) -> None:
        self.board.update(event)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.board.snapshot()


_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt|Exit|NotFound|Failure))(?:\([^)]*\))?: (.+)$")


def _error_line(exc: BaseException) -> str:
    """The one line that says what went wrong: the innermost exception's message, not Ray's wrapping."""
    cause = getattr(exc, "cause", None) or exc
    lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
    if not lines:
        return type(cause).__name__
    # Ray's task errors carry the remote traceback(s); Ray Train's worker errors wrap the component's.
    # Pick the last "SomeError: message" line that is not Ray's own wrapper.
    candidates = [m for m in map(_EXC_LINE.match, lines) if m and not m.group(1).startswith(("RayTask", "WorkerGroup",
                                                                                           "RayActor", "TrainingFailed"))]
    if candidates:
        m = candidates[-1]
        line = f"{m.group(1)}: {m.group(2)}"
    else:
        line = lines[-1]
    return line if len(line) < 300 else line[:297] + "..."
