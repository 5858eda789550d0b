"""Hard-negative mining benchmark: orch's ``hard_negative_mining`` vs sentence-transformers'
``util.mine_hard_negatives``, time and peak memory, on the CMRC2018 sample and a synthetic
100k-passage corpus.

    python benchmarks/mining.py                 # full run (tens of minutes on 2 CPU cores)
    python benchmarks/mining.py --passages 20000 --queries 1000   # quicker

Every (dataset, method) runs in its own subprocess; its peak RSS (VmHWM) is reset just before the
call, so the memory figures are the call's alone. Time is the wall time from the input files on
disk to the output files on disk, with the libraries imported beforehand (model loading included
unless noted): orch's component call; for sentence-transformers, reading the same JSONL files
into lists, ``mine_hard_negatives`` and writing its n-tuples. With ``--repeat N`` each method runs
in N fresh processes and the medians of time, peak and added memory are reported.

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

Encoding batch: each tool's default (orch 16 on a CPU, sentence-transformers 32), and on the CMRC
sample sentence-transformers once more at orch's 16, so the model's own cost compares like for
like. The transformer's forward pass dominates the CMRC dense rows; its activations grow with the
batch, and a CPU encodes no faster at 64 than at 16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
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


def _status_mib(field: str) -> float | None:
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Peak resident memory of this process in MiB (since start_peak(), where Linux allows it).

    VmHWM (reset by exec) rather than ru_maxrss, which a child started by fork + exec inherits
    from its parent on Linux."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024**2


def start_peak() -> float:
    """Resets the peak (VmHWM) to the current RSS and returns the current RSS in MiB, so that the
    peak read after a call is the call's own. Linux >= 4.0; elsewhere the peak stays the process's."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass
    now = _status_mib("VmRSS")
    return now if now is not None else rss_mib()


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


def _texts(folder: Path):
    """The synthetic set's texts in emb.npz's row order (passages as indexed, then queries), one at a time."""
    from components.retrieval import passage_text

    for line in open(folder / "corpus" / "corpus.jsonl", encoding="utf-8"):
        yield passage_text(json.loads(line))
    for line in open(folder / "pairs" / "pairs.jsonl", encoding="utf-8"):
        yield json.loads(line)["query"]


def _vectors(folder: Path):
    import numpy as np

    emb = np.load(folder / "emb.npz")
    return np.concatenate([emb["doc"], emb["query"]])


class TableEncoder:
    """Stands in for a SentenceTransformer on the synthetic set: precomputed vectors by text.

    Built by streaming the files (keys are the texts' hashes), so that setting it up leaves no
    heap of freed text objects behind for the mining to reuse unseen by the memory figures."""

    def __init__(self, folder: Path):
        self.row = {hash(t): i for i, t in enumerate(_texts(folder))}
        self.vectors = _vectors(folder)

    def encode(self, texts, **kwargs):
        import numpy as np

        return np.ascontiguousarray(self.vectors[[self.row[hash(t)] for t in texts]])

    def get_embedding_dimension(self) -> int:
        return int(self.vectors.shape[1])


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

        table = TableEncoder(folder)
        retrieval.load_model = lambda ref, recipe_dir=None, device=None: table  # noqa: E731
    entry = folder / "runs" / f"orch_{params.get('mode', 'hard')}_{params.get('retriever', 'bm25')}_{params.get('bm25_tokenizer', 'auto')}"
    if entry.exists():
        import shutil

        shutil.rmtree(entry)
    inputs = {"corpus": Artifact("corpus", folder / "corpus", "c"), "pairs": Artifact("pairs", folder / "pairs", "p")}
    ctx = NodeContext(node="mine", entry_dir=entry, recipe_dir=REPO, seed=0)
    # Libraries are imported before the clock starts, as sentence-transformers' side imports its own.
    if params.get("retriever") == "dense":
        import faiss  # noqa: F401
        import sentence_transformers  # noqa: F401
    elif params.get("mode", "hard") == "hard":
        import bm25s  # noqa: F401
    rss0 = start_peak()
    t0 = time.time()
    hard_negative_mining(MiningParams(**ORCH_COMMON, **params), inputs, ctx)
    elapsed = time.time() - t0
    stats = json.loads((entry / "outputs" / "stats" / "stats.json").read_text(encoding="utf-8"))
    return {"time_s": elapsed, "rss_before_mib": rss0, "negatives": stats["negatives_total"],
            "queries": stats["queries"], "without": stats["queries_without_negative"]["count"],
            "detail": f"read {stats['time_s']['read']:.1f}s, index {stats['time_s']['index']:.1f}s, "
                      f"mine + write {stats['time_s']['mine']:.1f}s"}


