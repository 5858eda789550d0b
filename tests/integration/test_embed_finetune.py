"""embed_finetune as a 2-worker Ray Train job on a real sample (CMRC2018): it learns, and survives a killed worker.

One run does both: after the first checkpoint the test kills rank 1's process; Ray Train restarts the
worker group from that checkpoint, the run finishes, and the fine-tuned model beats the base model's
Recall@10 on held-out (test split) queries it never saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults import run_with_a_killed_worker

pytestmark = pytest.mark.usefixtures("ray_local")

REPO = Path(__file__).resolve().parents[2]

RECIPE = f"""
name: emb
seed: 13
components:
  prep:
    kind: data_prep
    params:
      source: {REPO}/recipes/data/cmrc2018_sample.json
      format: squad
      split: {{by: passage, dev: 0.1, test: 0.3}}
  embedder:
    kind: embed_finetune
    inputs: {{train: prep.train_pairs, dev: prep.dev}}
    params: {{max_steps: 24, batch_size: 16, max_seq_length: 128, eval_steps: 6, eval_max_queries: 30}}
    resources: {{workers: 2, cpus_per_worker: 1, max_failures: 2}}
"""


def recall_mrr_at_10(model_path: str, test_dir: Path) -> tuple[float, float]:
    from sentence_transformers import SentenceTransformer

    from components.retrieval import load_ir_set

    corpus, queries, qrels = load_ir_set(test_dir)
    ids = list(corpus)
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = 128
    docs = model.encode([corpus[i] for i in ids], normalize_embeddings=True, batch_size=64)
    qs = model.encode(list(queries.values()), normalize_embeddings=True, batch_size=64)
    top = np.argsort(-(qs @ docs.T), axis=1)[:, :10]
    hits = [[ids[j] in qrels[q] for j in top[i]] for i, q in enumerate(queries)]
    recall = float(np.mean([any(h) for h in hits]))
    mrr = float(np.mean([next((1 / (r + 1) for r, h in enumerate(row) if h), 0.0) for row in hits]))
    return recall, mrr


def test_two_workers_learn_and_survive_a_killed_worker(orch, write_recipe, tmp_path):
    path = write_recipe(RECIPE)
    cache = tmp_path / "runs" / "cache" / "embed_finetune"
    out, entry, log, killed, started = run_with_a_killed_worker(orch, path, cache, timeout=400, poll=0.5)
    assert "resuming from checkpoint" in log, log[-3000:]
    summary = json.loads((entry / "metrics.json").read_text())
    assert summary["steps"] == 24 and summary["workers"] == 2 and summary["global_batch"] == 16

    model = entry / "outputs" / "model"
    evals = json.loads((model / "orch_eval.json").read_text())
    assert evals["base"]["dev/recall@10"] > 0 and evals["final"]["dev/ndcg@10"] > evals["base"]["dev/ndcg@10"]

    test_dir = next((tmp_path / "runs" / "cache" / "data_prep").iterdir()) / "outputs" / "test"
    from components.models import resolve_model

    base_r, base_mrr = recall_mrr_at_10(resolve_model("minilm"), test_dir)
    tuned_r, tuned_mrr = recall_mrr_at_10(str(model), test_dir)
    print(f"\nheld-out test: base R@10 {base_r:.3f} MRR@10 {base_mrr:.3f} -> tuned R@10 {tuned_r:.3f} "
          f"MRR@10 {tuned_mrr:.3f}; run {time.time() - started:.0f}s with a worker killed")
    assert tuned_r > base_r + 0.05 and tuned_mrr > base_mrr

    # Nothing changed: the next run reuses the trained model.
    code, out = orch("run", path)
    assert code == 0 and "2 cached" in out, out
