"""Training components as Ray Train jobs: a TorchTrainer whose workers run the component's loop.

Checkpoints and Ray Train's own run state live in the node's cache entry (``work/ray``) under a
fixed run name, so a re-run of the same node (same key) after a killed driver restores from the
last reported checkpoint (Ray Train V2 restores a run found at the same storage path and name),
and a failed worker group is restarted from it (``FailureConfig``).

On a remote store that state goes straight to the remote (``storage_filesystem``), so a rerun on
another machine resumes too. Workers on a node other than the driver's write into their own
machine's mirror and upload what they wrote when they end (their log as ``log.<node ip>.txt``);
the driver downloads what it lacks before it finishes the entry.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .job import NodeJob, append_failure, finish, load_component, localize, pull_inputs, push_log

RAY_TRAIN_RUN_NAME = "train"


def make_train_loop(job: NodeJob, extra_report: Callable[[dict[str, float]], None] | None = None):
    """The per-worker function handed to TorchTrainer."""

    def train_loop(config: dict[str, Any] | None = None) -> None:
        import ray.train

        os.environ.update(job.env)
        wjob, store = localize(job)
        spec = load_component(job.kind, job.module)
        params = spec.params.model_validate({**job.params, **((config or {}).get("params") or {})})
        tctx = ray.train.get_context()
        rank, world = tctx.get_world_rank(), tctx.get_world_size()
        trial_dir = (config or {}).get("entry_dir")
        from ray.util import get_node_ip_address

        # A worker away from its driver's node (remote store): its mirror is not the driver's.
        away = store.remote is not None and job.home_node not in ("", ray.get_runtime_context().get_node_id())
        if store.remote is not None:
            pull_inputs(wjob, store)
        folder = Path(trial_dir or wjob.entry_dir)
        if away and rank == 0:  # rank 0 writes the outputs: none of an older attempt on this machine may stay
            import shutil

            shutil.rmtree(folder / "outputs", ignore_errors=True)

        def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            from ray.train import Checkpoint

            ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if (checkpoint_dir and rank == 0) else None
            ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=ckpt)

        def latest() -> Path | None:
            ckpt = ray.train.get_checkpoint()
            if ckpt is None:
                return None
            path = Path(ckpt.path)
            local = getattr(ckpt.filesystem, "type_name", "local") == "local"
            return path if local and path.is_dir() else Path(ckpt.to_directory())  # a remote one is downloaded

        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        ctx = wjob.context(world_rank=rank, world_size=world, num_gpus=gpus, report_fn=report, checkpoint_fn=latest,
                           **({"entry_dir": Path(trial_dir)} if trial_dir else {}))
        ctx.log(f"worker {rank}/{world} pid {os.getpid()} on {get_node_ip_address()}"
                + (f", {gpus} GPU(s)" if gpus else ""))
        try:
            with ctx.capture_warnings():
                spec.fn(params, wjob.artifacts(), ctx)
        except BaseException as exc:
            # Every rank logs its own error: the one that failed first is usually the cause, and the
            # others only see "connection closed by peer" from the collective it left.
            append_failure(wjob, exc, who=f"rank {rank}")
            raise
        finally:
            ctx.close()
            if away:  # what this worker wrote on this machine goes to the remote, for the driver
                log_name = f"log.{get_node_ip_address()}.txt"
                if rank == 0:
                    store.push_dir(folder, rename={"log.txt": log_name})
                elif (folder / "log.txt").is_file():
                    store.remote.upload_file(folder / "log.txt", f"{store.rel(folder)}/{log_name}")

    return train_loop


def remote_storage(job: NodeJob, store, *parts: str) -> tuple[Any, Any]:
    """Where Ray Train / Tune keep their state for a job: a local path in the entry, or on a remote
    store the same place on the remote, with its pyarrow filesystem."""
    entry = Path(job.entry_dir).joinpath(*parts)
    if store.remote is None:
        entry.mkdir(parents=True, exist_ok=True)
        return entry, None
    return store.remote.path(store.rel(entry)), store.remote.fs


def build_trainer(job: NodeJob, storage_path: Path | str, name: str, callbacks: list | None = None,
                  config: dict[str, Any] | None = None, storage_filesystem: Any = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = job.resources
    use_gpu = float(res.get("gpus_per_worker", 0) or 0) > 0
    per_worker: dict[str, float] = {"CPU": float(res.get("cpus_per_worker", 1))}
    if use_gpu:
        per_worker["GPU"] = float(res["gpus_per_worker"])
    if res.get("memory_gb"):
        per_worker["memory"] = float(res["memory_gb"]) * 1024**3
    scaling = ScalingConfig(num_workers=int(res.get("workers", 1)), use_gpu=use_gpu, resources_per_worker=per_worker,
                            placement_strategy="SPREAD" if res.get("placement") == "spread" else "PACK")
    run_config = RunConfig(
        name=name,
        storage_path=str(storage_path),
        storage_filesystem=storage_filesystem,
        failure_config=FailureConfig(max_failures=int(res.get("max_failures", 2))),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        callbacks=callbacks or [],
    )
    return TorchTrainer(
        make_train_loop(job),
        train_loop_config=config or {},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
    )


def run_train_job(job: NodeJob) -> dict[str, Any]:
    """Body of the (CPU-less) Ray task that drives one training node."""
    import ray

    os.environ.update(job.env)
    started = time.time()
    job, store = localize(job)
    job = replace(job, home_node=ray.get_runtime_context().get_node_id())
    if store.remote is not None:
        store.prepare_entry(job.kind, job.key, local_only=True)
    storage, fs = remote_storage(job, store, "work", "ray")
    if fs is None:
        resumed = (Path(storage) / RAY_TRAIN_RUN_NAME).exists()
    else:
        resumed = store.remote.exists(store.rel(Path(job.entry_dir) / "work" / "ray" / RAY_TRAIN_RUN_NAME))
    ctx = job.context()
    ctx.log(f"start {job.kind} as a Ray Train job: {job.resources.get('workers', 1)} worker(s)"
            + (" (resuming from the previous attempt's state)" if resumed else ""))
    trainer = build_trainer(job, storage, RAY_TRAIN_RUN_NAME, storage_filesystem=fs)
    try:
        result = trainer.fit()
        if result.error is not None:  # pragma: no cover - fit() raises in V2, kept for safety
            raise result.error
        store.pull_missing(Path(job.entry_dir))  # what workers on other machines wrote
    except BaseException as exc:
        append_failure(job, exc)
        push_log(job, store)
        raise
    ctx.log(f"done in {time.time() - started:.1f}s")
    return finish(job, started, {"resumed": resumed})