def st_cache_name(model, queries: list[str], corpus_texts: list[str], positives: list[str]) -> tuple[str, str]:
    """The file names sentence-transformers' mine_hard_negatives gives its cached query and corpus embeddings."""
    import hashlib

    model_name = model.model_card_data.base_model or ""
    uq = list(dict.fromkeys(queries))
    uc = list(dict.fromkeys(corpus_texts + positives))
    qh = hashlib.sha256(repr((model_name, None, None, uq)).encode()).hexdigest()
    ch = hashlib.sha256(repr((model_name, None, None, uc)).encode()).hexdigest()
    return f"query_embeddings_{qh}.npy", f"corpus_embeddings_{ch}.npy"


def st_inputs(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """The same files orch reads, as sentence-transformers' inputs (the positive texts orch writes)."""
    from components.retrieval import passage_text

    corpus, pairs = read_dataset(folder)
    corpus_texts = [passage_text(d) for d in corpus]
    by_id = {d["_id"]: text for d, text in zip(corpus, corpus_texts)}
    return corpus_texts, [p["query"] for p in pairs], [by_id.get(p.get("positive_id"), p["positive"]) for p in pairs]


def seed_st_cache(folder: Path) -> None:
    """Seeds sentence-transformers' embedding cache with the vectors orch's TableEncoder gives (own process)."""
    import numpy as np

    from components.retrieval import load_model

    corpus_texts, queries, positives = st_inputs(folder)
    row = {t: i for i, t in enumerate(_texts(folder))}
    vectors = _vectors(folder)
    qname, cname = st_cache_name(load_model("minilm"), queries, corpus_texts, positives)
    cache = folder / "st_cache"
    cache.mkdir(exist_ok=True)
    np.save(cache / qname, vectors[[row[t] for t in dict.fromkeys(queries)]])
    np.save(cache / cname, vectors[[row[t] for t in dict.fromkeys(corpus_texts + positives)]])


def run_st(folder: Path, synthetic: bool, batch_size: int | None = None) -> dict:
    """``batch_size`` None: mine_hard_negatives' own default (32)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from components.retrieval import load_model

    cache = folder / "st_cache" if synthetic else None
    if synthetic:
        model = load_model("minilm")  # the model load is not mining: the embeddings come from the cache
    rss0 = start_peak()
    t0 = time.time()
    if not synthetic:
        model = load_model("minilm")
    t_read = time.time()
    corpus_texts, queries, positives = st_inputs(folder)
    t_call = time.time()
    if synthetic and not all((cache / name).exists() for name in st_cache_name(model, queries, corpus_texts, positives)):
        raise RuntimeError(f"{cache} lacks the embeddings: run the 'seed sentence-transformers cache' child first")
    ds = Dataset.from_dict({"query": queries, "positive": positives})
    out = mine_hard_negatives(ds, model, corpus=corpus_texts, range_min=2, range_max=30, relative_margin=0.05,
                              num_negatives=3, sampling_strategy="top", output_format="n-tuple",
                              use_faiss=True, verbose=False, cache_folder=str(cache) if cache else None,
                              **({"batch_size": batch_size} if batch_size else {}))
    out.to_json(str(folder / "runs_st.jsonl"), force_ascii=False)
    elapsed = time.time() - t0
    neg_cols = [c for c in out.column_names if c.startswith("negative")]
    return {"time_s": elapsed, "rss_before_mib": rss0, "negatives": len(out) * len(neg_cols),
            "queries": len(set(queries)), "without": len(set(queries)) - len(set(out["query"])),
            "detail": f"read {t_call - t_read:.1f}s, mine + write {time.time() - t_call:.1f}s; n-tuple output"
                      + (f", batch {batch_size}" if batch_size else "")
                      + (", embeddings from cache" if synthetic else "")}


def run_encode_sample(folder: Path, n: int) -> dict:
    from components.retrieval import encode, load_model, passage_text

    corpus, _ = read_dataset(folder)
    texts = [passage_text(d) for d in corpus[:n]]
    model = load_model("minilm")
    rss0 = start_peak()
    t0 = time.time()
    encode(model, texts)  # orch's default batch for the device
    elapsed = time.time() - t0
    return {"time_s": elapsed, "rss_before_mib": rss0, "negatives": None, "queries": None, "without": None,
            "detail": f"{n / elapsed:.1f} passages/s -> 100k passages ~{100000 / (n / elapsed) / 60:.0f} min"}


ST_BATCH16 = "sentence-transformers mine_hard_negatives (dense, faiss, batch 16)"

METHODS = {
    "orch bm25 (jieba)": lambda f, s: run_orch(f, s, retriever="bm25"),
    "orch bm25 (char_bigram)": lambda f, s: run_orch(f, s, retriever="bm25", bm25_tokenizer="char_bigram"),
    "orch dense (flat)": lambda f, s: run_orch(f, s, retriever="dense"),
    "orch random (baseline)": lambda f, s: run_orch(f, s, mode="random"),
    "sentence-transformers mine_hard_negatives (dense, faiss)": run_st,
    # orch's CPU encoding batch (16) given to sentence-transformers: the model's own cost, like for like.
    ST_BATCH16: lambda f, s: run_st(f, s, batch_size=16),
}


SEED = "seed sentence-transformers cache"


def child(method: str, folder: Path, synthetic: bool, encode_n: int) -> None:
    if method == SEED:
        seed_st_cache(folder)
        print("RESULT " + json.dumps({"seeded": True}), flush=True)
        return
    result = run_encode_sample(folder, encode_n) if method == "encode sample" else METHODS[method](folder, synthetic)
    result["peak_rss_mib"] = rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


def median_run(runs: list[dict]) -> dict:
    """One row from ``runs`` (fresh processes of one method): the median time, median peak and median
    start RSS (each taken on its own), the other fields from the median-time run, the spread in the notes."""
    def med(key: str) -> float:
        return sorted(r[key] for r in runs)[len(runs) // 2]

    out = dict(sorted(runs, key=lambda r: r["time_s"])[len(runs) // 2])
    if len(runs) > 1:
        out.update(time_s=med("time_s"), peak_rss_mib=med("peak_rss_mib"), rss_before_mib=med("rss_before_mib"))
        added = sorted(r["peak_rss_mib"] - r["rss_before_mib"] for r in runs)
        out["added_mib"] = added[len(added) // 2]
        out["detail"] += ("; runs " + ", ".join(f"{r['time_s']:.2f}" for r in runs) + " s, added "
                          + ", ".join(f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f}" for r in runs) + " MiB")
    return out


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
    ap.add_argument("--repeat", type=int, default=1,
                    help="fresh processes per method: median time and memory reported, the spread in the notes")
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
            if synthetic and method == ST_BATCH16:  # embeddings come from the cache: no model, no batch
                continue
            print(f"{ds_name}: {method} ...", flush=True)
            if synthetic and method.startswith("sentence-transformers"):
                seeded = spawn(SEED, folder, synthetic, args.timeout, args.encode_n)
                if "error" in seeded:
                    raise SystemExit(f"seeding sentence-transformers' cache failed: {seeded['error']}")
            runs = [spawn(method, folder, synthetic, args.timeout, args.encode_n) for _ in range(max(1, args.repeat))]
            failed = [r for r in runs if "error" in r]
            r = failed[0] if failed else median_run(runs)
            r.update(dataset=ds_name, method=method if method != "encode sample" else
                     f"MiniLM encoding, {args.encode_n} passages (real model)", corpus=corpus_n)
            print("   ", json.dumps(r), flush=True)
            rows.append(r)
        agree = agreement(folder)
        if agree:
            notes.append(f"- {ds_name}, orch dense vs sentence-transformers: {agree}.")

    header = ("| dataset | method | passages | queries | time (s) | RSS at start (MiB) | peak RSS (MiB) | added (MiB) | "
              "negatives | queries w/o negative | notes |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['method']} | {r['corpus']} | - | - | - | - | - | - | - | error: {r['error']} |")
            continue
        added = r.get("added_mib", r["peak_rss_mib"] - r["rss_before_mib"] if r.get("rss_before_mib") is not None else None)
        lines.append(f"| {r['dataset']} | {r['method']} | {r['corpus']} | {fmt(r['queries'], '{}')} | {fmt(r['time_s'])} | "
                     f"{fmt(r['rss_before_mib'], '{:.0f}')} | {fmt(r['peak_rss_mib'], '{:.0f}')} | {fmt(added, '{:.0f}')} | "
                     f"{fmt(r['negatives'], '{}')} | {fmt(r['without'], '{}')} | {r.get('detail', '')} |")
    table = "\n".join(lines)
    print()
    print(table)
    print("\n".join(notes))
    load_end = os.getloadavg()
    doc = __doc__.split("\n\n", 1)[1]
    md = (f"# Hard-negative mining benchmark\n\n"
          f"`python benchmarks/mining.py {shlex.join(sys.argv[1:])}` on {platform.machine()}, "
          f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; load average at start "
          f"{load_start[0]:.1f}, at end {load_end[0]:.1f} (the machine was shared: timings are indicative).\n\n"
          f"{table}\n\n"
          f"time: wall time from input files to output files. RSS at start: the method's process just before the "
          f"call (interpreter, libraries, and on the synthetic set orch's lookup-table encoder, ~170 MiB, in place "
          f"of the model); peak RSS: its peak during the call (VmHWM reset at the start); added: peak minus start, "
          f"the mining's own memory."
          + (f" Each figure is the median of {args.repeat} fresh processes (each method's runs and added memory "
             f"are listed in its notes): the transformer's forward pass dominates the dense rows' memory, and "
             f"its peak varies by ~100 MiB from one process to the next." if args.repeat > 1 else "") + "\n\n"
          + ("Same negatives?\n\n" + "\n".join(notes) + "\n\n" if notes else "") +
          f"## Method\n\n{doc}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
