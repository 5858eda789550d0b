"""Training components as Ray Train jobs: a TorchTrainer whose workers run the component's loop.

Checkpoints and Ray Train's own run state live in the node's cache entry (``work/ray``) under a
fixed run name, so a re-run of the same node (same key) after a killed driver restores from the
last reported checkpoint (Ray Train V2 restores a run found at the same storage path and name),
and a failed worker group is restarted from it (``FailureConfig``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from .job import NodeJob, append_failure, finish, load_component

RAY_TRAIN_RUN_NAME = "train"


def make_train_loop(job: NodeJob, extra_report: Callable[[dict[str, float]], None] | None = None):
    """The per-worker function handed to TorchTrainer."""

    def train_loop(config: dict[str, Any] | None = None) -> None:
        import ray.train

        os.environ.update(job.env)
        spec = load_component(job.kind, job.module)
        params = spec.params.model_validate({**job.params, **((config or {}).get("params") or {})})
        tctx = ray.train.get_context()
        rank, world = tctx.get_world_rank(), tctx.get_world_size()
        trial_dir = (config or {}).get("entry_dir")

        def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            from ray.train import Checkpoint

            ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if (checkpoint_dir and rank == 0) else None
            ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=ckpt)

        def latest() -> Path | None:
            ckpt = ray.train.get_checkpoint()
            if ckpt is None:
                return None
            path = Path(ckpt.path)
            return path if path.is_dir() else Path(ckpt.to_directory())

        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        ctx = job.context(world_rank=rank, world_size=world, num_gpus=gpus, report_fn=report, checkpoint_fn=latest,
                          **({"entry_dir": Path(trial_dir)} if trial_dir else {}))
        from ray.util import get_node_ip_address

        ctx.log(f"worker {rank}/{world} pid {os.getpid()} on {get_node_ip_address()}"
                + (f", {gpus} GPU(s)" if gpus else ""))
        try:
            spec.fn(params, job.artifacts(), ctx)
        except BaseException as exc:
            # Every rank logs its own error: the one that failed first is usually the cause, and the
            # others only see "connection closed by peer" from the collective it left.
            append_failure(job, exc, who=f"rank {rank}")
            raise
        finally:
            ctx.close()

    return train_loop


def build_trainer(job: NodeJob, storage_path: Path, name: str, callbacks: list | None = None,
                  config: dict[str, Any] | None = None):
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
    os.environ.update(job.env)
    started = time.time()
    entry = Path(job.entry_dir)
    storage = entry / "work" / "ray"
    storage.mkdir(parents=True, exist_ok=True)
    resumed = (storage / RAY_TRAIN_RUN_NAME).exists()
    ctx = job.context()
    ctx.log(f"start {job.kind} as a Ray Train job: {job.resources.get('workers', 1)} worker(s)"
            + (" (resuming from the previous attempt's state)" if resumed else ""))
    trainer = build_trainer(job, storage, RAY_TRAIN_RUN_NAME)
    try:
        result = trainer.fit()
    except BaseException as exc:
        append_failure(job, exc)
        raise
    if result.error is not None:  # pragma: no cover - fit() raises in V2, kept for safety
        raise result.error
    ctx.log(f"done in {time.time() - started:.1f}s")
    return finish(job, started, {"resumed": resumed})
