"""Two-stage score fusion: the reranker's score interpolated with the first stage's, weight tuned on dev.

A cross-encoder trained briefly can know things the first stage does not (exact word overlap read in
context) and still be worse at ordering on its own; the first stage's score carries the rest. The
standard remedy in retrieve-then-rerank systems is to interpolate the two, per query, after min-max
normalisation: ``score = w * rerank + (1 - w) * first_stage``. ``reranker_finetune`` picks ``w`` on
its dev queries after training (w = 1 is the reranker alone, w = 0 ignores it; ties go to the smaller
w, so a reranker that adds nothing gets no say) and saves it next to the model as ``fusion.json``;
``evaluate`` and ``serving`` apply it, and ``evaluate`` also reports the reranker alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

FUSION_FILE = "fusion.json"
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def minmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi - lo < 1e-12:
        return [0.0 for _ in scores]
    return [(s - lo) / (hi - lo) for s in scores]


def fuse(first_stage: Sequence[float], rerank: Sequence[float], weight: float) -> list[float]:
    """Per-query fused scores of the same candidate list (both normalised to 0..1 first)."""
    if len(first_stage) != len(rerank):
        raise ValueError("first-stage and rerank scores must cover the same candidates")
    return [weight * r + (1 - weight) * f for f, r in zip(minmax(first_stage), minmax(rerank))]


def _mrr(order: Sequence[int], relevant: set[int], k: int) -> float:
    for rank, i in enumerate(order[:k], 1):
        if i in relevant:
            return 1.0 / rank
    return 0.0


def choose_weight(first_stage: Sequence[Sequence[float]], rerank: Sequence[Sequence[float]],
                  relevant: Sequence[set[int]], k: int = 10) -> tuple[float, dict[float, float]]:
    """The weight with the best mean MRR@k over queries (ties: the smaller weight), and MRR per weight.

    ``first_stage[q]`` / ``rerank[q]``: scores of query q's candidates; ``relevant[q]``: indices of its
    relevant candidates.
    """
    if not first_stage:
        raise ValueError("no dev queries to choose a fusion weight on")
    by_weight: dict[float, float] = {}
    for w in WEIGHTS:
        total = 0.0
        for f, r, rel in zip(first_stage, rerank, relevant):
            fused = fuse(f, r, w)
            order = sorted(range(len(fused)), key=lambda i: (-fused[i], i))
            total += _mrr(order, rel, k)
        by_weight[w] = total / len(first_stage)
    best = max(by_weight.values())
    return min(w for w, v in by_weight.items() if v >= best - 1e-12), by_weight


def save_fusion(folder: Path, weight: float, by_weight: dict[float, float], *, k: int, queries: int) -> None:
    (Path(folder) / FUSION_FILE).write_text(json.dumps(
        {"weight": weight, "normalisation": "minmax per query",
         "formula": "weight * rerank + (1 - weight) * first_stage", "chosen_on": f"{queries} dev queries, MRR@{k}",
         f"dev_mrr@{k}_by_weight": {str(w): round(v, 4) for w, v in by_weight.items()}}, indent=2))


def load_fusion_weight(folder: str | Path) -> float | None:
    """The dev-tuned weight saved with a reranker, or None (then the reranker's scores are used alone)."""
    path = Path(folder) / FUSION_FILE
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["weight"])
