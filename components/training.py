"""What every training component shares: the bridge from a Hugging Face Trainer to the RunContext.

``OrchCallback`` turns Trainer events into orch's side: scalars to TensorBoard/metrics.jsonl
(loss, lr, grad norm, samples/s, tokens/s, peak memory), live progress, and on every checkpoint
save a ``ctx.report`` with the latest eval metrics and the checkpoint folder, so Ray Train keeps
the checkpoint (restart after a worker failure) and Ray Tune sees the metric. All ranks report
together (Ray Train requires it); only rank 0 hands over a checkpoint.

The component imports no Ray: ``ctx.report`` and ``ctx.latest_checkpoint`` hide it.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def peak_memory_gb() -> dict[str, float]:
    """Peak GPU memory allocated (if CUDA) and this process's peak RSS, in GiB."""
    out: dict[str, float] = {}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["memory/peak_rss_gb"] = rss_kb / (1024**2) if sys.platform != "darwin" else rss_kb / 1024**3
    try:
        import torch

        if torch.cuda.is_available():
            out["memory/peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    except ImportError:  # pragma: no cover
        pass
    return out


def resume_checkpoint(ctx) -> str | None:
    """The Hugging Face checkpoint folder to resume from (None for a fresh start)."""
    path = ctx.latest_checkpoint()
    if path is None:
        return None
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return str(path)
    inner = sorted(path.glob("checkpoint-*"))
    return str(inner[-1]) if inner else None


def make_callback(ctx, *, tokens_per_sample: float | None = None):
    """An ``OrchCallback`` bound to ``ctx`` (transformers is imported here, not at module import)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    class OrchCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_eval: dict[str, float] = {}
            self.t0 = time.time()
            self.last_time = self.t0
            self.last_step = 0
            self.samples_per_step = 1

        def on_train_begin(self, args, state, control, **kwargs):
            self.samples_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                                     * max(1, args.world_size))
            self.t0 = self.last_time = time.time()
            self.last_step = state.global_step
            ctx.progress(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or ctx.world_rank != 0:
                return
            now = time.time()
            scalars: dict[str, float] = {}
            for k, v in logs.items():
                if not isinstance(v, (int, float)):
                    continue
                if k.startswith("eval_"):
                    continue  # logged by on_evaluate with proper names
                name = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm",
                        "epoch": "train/epoch"}.get(k, f"train/{k}")
                scalars[name] = float(v)
            steps = state.global_step - self.last_step
            if steps > 0 and now > self.last_time:
                sps = steps * self.samples_per_step / (now - self.last_time)
                scalars["speed/samples_per_s"] = sps
                if tokens_per_sample:
                    scalars["speed/tokens_per_s"] = sps * tokens_per_sample
            self.last_time, self.last_step = now, state.global_step
            scalars.update(peak_memory_gb())
            ctx.log_metrics(scalars, step=state.global_step)
            progress = {"loss": scalars["train/loss"]} if "train/loss" in scalars else {}
            ctx.progress(state.global_step, state.max_steps, **progress)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not metrics:
                return
            clean = {}
            for k, v in metrics.items():
                if k == "epoch":
                    continue
                if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_samples_per_second", "_steps_per_second")):
                    clean["dev/" + k.removeprefix("eval_").removeprefix("dev_")] = float(v)
            self.last_eval.update(clean)
            ctx.log_metrics(clean, step=state.global_step)
            if ctx.world_rank == 0:
                head = [k for k in sorted(clean) if k.split("/")[-1].startswith(("recall@", "ndcg@", "mrr@", "loss",
                                                                                   "accuracy", "f1"))] or sorted(clean)
                ctx.log("eval @ step %d: %s" % (state.global_step, ", ".join(f"{k}={clean[k]:.4f}" for k in head[:10])))

        def on_save(self, args, state, control, **kwargs):
            ckpt = get_last_checkpoint(args.output_dir) if ctx.world_rank == 0 else None
            metrics = {"step": float(state.global_step), **self.last_eval}
            ctx.report(metrics, checkpoint_dir=Path(ckpt) if ckpt else None)

    return OrchCallback()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def common_training_args(ctx, output_dir: Path, *, seed: int, lr: float, epochs: float, max_steps: int | None,
                         per_device_batch: int, grad_accum: int, warmup_ratio: float, weight_decay: float,
                         eval_steps: int | None, save_steps: int | None, logging_steps: int,
                         bf16: bool = False, fp16: bool = False, gradient_checkpointing: bool = False,
                         lr_scheduler: str = "linear", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for (Sentence)TrainingArguments shared by all trainers, CPU/GPU aware."""
    args: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        learning_rate=lr,
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps else -1,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=max(per_device_batch, 16),
        gradient_accumulation_steps=grad_accum,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler,
        logging_steps=logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=bf16,
        fp16=fp16,
        gradient_checkpointing=gradient_checkpointing,
        ddp_find_unused_parameters=False,
        use_cpu=ctx.num_gpus == 0,
    )
    args.update(extra or {})
    return args
