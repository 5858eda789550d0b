"""The small public contract between the orchestrator and components.

Components import only this module from ``orchestrator``: the ``@component`` decorator, the
``Input`` spec, ``Artifact`` (a directory of plain files) and ``RunContext`` (how a running
component writes outputs, logs metrics, reports to its trainer and checkpoints). The
orchestrator never imports a specific component; it finds them through the registry.

This module must stay import-light: no torch, ray or transformers at import time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Protocol

from pydantic import BaseModel

# ---------------------------------------------------------------------------------------------
# Artifact kinds: what flows along an edge. Each is a directory of plain, interoperable files.
# ---------------------------------------------------------------------------------------------

ARTIFACT_KINDS: dict[str, str] = {
    "corpus": "corpus.jsonl: one passage per line {_id, title, text} (BEIR layout)",
    "pairs": "pairs.jsonl: {query, positive} (+ query_id, positive_id)",
    "triplets": "triplets.jsonl: {query, positive, negative}",
    "ntuples": "ntuples.jsonl: FlagEmbedding layout {query, pos: [..], neg: [..]}",
    "labeled_pairs": "labeled_pairs.jsonl: {query, doc, label} (label 0/1 or graded 0-3)",
    "ir_eval_set": "BEIR folder: corpus.jsonl, queries.jsonl {_id, text}, qrels.tsv (query-id, corpus-id, score)",
    "sft": "sft.jsonl: alpaca {instruction, input, output[, system, history]} or sharegpt {conversations}",
    "text_label": "text_label.jsonl: {text, label}",
    "mining_stats": "stats.json: negatives per query, filtered false negatives, rank histogram",
    "embedding_model": "a folder that SentenceTransformer(path) loads",
    "reranker_model": "a folder that CrossEncoder(path) loads",
    "lora_adapter": "a PEFT adapter folder (PeftModel.from_pretrained) + orch_base_model.json naming its base",
    "llm": "a Hugging Face causal LM folder (AutoModelForCausalLM.from_pretrained)",
    "eval_report": "report.json, report.md, report.html and PNG plots",
}


@dataclass(frozen=True)
class Input:
    """Declares one input of a component: which artifact kinds it accepts.

    ``many=True`` takes a list of references (``embedders: [base.model, embed.model]``).
    """

    kinds: tuple[str, ...]
    optional: bool = False
    many: bool = False
    description: str = ""

    def __init__(self, *kinds: str, optional: bool = False, many: bool = False, description: str = ""):
        unknown = [k for k in kinds if k not in ARTIFACT_KINDS]
        if unknown or not kinds:
            raise ValueError(f"Input kinds must be among {sorted(ARTIFACT_KINDS)}, got {kinds}")
        object.__setattr__(self, "kinds", tuple(kinds))
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "many", many)
        object.__setattr__(self, "description", description)


RunsAs = Literal["task", "train"]


@dataclass(frozen=True)
class ComponentSpec:
    """What the ``@component`` decorator records about one component kind."""

    kind: str
    fn: Callable[..., Any]
    params: type[BaseModel]
    inputs: dict[str, Input]
    outputs: dict[str, str]
    runs_as: RunsAs
    version: str
    description: str
    default_resources: dict[str, Any] = field(default_factory=dict)
    # Optional hook: (params) -> dict used by `orch plan` (e.g. a memory estimate). Must be cheap and
    # must not import torch.
    estimate: Callable[[BaseModel], dict[str, Any]] | None = None
    # Optional hook: (params) -> list of output names actually produced, when some are conditional.
    module: str = ""


_REGISTRY: dict[str, ComponentSpec] = {}


def component(
    kind: str,
    *,
    params: type[BaseModel],
    inputs: dict[str, Input] | None = None,
    outputs: dict[str, str] | None = None,
    runs_as: RunsAs = "task",
    version: str = "1",
    default_resources: dict[str, Any] | None = None,
    estimate: Callable[[BaseModel], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(params, inputs, ctx)`` as the component ``kind``.

    - ``runs_as="task"``: the orchestrator runs ``fn`` once, as a Ray task with the node's resources.
    - ``runs_as="train"``: ``fn`` is the per-worker training loop of a Ray Train job; every worker
      runs it; ``ctx.world_rank`` / ``ctx.world_size`` tell them apart; rank 0 writes the outputs.

    ``version`` enters the cache key: bump it when a change alters what the component produces.
    """
    outputs = dict(outputs or {})
    for name, out_kind in outputs.items():
        if out_kind not in ARTIFACT_KINDS:
            raise ValueError(f"{kind}: output {name!r} has unknown artifact kind {out_kind!r}")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if kind in _REGISTRY and _REGISTRY[kind].fn is not fn:
            raise ValueError(f"component kind {kind!r} is registered twice ({_REGISTRY[kind].module} and {fn.__module__})")
        _REGISTRY[kind] = ComponentSpec(
            kind=kind,
            fn=fn,
            params=params,
            inputs=dict(inputs or {}),
            outputs=outputs,
            runs_as=runs_as,
            version=str(version),
            description=(fn.__doc__ or "").strip(),
            default_resources=dict(default_resources or {}),
            estimate=estimate,
            module=fn.__module__,
        )
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# Params field markers: the orchestrator digests the files these name into the cache key and
# checks they exist at validation time.
# ---------------------------------------------------------------------------------------------


