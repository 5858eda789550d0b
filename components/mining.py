"""Hard-negative mining: (query, positive) pairs + a corpus -> triplets, n-tuples and labeled pairs.

For every distinct query the retriever ranks the corpus; the query's positives are removed from
the ranking (every passage paired with the same query text is a positive), and so is every passage
whose normalised text equals a positive's (a duplicate of the positive under another id). The
remaining candidates are numbered 1, 2, ... (the *rank*); those inside ``rank_window`` pass through
the false-negative filters (score close to the positive's, cross-encoder score) and
``negatives_per_query`` of the survivors become negatives (the best ones, or a random sample).

Only the standard library and pydantic are imported here: `orch validate` imports this module.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
import time
import unicodedata
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.api import Artifact, Input, ModelRef, RunContext, component, read_jsonl

from .vocab import VocabExtension

__all__ = ["MiningParams", "MiningError", "hard_negative_mining"]


class MiningError(ValueError):
    pass


class MiningParams(BaseModel):
    """Hard (retrieved) or random negatives for (query, positive) pairs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["hard", "random"] = Field(
        "hard", description="hard: negatives retrieved from the corpus and filtered; random: negatives drawn "
                            "uniformly from the corpus (never a positive), the baseline.")
    retriever: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25", description="What ranks the candidates: bm25 (lexical; strong on CMRC2018-style data where "
                            "questions reuse the passage's words), dense (the embedding model) or hybrid "
                            "(both, fused by reciprocal rank). With hybrid the score filters use the dense cosine.")
    model: ModelRef = Field("minilm", description="Embedding model for the dense and hybrid retrievers: an alias "
                                                  "(minilm), a local folder or a hub id. The `model` input, when "
                                                  "connected (e.g. embedder.model), takes its place.")
    query_prompt: str | None = Field(None, description="Text prepended to queries before embedding (e.g. 'query: ').")
    passage_prompt: str | None = Field(None, description="Text prepended to passages before embedding.")
    bm25_tokenizer: Literal["auto", "jieba", "char_bigram", "regex"] = Field(
        "auto", description="BM25 tokens: auto (jieba words for Chinese, stemmed regex words otherwise), jieba, "
                            "char_bigram (CJK character unigrams + bigrams) or regex.")
    dense_index: Literal["flat", "ivf", "hnsw"] = Field(
        "flat", description="FAISS index of the dense retriever: flat (exact), ivf or hnsw (approximate, for "
                            "large corpora).")
    negatives_per_query: int = Field(3, ge=1, le=1000, description="Negatives mined for each distinct query.")
    rank_window: tuple[int, int] = Field(
        (3, 30), description="[first, last] rank (1-based, inclusive, counted after removing the query's "
                             "positives and their duplicates, before the score filters) that negatives are taken "
                             "from. Skipping the top ranks avoids unlabeled positives; the last rank bounds the "
                             "retrieval depth. sentence-transformers' range_min=2, range_max=30 is the same "
                             "window when no filter drops a candidate (it skips after filtering).")
    sampling: Literal["top", "random"] = Field(
        "top", description="top: the best-ranked candidates that pass the filters; random: a uniform sample of them.")
    max_score_ratio: float | None = Field(
        0.95, gt=0, le=1,
        description="False-negative filter: drop a candidate whose score is >= ratio x the positive's score "
                    "(precisely >= pos - (1 - ratio) x |pos|; with several positives, the lowest-scored one). "
                    "Scores are BM25 scores for bm25, cosines for dense and hybrid. null disables it.")
    max_score_margin: float | None = Field(
        None, ge=0, description="False-negative filter: drop a candidate whose score is >= the positive's score "
                                "minus this margin (same scale as max_score_ratio). null disables it.")
    cross_encoder: ModelRef | None = Field(
        None, description="Optional reranker (CrossEncoder) that rescores the candidates left after the other "
                          "filters; see ce_max_score.")
    ce_max_score: float | None = Field(
        None, description="With cross_encoder: drop a candidate whose cross-encoder score is >= this value. "
                          "Unset: drop it when it scores >= the query's lowest-scored positive.")
    extend_vocab: VocabExtension | None = Field(
        VocabExtension(), description="dense / hybrid: before indexing, give the corpus's words that the model's "
                                      "tokenizer can only encode as [UNK] tokens of their own (seeded random "
                                      "embeddings, see embed_finetune); null turns it off.")
    seed: int | None = Field(None, ge=0, description="Seed of the random choices; the recipe's seed when unset.")
    batch_size: int | None = Field(None, ge=1, description="Encoding batch size of the embedding model and "
                                                           "cross-encoder; default 16 on CPU (as fast as 64 there, a "
                                                           "third of the memory), 64 on a GPU.")
    query_batch: int = Field(4096, ge=1, description="Queries retrieved at a time (bounds memory: their hits and "
                                                     "candidates; FAISS blocks its own work). Larger batches make "
                                                     "exact dense search faster.")

    @field_validator("rank_window")
    @classmethod
    def _window(cls, value: tuple[int, int]) -> tuple[int, int]:
        first, last = value
        if first < 1:
            raise ValueError(f"ranks start at 1, got first rank {first}")
        if last < first:
            raise ValueError(f"the last rank ({last}) is before the first ({first})")
        if last > 10000:
            raise ValueError(f"the last rank ({last}) is above 10000; retrieval that deep is rarely useful")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        first, last = self.rank_window
        if self.mode == "hard" and last - first + 1 < self.negatives_per_query:
            raise ValueError(f"rank_window [{first}, {last}] holds {last - first + 1} candidates, fewer than "
                             f"negatives_per_query ({self.negatives_per_query})")
        if self.ce_max_score is not None and self.cross_encoder is None:
            raise ValueError("ce_max_score needs cross_encoder")
        if self.mode == "random" and self.cross_encoder is not None:
            raise ValueError("cross_encoder filters retrieved candidates: it applies to mode hard only")
        return self


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """What two passages must share to count as the same passage: NFKC, casefold, no whitespace."""
    # str.split() splits on exactly the characters regex \s matches in a str pattern, ~3x faster than re.sub.
    return "".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def doc_norms(doc: dict[str, str]) -> tuple[str, str]:
    """(normalised text, normalised ``title\\ntext``) of a corpus row, normalising each character once.

    The passage form is retrieval.passage_text's ``title\\ntext`` (or whichever is non-empty); its
    normal form is the title's followed by the text's: the newline is a starter that composes with
    nothing (NFKC does not reach across it), casefold maps characters one by one and the newline
    itself is whitespace, removed. tests/unit/test_mining.py checks the identity on tricky text.
    """
    text = normalize_text(doc["text"])
    return text, normalize_text(doc["title"]) + text


