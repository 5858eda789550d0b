"""Hard-negative mining benchmark: orch's ``hard_negative_mining`` vs sentence-transformers'
``util.mine_hard_negatives``, time and peak memory, on the CMRC2018 sample and a synthetic
100k-passage corpus.

    python benchmarks/mining.py                 # full run (tens of minutes on 2 CPU cores)
    python benchmarks/mining.py --passages 20000 --queries 1000   # quicker

Every (dataset, method) runs in its own subprocess, so the peak RSS (``ru_maxrss``) is that
method's alone; time is the wall time of the mining call (model loading included unless noted).

- CMRC2018 sample: ``data_prep`` on recipes/data/cmrc2018_sample.json (split by passage, as in
  recipes/rag_full.yaml); the train pairs against the full corpus. Dense methods use the real
  MiniLM model.
- synthetic: passages are random bags of real words (jieba words of the CMRC sample, with their
  frequencies; one passage in five from a pseudo-English vocabulary); each query is a few words of
  one passage, its positive. Encoding 100k passages with MiniLM takes hours on 2 cores, so the
  dense methods get precomputed random unit vectors (clustered; each query near its positive):
  orch through a lookup-table encoder in place of the model, sentence-transformers through its
  own embedding cache (``cache_folder``). Those rows measure indexing, search, filtering and
  writing, not the transformer. The MiniLM encoding throughput is measured separately on a sample.

Settings are matched: 3 negatives per query, candidates ranked 3..30 after removing positives
(orch ``rank_window=[3, 30]``; sentence-transformers ``range_min=2, range_max=30``), the relative
false-negative filter at 95% of the positive's score (``max_score_ratio=0.95`` /
``relative_margin=0.05``), top sampling, exact FAISS inner-product search. One difference remains:
sentence-transformers applies range_min after the score filters (it skips the best 2 candidates
that survive them), orch's rank window counts the retriever's ranks before the filters. When no
candidate is filtered (synthetic) the two give identical negatives; on the CMRC sample, where
MiniLM (an English model) ranks many Chinese positives low and the 95% filter drops many
candidates, they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIM = 384


def rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    VmHWM (reset by exec) rather than ru_maxrss, which a child started by fork + exec inherits
    from its parent on Linux."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024**2


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def prepare_cmrc(work: Path) -> Path:
    from components.data_prep import DataPrepParams, data_prep
    from orchestrator.context import NodeContext

    out = work / "cmrc"
    if (out / "pairs" / "pairs.jsonl").exists():
        return out
    ctx = NodeContext(node="prep", entry_dir=work / "cmrc_prep", recipe_dir=REPO / "recipes", seed=13)
    params = DataPrepParams(source="data/cmrc2018_sample.json", format="squad",
                            split={"by": "passage", "dev": 0.1, "test": 0.3})
    data_prep(params, {}, ctx)
    produced = work / "cmrc_prep" / "outputs"
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "pairs").mkdir(parents=True, exist_ok=True)
    (out / "corpus" / "corpus.jsonl").write_bytes((produced / "corpus" / "corpus.jsonl").read_bytes())
    (out / "pairs" / "pairs.jsonl").write_bytes((produced / "train_pairs" / "pairs.jsonl").read_bytes())
    return out


def prepare_synthetic(work: Path, cmrc: Path, passages: int, queries: int, seed: int = 0) -> Path:
    import numpy as np

    from components.retrieval import tokenize

    out = work / f"synthetic_{passages}_{queries}"
    if (out / "emb.npz").exists():
        return out
    rng = np.random.default_rng(seed)
    # Vocabulary: the jieba words of the CMRC corpus with their counts (a Zipf-like distribution).
    counts: dict[str, int] = {}
    for line in open(cmrc / "corpus" / "corpus.jsonl", encoding="utf-8"):
        row = json.loads(line)
        for tok in tokenize(row["text"], "jieba"):
            counts[tok] = counts.get(tok, 0) + 1
    zh_words = list(counts)
    zh_p = np.array([counts[w] for w in zh_words], dtype=np.float64)
    zh_p /= zh_p.sum()
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "ve", "dor", "pi", "qua", "len", "bo", "zi", "ter", "nu", "an"]
    en_words = sorted({"".join(rng.choice(syllables, size=rng.integers(2, 4))) for _ in range(6000)})
    ranks = np.arange(1, len(en_words) + 1, dtype=np.float64)
    en_p = (1 / ranks) / (1 / ranks).sum()

    docs_tokens: list[list[str]] = []
    lang = rng.random(passages) < 0.8
    lengths = rng.integers(40, 120, size=passages)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus" / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(passages):
            if lang[i]:
                toks = list(rng.choice(zh_words, size=lengths[i], p=zh_p))
                text = "".join(toks)
            else:
                toks = list(rng.choice(en_words, size=lengths[i], p=en_p))
                text = " ".join(toks)
            docs_tokens.append(toks)
            fh.write(json.dumps({"_id": f"s{i}", "title": "", "text": text}, ensure_ascii=False) + "\n")
    pos = rng.choice(passages, size=queries, replace=False)
    (out / "pairs").mkdir(parents=True, exist_ok=True)
    with open(out / "pairs" / "pairs.jsonl", "w", encoding="utf-8") as fh:
        texts = {}
        for line_no, line in enumerate(open(out / "corpus" / "corpus.jsonl", encoding="utf-8")):
            texts[line_no] = json.loads(line)["text"]
        for qi, p in enumerate(pos):
            toks = docs_tokens[p]
            picked = [toks[j] for j in sorted(rng.choice(len(toks), size=min(len(toks), rng.integers(4, 9)), replace=False))]
            query = ("".join(picked) if lang[p] else " ".join(picked)) + ("？" if lang[p] else "?")
            fh.write(json.dumps({"query": query, "positive": texts[int(p)], "query_id": f"sq{qi}",
                                 "positive_id": f"s{p}"}, ensure_ascii=False) + "\n")
    # Clustered random unit vectors; each query near its positive.
    centroids = rng.normal(size=(max(1, passages // 100), DIM)).astype(np.float32)
    doc_emb = centroids[rng.integers(0, len(centroids), size=passages)] + 0.7 * rng.normal(size=(passages, DIM)).astype(np.float32)
    doc_emb /= np.linalg.norm(doc_emb, axis=1, keepdims=True)
    q_emb = doc_emb[pos] + (0.5 / np.sqrt(DIM)) * rng.normal(size=(queries, DIM)).astype(np.float32)  # cos ~0.9
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    np.savez(out / "emb.npz", doc=doc_emb.astype(np.float32), query=q_emb.astype(np.float32))
    return out


def read_dataset(folder: Path):
    corpus = [json.loads(line) for line in open(folder / "corpus" / "corpus.jsonl", encoding="utf-8")]
    pairs = [json.loads(line) for line in open(folder / "pairs" / "pairs.jsonl", encoding="utf-8")]
    return corpus, pairs


class TableEncoder:
    """Stands in for a SentenceTransformer: returns precomputed vectors for known texts."""

    def __init__(self, texts: list[str], vectors):
        self.row = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors

    def encode(self, texts, **kwargs):
        import numpy as np

        return np.ascontiguousarray(self.vectors[[self.row[t] for t in texts]])

    def get_embedding_dimension(self) -> int:
        return int(self.vectors.shape[1])


def embedding_table(folder: Path):
    """text -> vector for the synthetic set (passage texts and query texts)."""
    import numpy as np

    from components.retrieval import passage_text

    corpus, pairs = read_dataset(folder)
    emb = np.load(folder / "emb.npz")
    texts = [passage_text(d) for d in corpus] + [p["query"] for p in pairs]
    vectors = np.concatenate([emb["doc"], emb["query"]])
    return corpus, pairs, texts, vectors


# ---------------------------------------------------------------------------------------------
# Methods (each runs in a child process)
# ---------------------------------------------------------------------------------------------

# extend_vocab off: the same model as sentence-transformers' side, so time and memory compare like for like.
ORCH_COMMON = dict(negatives_per_query=3, rank_window=(3, 30), max_score_ratio=0.95, sampling="top", extend_vocab=None)


def run_orch(folder: Path, synthetic: bool, **params) -> dict:
    from components.mining import MiningParams, hard_negative_mining
    from orchestrator.api import Artifact
    from orchestrator.context import NodeContext

    if synthetic and params.get("retriever") == "dense":
        import components.retrieval as retrieval

        _, _, texts, vectors = embedding_table(folder)
        table = TableEncoder(texts, vectors)
        retrieval.load_model = lambda ref, recipe_dir=None, device=None: table  # noqa: E731
    entry = folder / "runs" / f"orch_{params.get('mode', 'hard')}_{params.get('retriever', 'bm25')}_{params.get('bm25_tokenizer', 'auto')}"
    if entry.exists():
        import shutil

        shutil.rmtree(entry)
    inputs = {"corpus": Artifact("corpus", folder / "corpus", "c"), "pairs": Artifact("pairs", folder / "pairs", "p")}
    ctx = NodeContext(node="mine", entry_dir=entry, recipe_dir=REPO, seed=0)
    rss0 = rss_mib()
    t0 = time.time()
    hard_negative_mining(MiningParams(**ORCH_COMMON, **params), inputs, ctx)
    elapsed = time.time() - t0
    stats = json.loads((entry / "outputs" / "stats" / "stats.json").read_text(encoding="utf-8"))
    return {"time_s": elapsed, "rss_before_mib": rss0, "negatives": stats["negatives_total"],
            "queries": stats["queries"], "without": stats["queries_without_negative"]["count"],
            "detail": f"index {stats['time_s']['index']:.1f}s, mine {stats['time_s']['mine']:.1f}s"}


def run_st(folder: Path, synthetic: bool) -> dict:
    import hashlib

    import numpy as np
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from components.retrieval import load_model, passage_text

    corpus, pairs = read_dataset(folder)
    corpus_texts = [passage_text(d) for d in corpus]
    queries = [p["query"] for p in pairs]
    by_id = {d["_id"]: passage_text(d) for d in corpus}  # the same positive texts orch writes
    positives = [by_id.get(p.get("positive_id"), p["positive"]) for p in pairs]
    cache = None
    rss0 = rss_mib()
    t0 = time.time()
    model = load_model("minilm")
    if synthetic:
        # Seed sentence-transformers' embedding cache with the same vectors orch gets.
        _, _, texts, vectors = embedding_table(folder)
        row = {t: i for i, t in enumerate(texts)}
        cache = folder / "st_cache"
        cache.mkdir(exist_ok=True)
        model_name = model.model_card_data.base_model or ""
        uq = list(dict.fromkeys(queries))
        uc = list(dict.fromkeys(corpus_texts + positives))
        qh = hashlib.sha256(repr((model_name, None, None, uq)).encode()).hexdigest()
        ch = hashlib.sha256(repr((model_name, None, None, uc)).encode()).hexdigest()
        np.save(cache / f"query_embeddings_{qh}.npy", vectors[[row[t] for t in uq]])
        np.save(cache / f"corpus_embeddings_{ch}.npy", vectors[[row[t] for t in uc]])
        t0 = time.time()  # the model load and cache seeding are not mining
    ds = Dataset.from_dict({"query": queries, "positive": positives})
    out = mine_hard_negatives(ds, model, corpus=corpus_texts, range_min=2, range_max=30, relative_margin=0.05,
                              num_negatives=3, sampling_strategy="top", output_format="n-tuple", batch_size=64,
                              use_faiss=True, verbose=False, cache_folder=str(cache) if cache else None)
    out.to_json(str(folder / "runs_st.jsonl"), force_ascii=False)
    elapsed = time.time() - t0
    neg_cols = [c for c in out.column_names if c.startswith("negative")]
    return {"time_s": elapsed, "rss_before_mib": rss0, "negatives": len(out) * len(neg_cols),
            "queries": len(set(queries)), "without": len(set(queries)) - len(set(out["query"])),
            "detail": "n-tuple output" + (", embeddings from cache" if synthetic else "")}


def run_encode_sample(folder: Path, n: int) -> dict:
    from components.retrieval import encode, load_model, passage_text

    corpus, _ = read_dataset(folder)
    texts = [passage_text(d) for d in corpus[:n]]
    model = load_model("minilm")
    rss0 = rss_mib()
    t0 = time.time()
    encode(model, texts, batch_size=64)
    elapsed = time.time() - t0
    return {"time_s": elapsed, "rss_before_mib": rss0, "negatives": None, "queries": None, "without": None,
            "detail": f"{n / elapsed:.1f} passages/s -> 100k passages ~{100000 / (n / elapsed) / 60:.0f} min"}


METHODS = {
    "orch bm25 (jieba)": lambda f, s: run_orch(f, s, retriever="bm25"),
    "orch bm25 (char_bigram)": lambda f, s: run_orch(f, s, retriever="bm25", bm25_tokenizer="char_bigram"),
    "orch dense (flat)": lambda f, s: run_orch(f, s, retriever="dense"),
    "orch random (baseline)": lambda f, s: run_orch(f, s, mode="random"),
    "sentence-transformers mine_hard_negatives (dense, faiss)": run_st,
}


def child(method: str, folder: Path, synthetic: bool, encode_n: int) -> None:
    if method == "encode sample":
        result = run_encode_sample(folder, encode_n)
    else:
        result = METHODS[method](folder, synthetic)
    result["peak_rss_mib"] = rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def spawn(method: str, folder: Path, synthetic: bool, timeout: int, encode_n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--dataset", str(folder), "--encode-n", str(encode_n)]
    if synthetic:
        cmd.append("--synthetic")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["process_s"] = time.time() - t0
            return out
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1][:200] if (proc.stderr or proc.stdout) else f"rc {proc.returncode}"}


def agreement(folder: Path) -> str | None:
    """How many queries got the very same negatives (same order) from orch dense and sentence-transformers."""
    orch_file = folder / "runs" / "orch_hard_dense_auto" / "outputs" / "ntuples" / "ntuples.jsonl"
    st_file = folder / "runs_st.jsonl"
    if not orch_file.exists() or not st_file.exists():
        return None
    orch = {r["query"]: r["neg"] for r in map(json.loads, open(orch_file, encoding="utf-8"))}
    st = {}
    for r in map(json.loads, open(st_file, encoding="utf-8")):
        st[r["query"]] = [r[k] for k in sorted(r, key=lambda c: (len(c), c)) if k.startswith("negative")]
    both = [q for q in orch if q in st]
    same = sum(orch[q] == st[q] for q in both)
    return (f"{same} of the {len(both)} queries that both methods gave 3 negatives got identical negatives "
            f"(orch: {len(orch)} queries with negatives, sentence-transformers: {len(st)})")


def fmt(v, spec="{:.1f}") -> str:
    return "-" if v is None else spec.format(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/orch_bench_mining")
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--encode-n", type=int, default=300)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mining.md"))
    ap.add_argument("--only", default="", help="comma-separated method name substrings")
    ap.add_argument("--child")
    ap.add_argument("--dataset")
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.dataset), args.synthetic, args.encode_n)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    t = time.time()
    cmrc = prepare_cmrc(work)
    synth = prepare_synthetic(work, cmrc, args.passages, args.queries)
    print(f"datasets ready in {time.time() - t:.0f}s: {cmrc}, {synth}", flush=True)

    datasets = [("CMRC2018 sample", cmrc, False), (f"synthetic {args.passages // 1000}k", synth, True)]
    rows = []
    notes = []
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for ds_name, folder, synthetic in datasets:
        corpus_n = sum(1 for _ in open(folder / "corpus" / "corpus.jsonl", encoding="utf-8"))
        methods = list(METHODS) + (["encode sample"] if synthetic else [])
        for method in methods:
            if only and not any(s in method for s in only):
                continue
            print(f"{ds_name}: {method} ...", flush=True)
            r = spawn(method, folder, synthetic, args.timeout, args.encode_n)
            r.update(dataset=ds_name, method=method if method != "encode sample" else
                     f"MiniLM encoding, {args.encode_n} passages (real model)", corpus=corpus_n)
            print("   ", json.dumps(r), flush=True)
            rows.append(r)
        agree = agreement(folder)
        if agree:
            notes.append(f"- {ds_name}, orch dense vs sentence-transformers: {agree}.")

    header = ("| dataset | method | passages | queries | time (s) | peak RSS (MiB) | RSS before (MiB) | negatives | "
              "queries w/o negative | notes |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['method']} | {r['corpus']} | - | - | - | - | - | - | error: {r['error']} |")
            continue
        lines.append(f"| {r['dataset']} | {r['method']} | {r['corpus']} | {fmt(r['queries'], '{}')} | {fmt(r['time_s'])} | "
                     f"{fmt(r['peak_rss_mib'], '{:.0f}')} | {fmt(r['rss_before_mib'], '{:.0f}')} | {fmt(r['negatives'], '{}')} | "
                     f"{fmt(r['without'], '{}')} | {r.get('detail', '')} |")
    table = "\n".join(lines)
    print()
    print(table)
    print("\n".join(notes))
    load_end = os.getloadavg()
    doc = __doc__.split("\n\n", 1)[1]
    md = (f"# Hard-negative mining benchmark\n\n"
          f"`python benchmarks/mining.py --passages {args.passages} --queries {args.queries}` on {platform.machine()}, "
          f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; load average at start "
          f"{load_start[0]:.1f}, at end {load_end[0]:.1f} (the machine was shared: timings are indicative).\n\n"
          f"{table}\n\n"
          f"time: wall time of the mining call. peak RSS: VmHWM of the method's subprocess, imports included; "
          f"'RSS before' is its peak just before the call (interpreter + imports + inputs).\n\n"
          + ("Same negatives?\n\n" + "\n".join(notes) + "\n\n" if notes else "") +
          f"## Method\n\n{doc}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
