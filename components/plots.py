"""PNG plots of a run: t-SNE of the embedding space before vs after, loss curves, metric bars.

matplotlib (Agg backend) and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def read_scalars(entry: Path) -> dict[str, list[tuple[float, float]]]:
    """Scalars of a node's cache entry: from its TensorBoard event files, else from metrics.jsonl."""
    series: dict[str, list[tuple[float, float]]] = {}
    tb = entry / "tensorboard"
    if tb.is_dir() and any(tb.rglob("events.out.tfevents.*")):
        try:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            for events in sorted({p.parent for p in tb.rglob("events.out.tfevents.*")}):
                acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
                acc.Reload()
                for tag in acc.Tags().get("scalars", []):
                    series.setdefault(tag, []).extend((float(e.step), float(e.value)) for e in acc.Scalars(tag))
        except Exception:  # unreadable events: fall back to metrics.jsonl
            series = {}
    if not series and (entry / "metrics.jsonl").exists():
        for line in (entry / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            step = row.get("step")
            if step is None:
                continue
            for k, v in row.items():
                if k not in ("time", "step") and isinstance(v, (int, float)):
                    series.setdefault(k, []).append((float(step), float(v)))
    return {k: sorted(set(v)) for k, v in series.items()}


def loss_curves(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """One panel per training node: training loss (and the dev metric on a second axis)."""
    plt = _plt()
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        loss = c["series"]["train/loss"]
        ax.plot([s for s, _ in loss], [v for _, v in loss], color="#1f77b4", lw=1.5, label="train loss")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        dev = next((k for k in ("dev/ndcg@10", "dev/recall@10", "dev/eval_loss", "dev/loss") if k in c["series"]), None)
        if dev:
            ax2 = ax.twinx()
            pts = c["series"][dev]
            ax2.plot([s for s, _ in pts], [v for _, v in pts], "o--", color="#d62728", lw=1, ms=3, label=dev)
            ax2.set_ylabel(dev, color="#d62728")
            ax2.spines["right"].set_visible(True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_bars(rows: list[dict[str, Any]], ks: list[int], path: Path) -> Path:
    """Grouped bars: Recall@k for each system, plus MRR@10 / nDCG@10."""
    import numpy as np

    plt = _plt()
    metrics = [f"recall@{k}" for k in ks] + [m for m in ("mrr@10", "ndcg@10") if m in rows[0]]
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics) + 0.4 * len(rows)), 3.6))
    for i, r in enumerate(rows):
        vals = [r.get(m, 0.0) for m in metrics]
        bars = ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=r["system"])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=6,
                    rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels(metrics)
    ax.set_ylim(0, 1.1)
    ax.set_title("retrieval on held-out queries", pad=28)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(4, len(rows)), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tsne_before_after(base, tuned, base_name: str, tuned_name: str, corpus: dict[str, str], queries: dict[str, str],
                      qrels: dict[str, dict[str, int]], path: Path, *, max_passages: int = 40, seed: int = 0):
    """Side-by-side t-SNE of passages (dots) and their queries (crosses), one colour per passage.

    After contrastive fine-tuning, queries should sit on top of their passage. Uses the embeddings the
    retrievers already computed for the passages; queries are embedded here.
    """
    import numpy as np
    from sklearn.manifold import TSNE

    pids = []
    for q, rel in qrels.items():
        for d in rel:
            if d in corpus and d not in pids and q in queries:
                pids.append(d)
    pids = pids[:max_passages]
    if len(pids) < 3:
        return None
    qs = [(q, next(d for d in qrels[q] if d in pids)) for q in queries if any(d in pids for d in qrels.get(q, {}))]
    pos = {d: i for i, d in enumerate(base.doc_ids)}
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    cmap = plt.get_cmap("tab20")
    colour = {d: cmap(i % 20) for i, d in enumerate(pids)}
    for ax, r, name in ((axes[0], base, base_name), (axes[1], tuned, tuned_name)):
        p_emb = r.doc_embeddings[[pos[d] for d in pids]]
        q_emb = r.embed_queries([queries[q] for q, _ in qs])
        pts = np.vstack([p_emb, q_emb])
        xy = TSNE(n_components=2, perplexity=min(30, max(5, len(pts) // 4)), init="pca", random_state=seed,
                  metric="cosine").fit_transform(pts)
        pxy, qxy = xy[: len(pids)], xy[len(pids):]
        ax.scatter(pxy[:, 0], pxy[:, 1], c=[colour[d] for d in pids], s=40, marker="o", edgecolors="k", lw=0.4)
        ax.scatter(qxy[:, 0], qxy[:, 1], c=[colour[d] for _, d in qs], s=22, marker="x", lw=1)
        # A thin line from each query to its passage: shorter after fine-tuning.
        for (q, d), (x, y) in zip(qs, qxy):
            px, py = pxy[pids.index(d)]
            ax.plot([x, px], [y, py], color=colour[d], lw=0.4, alpha=0.6)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE: {len(pids)} passages (o) and their {len(qs)} queries (x), coloured by passage", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
