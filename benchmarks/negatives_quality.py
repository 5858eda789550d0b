"""Quality of mined negatives, measured by what they are for: the same embedder trained on each.

    python benchmarks/negatives_quality.py                 # 2 seeds, about 25 minutes on 2 CPU cores
    python benchmarks/negatives_quality.py --seeds 13      # one seed

On the CMRC2018 sample (data_prep split by passage, as in recipes/rag_full.yaml), one hard negative per
training query is mined four ways with matched settings (candidates ranked 3..30 after removing the
positives, relative false-negative filter at 95% of the positive's score, top sampling):

- orch dense: ``hard_negative_mining`` (retriever dense, MiniLM, its default extend_vocab);
- sentence-transformers dense: ``util.mine_hard_negatives`` (MiniLM as it ships, range_min=2,
  range_max=30, relative_margin=0.05, FAISS), its n-tuples written in the same layout;
- orch bm25: ``hard_negative_mining`` (retriever bm25, jieba);
- in-batch only: no mined negative (the reference every mined set has to beat).

Each set trains MiniLM with ``embed_finetune`` in this process (MNRL, batch 16, 1 epoch, lr 5e-5,
seq 128; queries without a negative are left out of the mined sets by both miners, as they report),
and the model is evaluated on the held-out test split: Recall@10 and MRR@10 by exact search.
The table goes to stdout and benchmarks/results/negatives_quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARMS = ("in-batch only", "orch bm25", "orch dense", "sentence-transformers dense")


def prepare(work: Path) -> dict:
    """data_prep on the CMRC2018 sample: {"train_pairs", "corpus", "dev", "test"} artifacts."""
    from components.data_prep import DataPrepParams, data_prep
    from orchestrator.api import Artifact
    from orchestrator.context import NodeContext

    entry = work / "prep"
    if not (entry / "outputs" / "test").exists():
        ctx = NodeContext(node="prep", entry_dir=entry, recipe_dir=REPO / "recipes", seed=13)
        params = DataPrepParams(source="data/cmrc2018_sample.json", format="squad",
                                split={"by": "passage", "dev": 0.1, "test": 0.3})
        data_prep(params, {}, ctx)
    out = entry / "outputs"
    return {"train_pairs": Artifact("pairs", out / "train_pairs", "prep:train_pairs"),
            "corpus": Artifact("corpus", out / "corpus", "prep:corpus"),
            "dev": Artifact("ir_eval_set", out / "dev", "prep:dev"),
            "test": Artifact("ir_eval_set", out / "test", "prep:test")}


def mine_orch(work: Path, data: dict, retriever: str) -> tuple[object, dict]:
    from components.mining import MiningParams, hard_negative_mining
    from orchestrator.api import Artifact
    from orchestrator.context import NodeContext

    entry = work / f"mine_{retriever}"
    if not (entry / "outputs" / "ntuples" / "ntuples.jsonl").exists():
        ctx = NodeContext(node=f"mine_{retriever}", entry_dir=entry, recipe_dir=REPO / "recipes", seed=13)
        params = MiningParams(retriever=retriever, model="minilm", negatives_per_query=1, rank_window=(3, 30),
                              max_score_ratio=0.95)
        hard_negative_mining(params, {"pairs": data["train_pairs"], "corpus": data["corpus"]}, ctx)
    stats = json.loads((entry / "outputs" / "stats" / "stats.json").read_text(encoding="utf-8"))
    return Artifact("ntuples", entry / "outputs" / "ntuples", f"mine_{retriever}:ntuples"), {
        "queries_with_negative": stats["queries_with_negatives"], "time_s": stats["time_s"]["total"]}


def mine_st(work: Path, data: dict) -> tuple[object, dict]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from components.retrieval import load_model, passage_text
    from orchestrator.api import Artifact, read_jsonl

    folder = work / "mine_st"
    target = folder / "ntuples.jsonl"
    t0 = time.time()
    if not target.exists():
        corpus = read_jsonl(data["corpus"].main_file)
        by_id = {d["_id"]: passage_text(d) for d in corpus}
        pairs = read_jsonl(data["train_pairs"].main_file)
        ds = Dataset.from_dict({"query": [p["query"] for p in pairs],
                                "positive": [by_id.get(p.get("positive_id"), p["positive"]) for p in pairs]})
        out = mine_hard_negatives(ds, load_model("minilm"), corpus=list(by_id.values()), range_min=2, range_max=30,
                                  relative_margin=0.05, num_negatives=1, sampling_strategy="top",
                                  output_format="n-tuple", batch_size=64, use_faiss=True, verbose=False)
        folder.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as fh:
            for row in out:
                negs = [row[c] for c in out.column_names if c.startswith("negative")]
                fh.write(json.dumps({"query": row["query"], "pos": [row["positive"]], "neg": negs},
                                    ensure_ascii=False) + "\n")
    queries = {r["query"] for r in read_jsonl(target)}
    return Artifact("ntuples", folder, "st:ntuples"), {"queries_with_negative": len(queries),
                                                       "time_s": round(time.time() - t0, 1)}


def train(work: Path, data: dict, name: str, train_art, seed: int) -> Path:
    from components.embed_finetune import EmbedFinetuneParams, embed_finetune
    from orchestrator.context import NodeContext

    entry = work / "train" / f"{name.replace(' ', '_')}_{seed}"
    model = entry / "outputs" / "model"
    if (model / "modules.json").exists():
        return model
    ctx = NodeContext(node=name, entry_dir=entry, recipe_dir=REPO / "recipes", seed=seed)
    params = EmbedFinetuneParams(batch_size=16, epochs=1, lr=5e-5, max_seq_length=128,
                                 negatives_per_example=0 if train_art.kind == "pairs" else 1)
    embed_finetune(params, {"train": train_art, "dev": data["dev"], "corpus": data["corpus"]}, ctx)
    return model


def test_metrics(model_path: Path, test_dir: Path) -> dict[str, float]:
    from components.metrics import ir_metrics
    from components.retrieval import DenseRetriever, load_ir_set, load_model

    corpus, queries, qrels = load_ir_set(test_dir)
    retriever = DenseRetriever(load_model(str(model_path)))
    ids = list(corpus)
    retriever.index(ids, [corpus[i] for i in ids])
    qids = list(queries)
    hits = retriever.search([queries[q] for q in qids], 10)
    m = ir_metrics(dict(zip(qids, hits)), qrels, ks=[10])
    return {"recall@10": m["recall@10"], "mrr@10": m["mrr@10"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/orch_bench_negatives")
    ap.add_argument("--seeds", default="13,14", help="comma-separated training seeds")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "negatives_quality.md"))
    args = ap.parse_args()
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    data = prepare(work)
    mined = {"in-batch only": (data["train_pairs"], {"queries_with_negative": None, "time_s": None}),
             "orch bm25": mine_orch(work, data, "bm25"),
             "orch dense": mine_orch(work, data, "dense"),
             "sentence-transformers dense": mine_st(work, data)}
    rows = []
    for name in ARMS:
        art, info = mined[name]
        per_seed = [test_metrics(train(work, data, name, art, seed), data["test"].path) for seed in seeds]
        row = {"negatives": name, **info,
               **{k: statistics.mean(m[k] for m in per_seed) for k in ("recall@10", "mrr@10")},
               "per_seed": per_seed}
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = ["# Quality of mined negatives: the embedder trained on each", "",
             f"`python benchmarks/negatives_quality.py --seeds {args.seeds}` on {platform.machine()}, "
             f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; {time.time() - started:.0f} s in all. "
             f"CMRC2018 sample, {len(seeds)} training seed(s) per set; test split (held-out passages).", "",
             "| negatives (1 per query) | queries with a negative | mining time (s) | test Recall@10 | "
             "test MRR@10 | per seed R@10 |", "|---|---|---|---|---|---|"]
    for r in rows:
        q = "all (in-batch)" if r["queries_with_negative"] is None else str(r["queries_with_negative"])
        t = "-" if r["time_s"] is None else f"{r['time_s']:.1f}"
        lines.append(f"| {r['negatives']} | {q} | {t} | {r['recall@10']:.3f} | {r['mrr@10']:.3f} | "
                     + ", ".join(f"{m['recall@10']:.3f}" for m in r["per_seed"]) + " |")
    lines += ["", "## Method", "", __doc__.strip()]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
