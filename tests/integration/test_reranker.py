"""reranker_finetune on a real sample (CMRC2018), hard vs random negatives, as a second stage.

Two rerankers train from MiniLM with a new head: one on BM25-mined hard negatives, one on random
negatives only. Both learn (dev MRR@10 rises from the untrained start), and on held-out test queries
each one, reranking an off-the-shelf embedder's top 10, beats that embedder's own ranking (MRR@10),
measured by the evaluate node the way a user reads it in the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ray_local")

REPO = Path(__file__).resolve().parents[2]

RERANKER = "{max_steps: 40, eval_steps: 40, batch_size: 8, loss: mnrl, lr: 1.0e-4, max_seq_length: 96, " \
           "passage_window: 64, first_stage: dense, rerank_top_k: 10, eval_max_queries: 30, fusion: false%s}"

RECIPE = f"""
name: rr
seed: 13
components:
  prep:
    kind: data_prep
    params:
      source: {REPO}/recipes/data/cmrc2018_sample.json
      format: squad
      split: {{by: passage, dev: 0.1, test: 0.3}}
  mine:
    kind: hard_negative_mining
    inputs: {{pairs: prep.train_pairs, corpus: prep.corpus}}
    params: {{retriever: bm25, negatives_per_query: 3, rank_window: [3, 30], max_score_ratio: 0.95}}
  rr_hard:
    kind: reranker_finetune
    inputs: {{train: mine.ntuples, corpus: prep.corpus, dev: prep.dev}}
    params: {RERANKER % ""}
    resources: {{workers: 1, cpus_per_worker: 2}}
  rr_random:
    kind: reranker_finetune
    inputs: {{train: prep.train_pairs, corpus: prep.corpus, dev: prep.dev}}
    params: {RERANKER % ", random_negatives: 3"}
    resources: {{workers: 1, cpus_per_worker: 2}}
  evaluate:
    kind: evaluate
    inputs: {{test: prep.test, rerankers: [rr_hard.model, rr_random.model]}}
    params: {{ks: [1, 10], base_embedders: [minilm], bm25: false, hybrid: false, tsne: false, rerank_top_n: 10,
              latency_queries: 3}}
"""


def test_hard_and_random_negative_rerankers_improve_on_embedding_only(orch, write_recipe, tmp_path):
    from sentence_transformers import CrossEncoder

    storage = tmp_path / "runs"
    code, out = orch("run", write_recipe(RECIPE), "--storage", storage)
    assert code == 0, out
    report_dir = next((storage / "cache" / "evaluate").iterdir()) / "outputs" / "report"
    rows = {r["system"]: r for r in json.loads((report_dir / "report.json").read_text())["retrieval"]}
    dense = rows["minilm (base)"]
    summary = [f"embedding only MRR@10 {dense['mrr@10']:.3f}"]
    for node in ("rr_hard", "rr_random"):
        entry = next(p for p in (storage / "cache" / "reranker_finetune").iterdir()
                     if json.loads((p / "manifest.json").read_text())["node"] == node)
        evals = json.loads((entry / "outputs" / "model" / "orch_eval.json").read_text())
        assert evals["final"]["dev/mrr@10"] > evals["base"]["dev/mrr@10"], (node, evals)  # it learned
        two_stage = rows[f"minilm (base) + {node}"]
        summary.append(f"+{node} {two_stage['mrr@10']:.3f} (dev {evals['base']['dev/mrr@10']:.3f} -> "
                       f"{evals['final']['dev/mrr@10']:.3f})")
        assert two_stage["recall@10"] == dense["recall@10"]  # the same candidates, reordered
        assert two_stage["mrr@10"] > dense["mrr@10"], (node, two_stage, dense)
        CrossEncoder(str(entry / "outputs" / "model"), device="cpu")  # the output loads as a plain CrossEncoder
    print("\n" + " | ".join(summary))
