"""Small real components used by the orchestrator's own tests (no ML): they read and write
artifacts through the same contract as the built-ins, so the graph, cache, store and Ray paths
are exercised end to end in seconds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api import Input, LocalFile, component, read_jsonl, write_jsonl


class SourceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: LocalFile = Field(description="A text file, one passage per line.")
    limit: int = Field(100, ge=1, description="Keep at most this many lines.")


@component("toy_source", params=SourceParams, outputs={"corpus": "corpus"})
def toy_source(params: SourceParams, inputs, ctx) -> None:
    """Reads a text file into a corpus."""
    lines = [ln.strip() for ln in ctx.resolve_path(params.path).read_text().splitlines() if ln.strip()]
    n = write_jsonl(ctx.output_dir("corpus") / "corpus.jsonl",
                    ({"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(lines[: params.limit])))
    ctx.set_summary({"passages": n})


class MapParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    suffix: str = Field("", description="Appended to every passage.")
    fail: bool = Field(False, description="Raise instead of producing output.")
    sleep_s: float = Field(0.0, ge=0, description="Sleep before finishing.")
    marker_dir: str = Field("", description="If set, touch a file there for each execution (tests count runs).")


@component("toy_map", params=MapParams, inputs={"corpus": Input("corpus")}, outputs={"corpus": "corpus"})
def toy_map(params: MapParams, inputs, ctx) -> None:
    """Upper-cases every passage and appends a suffix."""
    if params.marker_dir:
        Path(params.marker_dir).mkdir(parents=True, exist_ok=True)
        (Path(params.marker_dir) / f"{ctx.node}-{time.time_ns()}").touch()
    time.sleep(params.sleep_s)
    if params.fail:
        raise RuntimeError(f"toy_map {ctx.node} was asked to fail")
    rows = read_jsonl(inputs["corpus"].main_file)
    for r in rows:
        r["text"] = r["text"].upper() + params.suffix
    write_jsonl(ctx.output_dir("corpus") / "corpus.jsonl", rows)
    ctx.set_summary({"passages": len(rows)})


@component("toy_join", params=MapParams, inputs={"parts": Input("corpus", many=True)}, outputs={"corpus": "corpus"})
def toy_join(params: MapParams, inputs, ctx) -> None:
    """Concatenates several corpora."""
    if params.marker_dir:
        Path(params.marker_dir).mkdir(parents=True, exist_ok=True)
        (Path(params.marker_dir) / f"{ctx.node}-{time.time_ns()}").touch()
    rows = [r for art in inputs["parts"] for r in read_jsonl(art.main_file)]
    write_jsonl(ctx.output_dir("corpus") / "corpus.jsonl", rows)
    ctx.set_summary({"passages": len(rows)})


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(6, ge=1, description="Optimisation steps.")
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    step_sleep_s: float = Field(0.0, ge=0, description="Sleep per step (so tests can kill mid-run).")
    checkpoint_every: int = Field(2, ge=1, description="Checkpoint every N steps.")
    marker_dir: str = Field("", description="If set, record each (re)start there.")
    fail_rank: int = Field(-1, description="If >= 0, this rank raises after its first step.")


@component("toy_train", params=TrainParams, inputs={"corpus": Input("corpus")}, outputs={"model": "text_label"},
           runs_as="train")
def toy_train(params: TrainParams, inputs, ctx) -> None:
    """Fits a scalar by DDP gradient descent; checkpoints and resumes; all ranks report."""
    import torch
    import torch.distributed as dist

    start = 0
    w = torch.zeros(1)
    ckpt = ctx.latest_checkpoint()
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        start, w = state["step"], torch.tensor([state["w"]])
    if params.marker_dir:
        Path(params.marker_dir).mkdir(parents=True, exist_ok=True)
    if params.marker_dir and ctx.world_rank == 0:
        (Path(params.marker_dir) / f"start-{start}-{time.time_ns()}-{os.getpid()}").touch()
    if params.marker_dir:
        import ray  # test-only: record which Ray node each rank ran on

        (Path(params.marker_dir) / f"node-rank{ctx.world_rank}-{ray.get_runtime_context().get_node_id()}").touch()
    n_docs = len(read_jsonl(inputs["corpus"].main_file))
    target = float(n_docs)
    for step in range(start, params.steps):
        grad = 2 * (w - target)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(grad)
            grad /= ctx.world_size
        w = w - params.lr * grad
        loss = float((w - target) ** 2)
        time.sleep(params.step_sleep_s)
        if ctx.world_rank == params.fail_rank:
            raise ValueError(f"toy_train rank {ctx.world_rank} was asked to fail")
        ctx.log_metrics({"train/loss": loss}, step=step + 1)
        ctx.progress(step + 1, params.steps, loss=loss)
        if (step + 1) % params.checkpoint_every == 0 or step + 1 == params.steps:
            d = ctx.work_dir / f"ckpt-rank{ctx.world_rank}-{step + 1}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "state.json").write_text(json.dumps({"step": step + 1, "w": float(w)}))
            ctx.report({"loss": loss, "step": step + 1}, checkpoint_dir=d)
    if ctx.world_rank == 0:
        out = ctx.output_dir("model")
        write_jsonl(out / "text_label.jsonl", [{"text": "w", "label": float(w)}])
        ctx.set_summary({"w": float(w), "target": target, "world_size": ctx.world_size, "resumed_from": start})