class _LocalFileMarker:
    """Marks a params field as a path to an external file or folder that must exist."""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "LocalFile"


class _ModelRefMarker:
    """Marks a params field as a model reference: an alias, a local folder, or a hub id."""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "ModelRef"


LOCAL_FILE = _LocalFileMarker()
MODEL_REF = _ModelRefMarker()

# A path relative to the recipe's folder (absolute paths are kept). Validation checks that it exists.
LocalFile = Annotated[str, LOCAL_FILE]
# A model alias (see components.models), a local folder (digested into the cache key), or a hub id.
ModelRef = Annotated[str, MODEL_REF]


# ---------------------------------------------------------------------------------------------
# Artifacts and the run context
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One output of one node: a directory of files, identified by the producing node's cache key."""

    kind: str
    path: Path
    key: str  # "<cache key of the producing node>:<output name>"
    meta: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def main_file(self) -> Path:
        """The conventional data file for dataset kinds (e.g. pairs -> pairs.jsonl)."""
        name = {
            "corpus": "corpus.jsonl",
            "pairs": "pairs.jsonl",
            "triplets": "triplets.jsonl",
            "ntuples": "ntuples.jsonl",
            "labeled_pairs": "labeled_pairs.jsonl",
            "sft": "sft.jsonl",
            "text_label": "text_label.jsonl",
            "mining_stats": "stats.json",
        }.get(self.kind)
        if name is None:
            return self.path
        return self.path / name


class RunContext(Protocol):
    """What a running component sees. Implemented by the orchestrator; hides Ray entirely."""

    node: str  # the node's name in the recipe
    seed: int
    world_rank: int  # 0 for task components
    world_size: int  # 1 for task components
    work_dir: Path  # scratch space kept across retries of this node (same cache key)
    num_gpus: int  # GPUs visible to this process (0 on CPU)

    def output_dir(self, name: str) -> Path:
        """Directory to write output ``name`` into (created). Only rank 0 should write."""

    def log(self, message: str) -> None:
        """A line in the node's log.txt (and the terminal's live view)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Scalars to TensorBoard and metrics.jsonl (rank 0 only writes; others are ignored)."""

    def progress(self, step: int, total: int | None = None, **values: float) -> None:
        """Live progress shown in the terminal (e.g. step/total and loss)."""

    def set_summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics of the node, written to metrics.json and shown by `orch show`."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        """Report metrics (and optionally a checkpoint folder) to the training framework.

        For training components this is where a scheduler (Ray Tune) sees the metric and where a
        restarted worker finds its checkpoint. All ranks must call it together.
        """

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint folder to resume from after a restart, or None for a fresh start."""

    def tensorboard_dir(self) -> Path:
        """Where this process may write TensorBoard event files (rank 0)."""

    def resolve_path(self, path: str) -> Path:
        """A params path (relative to the recipe's folder) as an absolute path."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
