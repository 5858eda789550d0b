"""Per-query latency of each stage of a finished run's RAG pipeline (components.serving.RagPipeline).

    python benchmarks/latency.py                       # the latest rag_full run under runs/
    python benchmarks/latency.py RUN_DIR --queries 100 --candidates 10 20 --generate 5

Stages, timed one query at a time (what a user of `orch query` / the library waits for): query
embedding, FAISS search, cross-encoder reranking of the top N candidates (one row per N), and, with
--generate, answering from the top passage with the run's LoRA-tuned generator. The corpus is indexed
once before timing (cached next to the run). Prints p50 / p95 / mean in milliseconds as a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def latest_run(root: Path, name: str = "rag_full") -> Path:
    runs = sorted(p for p in (root / name).glob("*/status.json"))
    if not runs:
        raise SystemExit(f"no {name} run under {root}: run `orch run recipes/{name}.yaml` first")
    return runs[-1].parent


def test_queries(run_dir: Path, n: int) -> list[str]:
    from components.retrieval import load_ir_set
    from orchestrator.store import run_artifacts

    sets = [a for a in run_artifacts(run_dir) if a.kind == "ir_eval_set"]
    if not sets:
        raise SystemExit(f"run {run_dir} has no ir_eval_set artifact to take queries from")
    chosen = next((a for a in sets if a.path.name == "test"), sets[-1])
    _, queries, _ = load_ir_set(chosen.path, n)
    return list(queries.values())


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="run folder (default: the latest rag_full run under runs/)")
    ap.add_argument("--storage", default=str(REPO / "runs"))
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--candidates", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--generate", type=int, default=0, help="also time answers for this many queries")
    args = ap.parse_args()

    import torch

    from components.serving import RagPipeline

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    run_dir = Path(args.run) if args.run else latest_run(Path(args.storage))
    t0 = time.perf_counter()
    rag = RagPipeline.from_run(run_dir)
    load_s = time.perf_counter() - t0
    queries = test_queries(run_dir, args.queries)
    rag.search(queries[0], k=5, candidates=max(args.candidates))  # warm-up

    rows: list[tuple[str, list[float]]] = []
    enc, search = [], []
    rerank: dict[int, list[float]] = {n: [] for n in args.candidates}
    for q in queries:
        for n in args.candidates:
            rag.search(q, k=5, candidates=n)
            rerank[n].append(rag.timings.rerank_ms)
        enc.append(rag.timings.encode_ms)
        search.append(rag.timings.search_ms)
    rows += [("query embedding", enc), ("dense search (FAISS, top-N)", search)]
    if rag.reranker is not None:
        rows += [(f"rerank top {n}", rerank[n]) for n in args.candidates]
        for n in args.candidates:
            total = [e + s + r for e, s, r in zip(enc, search, rerank[n])]
            rows.append((f"two-stage total (N={n})", total))
    if args.generate:
        gen = []
        for q in queries[: args.generate]:
            rag.answer(q)
            gen.append(rag.timings.generate_ms)
        rows.append(("answer (LoRA generator, top-1 passage)", gen))

    print(f"run {run_dir} | {len(queries)} test queries | {len(rag.rows)} passages | "
          f"{torch.get_num_threads()} threads | pipeline load {load_s:.1f}s")
    print()
    print("| stage | p50 ms | p95 ms | mean ms | n |")
    print("|---|---|---|---|---|")
    for name, vals in rows:
        print(f"| {name} | {statistics.median(vals):.1f} | {pct(vals, 0.95):.1f} | {statistics.fmean(vals):.1f} "
              f"| {len(vals)} |")


if __name__ == "__main__":
    main()