@dataclass
class QueryGroup:
    qid: str
    text: str
    pos_ids: list[str] = field(default_factory=list)  # corpus ids of the positives
    pos_texts: list[str] = field(default_factory=list)  # output texts of the positives (one per positive)
    pos_norms: set[int] = field(default_factory=set)  # hashes of the positives' normalised texts (duplicate check)
    pos_scores: list[float] = field(default_factory=list)  # the retriever's score of each positive id
    pairs: int = 0


def _read_corpus(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(ids, [{title, text}]) of a corpus JSONL file, ids as strings.

    json.loads per line. (pyarrow's JSON reader was tried: twice as fast, 0.2 s vs 0.4 s for 100k
    passages, but the mining's peak memory grew by ~100 MB with it; benchmarks/mining.py.)"""
    ids, docs = [], []
    seen = set()
    for i, row in enumerate(read_jsonl(path)):
        doc_id = row.get("_id", row.get("id"))
        if doc_id is None:
            raise MiningError(f"{path}:{i + 1}: corpus row without _id")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise MiningError(f"{path}:{i + 1}: duplicate corpus id {doc_id!r}")
        seen.add(doc_id)
        ids.append(doc_id)
        docs.append({"title": str(row.get("title") or ""), "text": str(row.get("text") or "")})
    if not ids:
        raise MiningError(f"{path}: the corpus is empty")
    return ids, docs


def _group_pairs(path: Path, ids: list[str], docs: list[dict[str, str]], passage_text) -> tuple[list[QueryGroup], dict]:
    """Distinct queries (by text) with all their positives."""
    pos_of = {d: i for i, d in enumerate(ids)}
    by_norm: dict[str, int] | None = None
    groups: dict[str, QueryGroup] = {}
    counts = Counter()
    for line, row in enumerate(read_jsonl(path), start=1):
        query = str(row.get("query") or "").strip()
        positive = str(row.get("positive") or "")
        if not query or not positive.strip():
            raise MiningError(f"{path}:{line}: a pair needs a query and a positive")
        counts["pairs"] += 1
        group = groups.get(query)
        if group is None:
            qid = row.get("query_id")
            qid = str(qid) if qid not in (None, "") else "q_" + hashlib.sha1(query.encode("utf-8")).hexdigest()[:12]
            group = groups[query] = QueryGroup(qid=qid, text=query)
        group.pairs += 1
        pid = row.get("positive_id")
        pid = str(pid) if pid not in (None, "") else None
        if pid is None or pid not in pos_of:
            # Find the passage by its text (the pair may come without ids, or from another corpus).
            if by_norm is None:
                by_norm = {}
                for i, doc in enumerate(docs):
                    for norm in doc_norms(doc):
                        by_norm.setdefault(norm, i)
            idx = by_norm.get(normalize_text(positive))
            pid = ids[idx] if idx is not None else None
            counts["positives_matched_by_text" if pid is not None else "positives_not_in_corpus"] += 1
        if pid is not None:
            if pid in group.pos_ids:
                continue
            doc = docs[pos_of[pid]]
            group.pos_ids.append(pid)
            group.pos_texts.append(passage_text(doc))
            group.pos_norms.update(map(hash, doc_norms(doc)))
        else:
            norm = hash(normalize_text(positive))
            if norm in group.pos_norms:
                continue
            group.pos_texts.append(positive)
            group.pos_norms.add(norm)
    if not groups:
        raise MiningError(f"{path}: no pairs")
    return list(groups.values()), dict(counts)


# ---------------------------------------------------------------------------------------------
# Mining
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    idx: int  # position in the corpus
    rank: int
    score: float | None = None
    ce_score: float | None = None
    reason: str | None = None  # why it was dropped, None if kept


class Miner:
    def __init__(self, params: MiningParams, ids: list[str], docs: list[dict[str, str]], seed: int, ctx: RunContext,
                 passage_text):
        self.p, self.ids, self.docs, self.seed, self.ctx = params, ids, docs, seed, ctx
        self.passage_text = passage_text
        self.pos_of = {d: i for i, d in enumerate(ids)}
        self._norm_cache: dict[int, tuple[int, int]] = {}
        self.filtered = Counter()
        self.skipped_known_positives = 0
        self.pos_score_sum, self.pos_score_n = 0.0, 0
        self.retriever = None
        self.cross_encoder = None

    def rng(self, qid: str) -> random.Random:
        # Per query, so a query's negatives do not depend on the other queries or their order.
        return random.Random(f"{self.seed}:{qid}")

    def norms(self, idx: int) -> tuple[int, int]:
        """Hashes of doc_norms(passage idx), cached: 64-bit hashes keep the cache small (a chance of
        about 1e-14 in a 100k-passage run that a passage is wrongly taken for a positive's duplicate)."""
        got = self._norm_cache.get(idx)
        if got is None:
            text, passage = doc_norms(self.docs[idx])
            got = self._norm_cache[idx] = (hash(text), hash(passage))
        return got

    def is_duplicate(self, idx: int, group: QueryGroup) -> bool:
        a, b = self.norms(idx)
        return a in group.pos_norms or b in group.pos_norms

    # -- random ---------------------------------------------------------------------------------
    def random_negatives(self, group: QueryGroup) -> list[Candidate]:
        rng = self.rng(group.qid)
        n, want = len(self.ids), self.p.negatives_per_query
        positives = {self.pos_of[p] for p in group.pos_ids}
        chosen: list[int] = []
        taken = set()
        tries = 0
        while len(chosen) < want and tries < want * 20:
            tries += 1
            idx = rng.randrange(n)
            if idx in taken or idx in positives:
                continue
            taken.add(idx)
            if self.is_duplicate(idx, group):
                continue
            chosen.append(idx)
        if len(chosen) < want:  # a small corpus: draw from the explicit list of eligible passages
            eligible = [i for i in range(n) if i not in positives and i not in chosen and not self.is_duplicate(i, group)]
            chosen += rng.sample(eligible, min(want - len(chosen), len(eligible)))
        return [Candidate(idx=i, rank=0) for i in chosen]

    # -- hard -----------------------------------------------------------------------------------
    def build_retriever(self, model_ref: str | None) -> None:
        from components.retrieval import make_retriever

        p = self.p
        opts: dict[str, Any] = {}
        model = None
        if p.retriever in ("bm25", "hybrid"):
            opts["tokenizer"] = p.bm25_tokenizer
        if p.retriever in ("dense", "hybrid"):
            from components.retrieval import load_model

            model = load_model(model_ref)
            if p.extend_vocab is not None:
                from components.vocab import extend_vocabulary

                added = extend_vocabulary(model.tokenizer, model[0].auto_model,
                                          [self.passage_text(d) for d in self.docs], p.extend_vocab, seed=self.seed)
                if added:
                    self.ctx.log(f"vocabulary: +{added} tokens for corpus words the tokenizer could only encode "
                                 "as [UNK]")
            opts.update(query_prompt=p.query_prompt, passage_prompt=p.passage_prompt, index=p.dense_index,
                        batch_size=p.batch_size)
        if p.retriever == "hybrid":
            opts["candidates"] = self.depth(1)
        self.retriever = make_retriever(p.retriever, model, **opts)
        self.retriever.index(self.ids, [self.passage_text(d) for d in self.docs])

    def depth(self, max_positives: int) -> int:
        # Positives and their duplicates are removed before ranks are counted: retrieve a few more.
        return self.p.rank_window[1] + max_positives + 10

    def hard_negatives(self, groups: list[QueryGroup]) -> list[tuple[list[Candidate], list[Candidate]]]:
        """For each group: (chosen negatives, dropped candidates of the window)."""
        p = self.p
        first, last = p.rank_window
        queries = [g.text for g in groups]
        hits = self.retriever.search(queries, self.depth(max(len(g.pos_ids) for g in groups)),
                                     query_batch=p.query_batch)
        windows: list[list[Candidate]] = []
        hit_scores: list[dict[str, float]] = []
        pos_of, norms = self.pos_of, self.norms  # the hot loop: 40 hits x every query
        for group, ranked in zip(groups, hits):
            positives, pos_norms = set(group.pos_ids), group.pos_norms
            rank, window = 0, []
            for doc_id, score in ranked:
                if doc_id in positives:
                    self.skipped_known_positives += 1
                    continue
                idx = pos_of[doc_id]
                text_norm, passage_norm = norms(idx)
                if text_norm in pos_norms or passage_norm in pos_norms:  # is_duplicate(), inlined
                    self.filtered["duplicate_text"] += 1
                    continue
                rank += 1
                if rank > last:
                    break
                if rank >= first:
                    window.append(Candidate(idx=idx, rank=rank, score=float(score)))
            windows.append(window)
            hit_scores.append(dict(ranked))
        self._score(groups, windows, hit_scores)

        needs_scores = p.max_score_ratio is not None or p.max_score_margin is not None
        for group, window in zip(groups, windows):
            pos_scores = group.pos_scores
            self.pos_score_sum += sum(pos_scores)
            self.pos_score_n += len(pos_scores)
            if not needs_scores or not pos_scores:
                continue
            ref = min(pos_scores)
            for cand in window:
                if p.max_score_ratio is not None and cand.score >= ref - (1 - p.max_score_ratio) * abs(ref):
                    cand.reason = "max_score_ratio"
                elif p.max_score_margin is not None and cand.score >= ref - p.max_score_margin:
                    cand.reason = "max_score_margin"

        if self.cross_encoder is not None:
            self._cross_encoder_filter(groups, windows)

        out = []
        for group, window in zip(groups, windows):
            for cand in window:
                if cand.reason:
                    self.filtered[cand.reason] += 1
            kept = [c for c in window if not c.reason]
            if p.sampling == "random" and len(kept) > p.negatives_per_query:
                chosen = sorted(self.rng(group.qid).sample(kept, p.negatives_per_query), key=lambda c: c.rank)
            else:
                chosen = kept[:p.negatives_per_query]
            out.append((chosen, [c for c in window if c.reason]))
        return out

    def _score(self, groups: list[QueryGroup], windows: list[list[Candidate]],
               hit_scores: list[dict[str, float]]) -> None:
        """The similarity of each query with its positives and candidates (the score filters' scale).

        BM25 and dense search scores are that similarity already: only positives missing from the
        hits are scored. Hybrid search scores are fused ranks: all pairs are scored (dense cosine).
        """
        from components.retrieval import HybridRetriever

        if isinstance(self.retriever, HybridRetriever):
            ids = [g.pos_ids + [self.ids[c.idx] for c in w] for g, w in zip(groups, windows)]
            rows = self.retriever.score([g.text for g in groups], ids)
            for group, window, row in zip(groups, windows, rows):
                group.pos_scores = [float(x) for x in row[:len(group.pos_ids)]]
                for cand, x in zip(window, row[len(group.pos_ids):]):
                    cand.score = float(x)
            return
        missing = [(gi, [pid for pid in g.pos_ids if pid not in hit_scores[gi]]) for gi, g in enumerate(groups)]
        missing = [(gi, ids) for gi, ids in missing if ids]
        extra: dict[int, dict[str, float]] = {}
        if missing:
            rows = self.retriever.score([groups[gi].text for gi, _ in missing], [ids for _, ids in missing])
            extra = {gi: dict(zip(ids, row)) for (gi, ids), row in zip(missing, rows)}
        for gi, group in enumerate(groups):
            found = hit_scores[gi]
            group.pos_scores = [float(found[pid]) if pid in found else float(extra[gi][pid]) for pid in group.pos_ids]

    def _cross_encoder_filter(self, groups: list[QueryGroup], windows: list[list[Candidate]]) -> None:
        pairs: list[tuple[str, str]] = []
        slots: list[tuple[int, Candidate | None]] = []
        for gi, (group, window) in enumerate(zip(groups, windows)):
            if self.p.ce_max_score is None:
                for text in group.pos_texts:
                    pairs.append((group.text, text))
                    slots.append((gi, None))
            for cand in window:
                if not cand.reason:
                    pairs.append((group.text, self.passage_text(self.docs[cand.idx])))
                    slots.append((gi, cand))
        if not pairs:
            return
        from components.retrieval import batch_size_for

        scores = self.cross_encoder.predict(pairs, batch_size=batch_size_for(self.cross_encoder, self.p.batch_size),
                                            show_progress_bar=False)
        pos_min: dict[int, float] = {}
        for (gi, cand), s in zip(slots, scores):
            if cand is None:
                pos_min[gi] = min(pos_min.get(gi, float("inf")), float(s))
        for (gi, cand), s in zip(slots, scores):
            if cand is None:
                continue
            cand.ce_score = float(s)
            limit = self.p.ce_max_score if self.p.ce_max_score is not None else pos_min.get(gi)
            if limit is not None and float(s) >= limit:
                cand.reason = "cross_encoder"


def _resolve_model(ref: str, ctx: RunContext) -> str:
    from components.models import canonical_alias, resolve_model

    if canonical_alias(ref) is None:
        path = ctx.resolve_path(ref)
        if path.exists():
            return str(path)
    return resolve_model(ref)


@component(
    "hard_negative_mining",
    params=MiningParams,
    inputs={"pairs": Input("pairs", description="(query, positive) training pairs"),
            "corpus": Input("corpus", description="the passages negatives are drawn from"),
            "model": Input("embedding_model", optional=True,
                           description="dense / hybrid: a trained embedder (e.g. embed_finetune's model) used "
                                       "instead of the `model` param, so negatives are what that model ranks high")},
    outputs={"triplets": "triplets", "ntuples": "ntuples", "labeled_pairs": "labeled_pairs", "stats": "mining_stats"},
    runs_as="task",
    version="1",
)
def hard_negative_mining(params: MiningParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """(query, positive) pairs + corpus -> triplets, FlagEmbedding n-tuples and labeled pairs with mined negatives.

    Queries are grouped by text: every passage paired with the same query is one of its positives and
    is never its negative, nor is a passage whose text equals a positive's (a duplicate under another
    id). mode hard ranks the corpus with the retriever (bm25, dense or hybrid), numbers the remaining
    candidates 1, 2, ... and takes ``negatives_per_query`` of those within ``rank_window`` that pass the
    false-negative filters (``max_score_ratio``, ``max_score_margin``, optional ``cross_encoder``);
    mode random draws them uniformly from the corpus (the baseline). Choices are seeded per query.

    Outputs: triplets.jsonl {query, positive, negative} (one row per positive x negative),
    ntuples.jsonl {query, pos: [..], neg: [..]} (one row per query), labeled_pairs.jsonl
    {query, doc, label} (1 for each positive, 0 for each negative). Positive and negative texts are
    corpus passages as ``title\\ntext``. A query for which no negative survives is left out of the
    triplets and n-tuples (both need a negative; FlagEmbedding fails on an empty neg list), keeps its
    label-1 rows in labeled_pairs, and is counted and listed in stats.json
    (queries_without_negative). stats/ also holds negatives.jsonl: per query, the chosen negatives'
    ids, ranks and scores and the candidates dropped by each filter (for auditing false negatives).
    """
    # Mining allocates millions of small objects next to the corpus's 100k+ rows; the cyclic GC's
    # full passes over them cost 15-25% of the time at 100k passages and find next to nothing to free.
    with _cyclic_gc_paused():
        _mine(params, inputs, ctx)


@contextmanager
def _cyclic_gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _mine(params: MiningParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    from components.retrieval import passage_text

    t0 = time.time()
    p = params
    if inputs.get("model") is not None and (p.mode != "hard" or p.retriever == "bm25"):
        raise ValueError(f"the `model` input is connected but retriever is {p.retriever} (mode {p.mode}): set "
                         "retriever: dense or hybrid to mine with that model, or disconnect it")
    seed = p.seed if p.seed is not None else ctx.seed
    ids, docs = _read_corpus(inputs["corpus"].main_file)
    groups, pair_counts = _group_pairs(inputs["pairs"].main_file, ids, docs, passage_text)
    t_read = time.time() - t0
    ctx.log(f"{pair_counts['pairs']} pairs, {len(groups)} distinct queries, corpus of {len(ids)} passages")
    if pair_counts.get("positives_not_in_corpus"):
        ctx.log(f"note: {pair_counts['positives_not_in_corpus']} positive(s) are not in the corpus; they are "
                f"still never taken as negatives (matched by text)")

    miner = Miner(p, ids, docs, seed, ctx, passage_text)
    t_index = 0.0
    model_ref: str | None = None  # the embedding model dense/hybrid mining uses
    if p.mode == "hard":
        t = time.time()
        if p.retriever != "bm25" and inputs.get("model") is not None:
            model_ref = str(inputs["model"].path)
            ctx.log(f"embedding model from the `model` input: {model_ref}")
        elif p.retriever != "bm25":
            model_ref = _resolve_model(p.model, ctx)
        ctx.log(f"indexing the corpus for {p.retriever} retrieval")
        miner.build_retriever(model_ref)
        if p.cross_encoder:
            from sentence_transformers import CrossEncoder

            miner.cross_encoder = CrossEncoder(_resolve_model(p.cross_encoder, ctx))
        t_index = time.time() - t
        ctx.log(f"indexed in {t_index:.1f}s ({miner.retriever.describe()})")

    stats_dir = ctx.output_dir("stats")
    files = {
        "triplets": ctx.output_dir("triplets") / "triplets.jsonl",
        "ntuples": ctx.output_dir("ntuples") / "ntuples.jsonl",
        "labeled_pairs": ctx.output_dir("labeled_pairs") / "labeled_pairs.jsonl",
        "negatives": stats_dir / "negatives.jsonl",
    }
    rows = Counter()
    per_query = Counter()
    rank_hist = Counter()
    without: list[dict[str, str]] = []
    short = 0
    neg_score_sum, neg_score_n = 0.0, 0

    handles = {name: open(path, "w", encoding="utf-8") for name, path in files.items()}

    def write(name: str, row: dict[str, Any] | str) -> None:
        """One JSONL row: a dict, or a line already encoded (with _json_str, json.dumps' layout)."""
        handles[name].write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
        rows[name] += 1

    t_mine = time.time()
    try:
        step = p.query_batch
        for start in range(0, len(groups), step):
            chunk = groups[start:start + step]
            if p.mode == "hard":
                results = miner.hard_negatives(chunk)
            else:
                results = [(miner.random_negatives(g), []) for g in chunk]
            for group, (negs, dropped) in zip(chunk, results):
                per_query[len(negs)] += 1
                neg_texts = [passage_text(docs[c.idx]) for c in negs]
                for c in negs:
                    if c.rank:
                        rank_hist[c.rank] += 1
                    if c.score is not None:
                        neg_score_sum += c.score
                        neg_score_n += 1
                if not negs:
                    without.append({"query_id": group.qid, "query": group.text})
                elif len(negs) < p.negatives_per_query:
                    short += 1
                # Each text is JSON-encoded once, then used in every row it appears in (3-4x faster
                # than json.dumps per row; the same bytes).
                query = _json_str(group.text)
                pos_js, neg_js = list(map(_json_str, group.pos_texts)), list(map(_json_str, neg_texts))
                if negs:
                    for pos in pos_js:
                        for neg in neg_js:
                            write("triplets", f'{{"query": {query}, "positive": {pos}, "negative": {neg}}}')
                    write("ntuples", f'{{"query": {query}, "pos": [{", ".join(pos_js)}], "neg": [{", ".join(neg_js)}]}}')
                for pos in pos_js:
                    write("labeled_pairs", f'{{"query": {query}, "doc": {pos}, "label": 1}}')
                for neg in neg_js:
                    write("labeled_pairs", f'{{"query": {query}, "doc": {neg}, "label": 0}}')
                write("negatives", {
                    "query_id": group.qid, "query": group.text, "positive_ids": group.pos_ids,
                    **({"positive_scores": [round(s, 6) for s in group.pos_scores]} if p.mode == "hard" else {}),
                    "negatives": [_cand_json(c, ids) for c in negs],
                    "dropped": [_cand_json(c, ids) for c in dropped],
                })
            done = min(start + step, len(groups))
            ctx.progress(done, len(groups))
    finally:
        for fh in handles.values():
            fh.close()

    pos_score_sum, pos_score_n = miner.pos_score_sum, miner.pos_score_n
    t_mine = time.time() - t_mine
    negatives_total = sum(k * v for k, v in per_query.items())
    filtered = {name: miner.filtered.get(name, 0)
                for name in ("duplicate_text", "max_score_ratio", "max_score_margin", "cross_encoder")}
    stats = {
        "mode": p.mode,
        "retriever": miner.retriever.describe() if miner.retriever is not None else None,
        "embedding_model": model_ref,
        "seed": seed,
        "corpus": len(ids),
        "pairs": pair_counts["pairs"],
        "queries": len(groups),
        "queries_with_negatives": len(groups) - len(without),
        "negatives_total": negatives_total,
        "negatives_per_query": {str(k): per_query[k] for k in sorted(per_query)},
        "queries_short_of_negatives": short,
        "queries_without_negative": {"count": len(without), "queries": without},
        "skipped_known_positives": miner.skipped_known_positives,
        "filtered_as_likely_positive": filtered,
        "rank_histogram": {str(k): rank_hist[k] for k in sorted(rank_hist)},
        "positives_not_in_corpus": pair_counts.get("positives_not_in_corpus", 0),
        "positives_matched_by_text": pair_counts.get("positives_matched_by_text", 0),
        "score_mean": {"positive": pos_score_sum / pos_score_n if pos_score_n else None,
                       "negative": neg_score_sum / neg_score_n if neg_score_n else None},
        "rows": {name: rows[name] for name in ("triplets", "ntuples", "labeled_pairs")},
        "time_s": {"read": round(t_read, 3), "index": round(t_index, 3), "mine": round(t_mine, 3),
                   "total": round(time.time() - t0, 3)},
        "params": p.model_dump(mode="json"),
    }
    (stats_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    if without:
        ctx.log(f"warning: {len(without)} of {len(groups)} queries got no negative (listed in stats.json); "
                f"they are left out of triplets and ntuples. Widen rank_window or relax the score filters.")
    ctx.log(f"mined {negatives_total} negatives for {len(groups) - len(without)}/{len(groups)} queries in "
            f"{t_mine:.1f}s; filtered as likely positives: "
            + ", ".join(f"{k} {v}" for k, v in filtered.items()))
    ctx.set_summary({
        "mode": p.mode,
        "retriever": p.retriever if p.mode == "hard" else None,
        "queries": len(groups),
        "negatives_total": negatives_total,
        "queries_without_negative": len(without),
        "queries_short_of_negatives": short,
        **{f"filtered/{k}": v for k, v in filtered.items()},
        "rows/triplets": rows["triplets"],
        "rows/ntuples": rows["ntuples"],
        "rows/labeled_pairs": rows["labeled_pairs"],
        "time_s": stats["time_s"]["total"],
    })


_json_str = json.JSONEncoder(ensure_ascii=False).encode  # a str as a JSON string literal, as json.dumps writes it


def _cand_json(c: Candidate, ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ids[c.idx]}
    if c.rank:
        out["rank"] = c.rank
    if c.score is not None:
        out["score"] = round(c.score, 6)
    if c.ce_score is not None:
        out["ce_score"] = round(c.ce_score, 6)
    if c.reason:
        out["reason"] = c.reason
    return out

