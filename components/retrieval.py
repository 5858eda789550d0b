"""Retrieval primitives shared by hard-negative mining, evaluation and serving.

- ``BM25Retriever``: lexical retrieval with bm25s; Chinese is tokenised with jieba words (or
  character unigrams + bigrams), other text with lowercased regex words and a light stemmer.
- ``DenseRetriever``: a SentenceTransformer and a FAISS inner-product index over normalised
  vectors (cosine); exact (flat) by default, IVF or HNSW as approximate options. Queries are
  searched in batches, so memory stays bounded: never a full queries x corpus score matrix.
- ``HybridRetriever``: reciprocal-rank fusion of several retrievers.

Every retriever has ``index(doc_ids, texts)``, ``search(queries, k, query_batch=...)`` returning,
per query, ``[(doc_id, score), ...]`` best first, and ``score(queries, doc_ids)``: the retriever's
similarity of given (query, document) pairs (used by the false-negative filters of mining).

``passage_text`` is how a corpus row becomes the text that is indexed, embedded and trained on,
everywhere: ``"title\\ntext"`` when the row has a title, else ``text``.

Only the standard library is imported at module level: numpy, faiss, torch, bm25s, jieba and
sentence-transformers are imported where they are used (``orch validate`` imports components).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

Hits = list[tuple[str, float]]

__all__ = [
    "load_model", "encode", "encode_distributed", "DenseRetriever", "BM25Retriever", "HybridRetriever",
    "make_retriever", "load_beir", "load_ir_set", "passage_text", "tokenize", "detect_language", "has_cjk",
]


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------


def passage_text(doc: dict[str, Any] | str) -> str:
    """The text of a corpus row as indexed, embedded and trained on: ``title\\ntext`` or ``text``."""
    if isinstance(doc, str):
        return doc
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    if title and text:
        return f"{title}\n{text}"
    return title or text


# CJK Unified Ideographs (+ extension A, compatibility ideographs), kana and hangul.
_CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_CJK_RANGES}]")
_CJK_RUN = re.compile(f"[{_CJK_RANGES}]+")
_WORD = re.compile(r"\w+", re.UNICODE)


def has_cjk(text: str) -> bool:
    return _CJK_CHAR.search(text) is not None


def detect_language(texts: Iterable[str], sample: int = 2000) -> str:
    """``"zh"`` when at least 10% of the letters of (a sample of) ``texts`` are CJK, else ``"en"``."""
    cjk = letters = 0
    for i, text in enumerate(texts):
        if i >= sample:
            break
        for ch in text:
            if ch.isalnum():
                letters += 1
                if _CJK_CHAR.match(ch):
                    cjk += 1
    return "zh" if letters and cjk / letters >= 0.1 else "en"


_EN_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with what which who whom when where why how do does did from has have had i you he "
    "she we me my your our its his her them than so can".split())


def simple_stem(word: str) -> str:
    """A small suffix stripper for English (plural, -ing, -ed, -ly, ...); enough to merge inflections."""
    if len(word) <= 3 or not word.isascii():
        return word
    for suffix, repl, min_stem in (("ational", "ate", 3), ("ization", "ize", 3), ("fulness", "ful", 3),
                                   ("iveness", "ive", 3), ("ousness", "ous", 3), ("ies", "y", 2),
                                   ("sses", "ss", 2), ("ing", "", 3), ("edly", "", 3), ("ed", "", 3),
                                   ("ly", "", 3), ("es", "", 3), ("s", "", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= min_stem:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            stem = word[: len(word) - len(suffix)] + repl
            # running -> run, stopped -> stop
            if repl == "" and suffix in ("ing", "ed") and len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]
            return stem
    return word


_JIEBA_READY = False


def _jieba():
    global _JIEBA_READY
    import jieba

    if not _JIEBA_READY:
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _JIEBA_READY = True
    return jieba


def tokenize(text: str, tokenizer: str, *, stem: bool = False, stopwords: bool = False) -> list[str]:
    """Tokens of ``text`` for BM25.

    - ``jieba``: jieba words (precise mode), lowercased; punctuation and whitespace dropped.
    - ``char_bigram``: CJK runs become character unigrams + bigrams; other runs regex words.
    - ``regex``: lowercased ``\\w+`` words, optionally stemmed and without English stopwords.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    if tokenizer == "jieba":
        tokens = [t for t in _jieba().lcut(text) if _WORD.search(t)]
        tokens = [t.strip() for t in tokens]
        if stem:
            tokens = [simple_stem(t) for t in tokens]
        return [t for t in tokens if t and not (stopwords and t in _EN_STOPWORDS)]
    if tokenizer == "char_bigram":
        tokens: list[str] = []
        for match in re.finditer(f"[{_CJK_RANGES}]+|(?:(?![{_CJK_RANGES}])\\w)+", text):
            run = match.group(0)
            if _CJK_CHAR.match(run[0]):
                tokens.extend(run)
                tokens.extend(run[i:i + 2] for i in range(len(run) - 1))
            elif not (stopwords and run in _EN_STOPWORDS):
                tokens.append(simple_stem(run) if stem else run)
        return tokens
    if tokenizer == "regex":
        words = _WORD.findall(text)
        if stopwords:
            words = [w for w in words if w not in _EN_STOPWORDS]
        return [simple_stem(w) for w in words] if stem else words
    raise ValueError(f"unknown tokenizer {tokenizer!r} (jieba, char_bigram, regex)")


# ---------------------------------------------------------------------------------------------
# Models and encoding
# ---------------------------------------------------------------------------------------------


def load_model(ref: str, recipe_dir: str | Path | None = None, *, device: str | None = None):
    """A SentenceTransformer for ``ref`` (alias such as ``minilm``, local folder, or hub id)."""
    from sentence_transformers import SentenceTransformer

    from components.models import resolve_model

    path = resolve_model(ref, Path(recipe_dir) if recipe_dir is not None else None)
    return SentenceTransformer(path, device=device)


# Encoding batch on a CPU: measured with MiniLM on the CMRC2018 passages (seq <= 256), batch 16
# encodes as fast as 64 (3.9-4.0 s vs 4.1-4.4 s for 150 passages; short queries 0.57 s vs 0.63 s)
# with a third of the extra memory (+179 MiB vs +486-541 MiB): a CPU gains nothing from wider
# batches, while the attention activations grow with them. On a GPU wider batches pay.
CPU_BATCH_SIZE = 16
ACCELERATOR_BATCH_SIZE = 64


def batch_size_for(model, batch_size: int | None) -> int:
    """``batch_size``, or when None the default for the device ``model`` runs on (CPU: 16, GPU: 64)."""
    if batch_size is not None:
        return batch_size
    device = str(getattr(model, "device", "cpu"))
    return CPU_BATCH_SIZE if device.startswith("cpu") else ACCELERATOR_BATCH_SIZE


def encode(model, texts: Sequence[str], *, batch_size: int | None = None, prompt: str | None = None,
           normalize: bool = True):
    """Embeddings of ``texts`` as a float32 array (n, dim), L2-normalised unless ``normalize=False``.

    ``batch_size`` None: the model's device's default (batch_size_for)."""
    import numpy as np

    texts = list(texts)
    batch_size = batch_size_for(model, batch_size)
    if not texts:
        getter = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension")
        return np.zeros((0, getter() or 0), dtype=np.float32)
    kwargs: dict[str, Any] = dict(batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=normalize,
                                  show_progress_bar=False)
    if prompt:
        kwargs["prompt"] = prompt
    out = model.encode(texts, **kwargs)
    return np.ascontiguousarray(out, dtype=np.float32)


class _EncodeActor:
    """Ray Data actor: loads the model once, then embeds batches of ``{"text": [...]}``."""

    def __init__(self, model_ref: str, recipe_dir: str | None, batch_size: int | None, prompt: str | None,
                 normalize: bool):
        self.model = load_model(model_ref, recipe_dir)
        self.batch_size, self.prompt, self.normalize = batch_size, prompt, normalize

    def __call__(self, batch: dict) -> dict:
        emb = encode(self.model, [str(t) for t in batch["text"]], batch_size=self.batch_size, prompt=self.prompt,
                     normalize=self.normalize)
        return {"i": batch["i"], "embedding": emb}


def encode_distributed(model_ref: str, texts: Sequence[str], *, num_workers: int = 1, batch_size: int | None = None,
                       prompt: str | None = None, normalize: bool = True, recipe_dir: str | Path | None = None,
                       num_cpus_per_worker: float = 1, num_gpus_per_worker: float = 0, model=None):
    """Embed ``texts`` with ``num_workers`` Ray Data actors (one model each), in the input order.

    Uses Ray only when ``num_workers > 1`` and Ray is already initialised (the orchestrator's
    cluster); otherwise it encodes in this process (with ``model`` when given, else loading
    ``model_ref``).
    """
    import numpy as np

    ray = None
    if num_workers > 1:
        try:
            import ray as _ray

            ray = _ray if _ray.is_initialized() else None
        except ImportError:  # pragma: no cover - ray is a dependency
            ray = None
    if ray is None:
        model = model if model is not None else load_model(model_ref, recipe_dir)
        return encode(model, texts, batch_size=batch_size, prompt=prompt, normalize=normalize)

    import ray.data

    texts = list(texts)
    # Texts per Ray Data batch: a few of the model's batches (the actors pick that per device).
    block = ACCELERATOR_BATCH_SIZE if batch_size is None else batch_size
    ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)],
                             override_num_blocks=max(num_workers, min(len(texts) // max(block, 1), num_workers * 4)))
    ds = ds.map_batches(
        _EncodeActor,
        fn_constructor_kwargs=dict(model_ref=model_ref, recipe_dir=str(recipe_dir) if recipe_dir else None,
                                   batch_size=batch_size, prompt=prompt, normalize=normalize),
        batch_size=max(block * 4, 1), batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker)
    out: np.ndarray | None = None
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        emb = np.asarray(batch["embedding"], dtype=np.float32)
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[np.asarray(batch["i"], dtype=np.int64)] = emb
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Retrievers
# ---------------------------------------------------------------------------------------------


def _check_index_input(doc_ids: Sequence[str], texts: Sequence[str] | None = None) -> list[str]:
    ids = [str(d) for d in doc_ids]
    if texts is not None and len(ids) != len(texts):
        raise ValueError(f"index: {len(ids)} doc ids but {len(texts)} texts")
    if len(set(ids)) != len(ids):
        raise ValueError("index: doc ids must be unique")
    return ids


def _top_k(scores, k: int, *, positive_only: bool = False) -> Hits:
    """Indices and scores of the ``k`` best of a 1-d score array, best first; ties by index.

    ``positive_only``: only scores > 0 (BM25: documents sharing a token with the query)."""
    import numpy as np

    pool = np.flatnonzero(scores > 0) if positive_only else None
    sub = scores if pool is None else scores[pool]
    k = min(k, sub.shape[0])
    if k <= 0:
        return []
    if k < sub.shape[0]:
        part = np.argpartition(-sub, k - 1)[:k]
        # Include every index tied with the k-th score so that the tie-break by index is exact.
        ties = np.flatnonzero(sub == sub[part].min())
        if ties.size > 1:
            part = np.union1d(part, ties)
    else:
        part = np.arange(sub.shape[0])
    order = np.lexsort((part, -sub[part]))[:k]
    idx = part[order]
    vals = sub[idx]
    if pool is not None:
        idx = pool[idx]  # pool is ascending, so the tie order is the corpus order
    return list(zip(idx.tolist(), vals.tolist()))


class BM25Retriever:
    """BM25 (Lucene variant, via bm25s) over tokenised passages.

    ``language="auto"`` picks Chinese when at least 10% of the corpus letters are CJK.
    ``tokenizer="auto"`` means jieba for Chinese and regex words (stemmed, English stopwords
    removed) otherwise. Documents sharing no token with a query are not returned (score 0).
    """

    def __init__(self, *, language: str = "auto", tokenizer: str = "auto", k1: float = 1.5, b: float = 0.75,
                 stem: bool | None = None, stopwords: bool | None = None):
        if language not in ("auto", "zh", "en"):
            raise ValueError(f"language must be auto, zh or en, got {language!r}")
        if tokenizer not in ("auto", "jieba", "char_bigram", "regex"):
            raise ValueError(f"tokenizer must be auto, jieba, char_bigram or regex, got {tokenizer!r}")
        self.language, self.tokenizer_name = language, tokenizer
        self.k1, self.b = k1, b
        self._stem, self._stopwords = stem, stopwords
        self.doc_ids: list[str] = []
        self._bm25 = None
        # The last search()'s hits, {query: {doc_id: score}}: score() right after search() on the
        # same queries (as mining does) reuses them instead of scoring the corpus again.
        self._last: dict[str, dict[str, float]] = {}

    # -- tokenisation ---------------------------------------------------------------------------
    def _resolve(self, texts: Sequence[str]) -> None:
        lang = self.language if self.language != "auto" else detect_language(texts)
        self.resolved_language = lang
        if self.tokenizer_name == "auto":
            self.resolved_tokenizer = "jieba" if lang == "zh" else "regex"
        else:
            self.resolved_tokenizer = self.tokenizer_name
        english = lang == "en"
        self.stem = self._stem if self._stem is not None else english
        self.stopwords = self._stopwords if self._stopwords is not None else english

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.resolved_tokenizer, stem=self.stem, stopwords=self.stopwords)

    # -- index / search ---------------------------------------------------------------------------
    def index(self, doc_ids: Sequence[str], texts: Sequence[str]) -> "BM25Retriever":
        import bm25s

        self.doc_ids = _check_index_input(doc_ids, texts)
        self._resolve(texts)
        # Token ids as we go: a list of shared ints per document is several times smaller than the
        # token strings (which is what bounds the corpus size BM25 can index in memory).
        vocab: dict[str, int] = {}
        corpus_ids = [[vocab.setdefault(tok, len(vocab)) for tok in self.tokenize(t)] for t in texts]
        if not vocab:
            vocab[""] = 0
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b)
        self._bm25.index((corpus_ids, vocab), show_progress=False)
        self._last = {}
        self._pos = None
        return self

    def _scores(self, query: str):
        import numpy as np

        tokens = [t for t in self.tokenize(query) if t in self._bm25.vocab_dict]
        if not tokens:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return self._bm25.get_scores(tokens)

    def _require_index(self) -> None:
        if self._bm25 is None:
            raise RuntimeError("BM25Retriever: call index() before search()")

    def search(self, queries: Sequence[str], k: int, *, query_batch: int = 2048) -> list[Hits]:
        """Top ``k`` documents per query (score > 0), best first. Memory: one score vector at a time."""
        self._require_index()
        out: list[Hits] = []
        for q in queries:
            scores = self._scores(q)
            out.append([(self.doc_ids[i], s) for i, s in _top_k(scores, k, positive_only=True)])
        # Bounded: a large evaluation search keeps no cache.
        self._last = {q: dict(h) for q, h in zip(queries, out)} if len(out) * k <= 200_000 else {}
        return out

    def score(self, queries: Sequence[str], doc_ids: Sequence[Sequence[str]]) -> list[list[float]]:
        """BM25 score of each query against each of its listed documents."""
        self._require_index()
        pos = self._positions()
        out = []
        for q, ids in zip(queries, doc_ids):
            cached = self._last.get(q)
            if cached is not None and all(d in cached for d in ids):
                out.append([float(cached[d]) for d in ids])
                continue
            scores = self._scores(q)
            out.append([float(scores[pos[d]]) if d in pos else 0.0 for d in ids])
        return out

    def _positions(self) -> dict[str, int]:
        if getattr(self, "_pos", None) is None or len(self._pos) != len(self.doc_ids):
            self._pos = {d: i for i, d in enumerate(self.doc_ids)}
        return self._pos

    def describe(self) -> dict[str, Any]:
        return {"name": "bm25", "language": getattr(self, "resolved_language", self.language),
                "tokenizer": getattr(self, "resolved_tokenizer", self.tokenizer_name), "k1": self.k1, "b": self.b}


class DenseRetriever:
    """Embeddings + a FAISS inner-product index over L2-normalised vectors (cosine similarity).

    ``index="flat"`` is exact; ``"ivf"`` clusters into ~sqrt(n) lists and probes ``nprobe`` of
    them; ``"hnsw"`` is a graph index (``hnsw_m`` links, ``ef_search``). Queries are embedded and
    searched ``query_batch`` at a time.
    """

    def __init__(self, model, *, query_prompt: str | None = None, passage_prompt: str | None = None,
                 index: str = "flat", batch_size: int | None = None, nprobe: int = 16, nlist: int | None = None,
                 hnsw_m: int = 32, ef_search: int = 128, recipe_dir: str | Path | None = None):
        if index not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"index must be flat, ivf or hnsw, got {index!r}")
        if isinstance(model, (str, Path)):
            model = load_model(str(model), recipe_dir)
        self.model = model
        self.query_prompt, self.passage_prompt = query_prompt or None, passage_prompt or None
        self.index_type, self.batch_size = index, batch_size
        self.nprobe, self.nlist, self.hnsw_m, self.ef_search = nprobe, nlist, hnsw_m, ef_search
        self.doc_ids: list[str] = []
        self.doc_embeddings = None
        self._faiss = None
        self._pos: dict[str, int] = {}
        # The last embedded batch, {query: row}: score() after search() on (some of) the same
        # queries, as mining does, reuses the embeddings instead of encoding again.
        self._cache: tuple[dict[str, int], Any] | None = None

    def embed_queries(self, queries: Sequence[str]):
        return encode(self.model, list(queries), batch_size=self.batch_size, prompt=self.query_prompt)

    def embed_passages(self, texts: Sequence[str]):
        return encode(self.model, list(texts), batch_size=self.batch_size, prompt=self.passage_prompt)

    def index(self, doc_ids: Sequence[str], texts: Sequence[str]) -> "DenseRetriever":
        ids = _check_index_input(doc_ids, texts)
        return self.index_embeddings(ids, self.embed_passages(texts), copy=False)

    def index_embeddings(self, doc_ids: Sequence[str], embeddings, *, copy: bool = True) -> "DenseRetriever":
        """Index precomputed passage embeddings (normalised here).

        ``copy=False`` lets the retriever normalise and keep ``embeddings`` itself when it is a
        C-contiguous float32 array (no second corpus-sized copy); the caller must not use it after."""
        import faiss
        import numpy as np

        ids = _check_index_input(doc_ids)
        # Normalised in place below.
        emb = np.array(embeddings, dtype=np.float32, order="C", copy=True if copy else None)
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise ValueError(f"index_embeddings: expected ({len(ids)}, dim) embeddings, got {emb.shape}")
        faiss.normalize_L2(emb)
        n, dim = emb.shape
        if self.index_type == "ivf" and n >= 2:
            # ~sqrt(n) lists, but at least 39 training points per list (FAISS's minimum).
            nlist = self.nlist or max(1, min(int(round(math.sqrt(n))), n // 39))
            nlist = max(1, min(nlist, n))
            quantizer = faiss.IndexFlatIP(dim)
            idx = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            idx.cp.seed = 1234
            idx.train(emb)
            idx.nprobe = max(1, min(self.nprobe, nlist))
        elif self.index_type == "hnsw":
            idx = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efSearch = self.ef_search
        else:
            idx = faiss.IndexFlatIP(dim)
        if n:
            idx.add(emb)
        self.doc_ids, self.doc_embeddings, self._faiss = ids, emb, idx
        self._pos = {d: i for i, d in enumerate(ids)}
        self._cache = None
        return self

    def _require_index(self) -> None:
        if self._faiss is None:
            raise RuntimeError("DenseRetriever: call index() before search()")

    def _query_embeddings(self, queries: Sequence[str]):
        queries = list(queries)
        if self._cache is not None and all(q in self._cache[0] for q in queries):
            rows, emb = self._cache
            return emb[[rows[q] for q in queries]] if queries else emb[:0]
        emb = self.embed_queries(queries)
        self._cache = ({q: i for i, q in enumerate(queries)}, emb)
        return emb

    def search_embeddings(self, query_embeddings, k: int) -> list[Hits]:
        """Top ``k`` documents for already-embedded (normalised) queries."""
        import numpy as np

        self._require_index()
        q = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        k_eff = min(k, len(self.doc_ids))
        if k_eff <= 0 or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])]
        if self.index_type == "hnsw":
            self._faiss.hnsw.efSearch = max(self.ef_search, k_eff)
        scores, idx = self._faiss.search(q, k_eff)
        # Best first, ties by corpus position (deterministic); -1 marks a slot FAISS could not fill.
        order = np.lexsort((idx, -scores), axis=1)
        scores = np.take_along_axis(scores, order, axis=1).tolist()
        idx = np.take_along_axis(idx, order, axis=1).tolist()
        ids = self.doc_ids
        return [[(ids[i], s) for i, s in zip(row_i, row_s) if i >= 0] for row_s, row_i in zip(scores, idx)]

    def search(self, queries: Sequence[str], k: int, *, query_batch: int = 2048) -> list[Hits]:
        """Top ``k`` documents per query by cosine, best first; ``query_batch`` queries at a time.

        Memory per batch: the batch's embeddings and ``query_batch x k`` hits (FAISS computes the
        scores block by block, never a full queries x corpus matrix). FAISS is several times faster
        on batches of thousands of queries than of hundreds."""
        self._require_index()
        queries = list(queries)
        out: list[Hits] = []
        for start in range(0, len(queries), max(1, query_batch)):
            batch = queries[start:start + max(1, query_batch)]
            out.extend(self.search_embeddings(self._query_embeddings(batch), k))
        return out

    def score(self, queries: Sequence[str], doc_ids: Sequence[Sequence[str]]) -> list[list[float]]:
        """Cosine of each query with each of its listed documents (0.0 for unknown ids)."""
        import numpy as np

        self._require_index()
        q = self._query_embeddings(list(queries))
        out = []
        for row, ids in zip(q, doc_ids):
            idx = [self._pos.get(d, -1) for d in ids]
            known = [i for i in idx if i >= 0]
            sims = self.doc_embeddings[known] @ row if known else np.zeros(0, dtype=np.float32)
            it = iter(sims.tolist())
            out.append([next(it) if i >= 0 else 0.0 for i in idx])
        return out

    def describe(self) -> dict[str, Any]:
        name = getattr(self.model, "model_card_data", None)
        return {"name": "dense", "index": self.index_type, "model": str(getattr(name, "base_model", "") or ""),
                "query_prompt": self.query_prompt, "passage_prompt": self.passage_prompt}


class HybridRetriever:
    """Reciprocal-rank fusion: score(d) = sum_i w_i / (rrf_k + rank_i(d)), over each retriever's
    top ``candidates`` (rank 1-based; a document missing from a list adds nothing).

    ``score()`` (the similarity used by score thresholds) delegates to the first dense retriever,
    or to the first retriever when none is dense: fused RRF values are not comparable to a
    threshold.
    """

    def __init__(self, retrievers: list, *, weights: Sequence[float] | None = None, rrf_k: int = 60,
                 candidates: int = 100):
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        weights = list(weights) if weights is not None else [1.0] * len(retrievers)
        if len(weights) != len(retrievers):
            raise ValueError(f"{len(weights)} weights for {len(retrievers)} retrievers")
        self.retrievers, self.weights = list(retrievers), [float(w) for w in weights]
        self.rrf_k, self.candidates = rrf_k, candidates
        dense = [r for r in self.retrievers if isinstance(r, DenseRetriever)]
        self.scorer = dense[0] if dense else self.retrievers[0]

    @property
    def doc_ids(self) -> list[str]:
        return self.retrievers[0].doc_ids

    def index(self, doc_ids: Sequence[str], texts: Sequence[str]) -> "HybridRetriever":
        for r in self.retrievers:
            r.index(doc_ids, texts)
        return self

    def search(self, queries: Sequence[str], k: int, *, query_batch: int = 2048) -> list[Hits]:
        queries = list(queries)
        depth = max(k, self.candidates)
        out: list[Hits] = []
        for start in range(0, len(queries), max(1, query_batch)):
            batch = queries[start:start + max(1, query_batch)]
            per = [r.search(batch, depth, query_batch=query_batch) for r in self.retrievers]
            for qi in range(len(batch)):
                fused: dict[str, float] = {}
                first_seen: dict[str, tuple[int, int]] = {}
                for ri, (w, lists) in enumerate(zip(self.weights, per)):
                    for rank, (doc, _) in enumerate(lists[qi], start=1):
                        fused[doc] = fused.get(doc, 0.0) + w / (self.rrf_k + rank)
                        first_seen.setdefault(doc, (rank, ri))
                ranked = sorted(fused.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))
                out.append(ranked[:k])
        return out

    def score(self, queries: Sequence[str], doc_ids: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.scorer.score(queries, doc_ids)

    def describe(self) -> dict[str, Any]:
        return {"name": "hybrid", "rrf_k": self.rrf_k, "candidates": self.candidates, "weights": self.weights,
                "retrievers": [r.describe() for r in self.retrievers]}


_BM25_KEYS = {"language", "tokenizer", "k1", "b", "stem", "stopwords"}
_DENSE_KEYS = {"query_prompt", "passage_prompt", "index", "batch_size", "nprobe", "nlist", "hnsw_m", "ef_search",
               "recipe_dir"}
_HYBRID_KEYS = {"weights", "rrf_k", "candidates"}


def make_retriever(name: str, model=None, **opts):
    """``bm25``, ``dense`` or ``hybrid`` (BM25 + dense, fused by RRF) with the options each takes.

    For ``hybrid``, BM25 options (language, tokenizer, k1, b, ...), dense options (query_prompt,
    passage_prompt, index, batch_size, ...) and fusion options (weights, rrf_k, candidates) may be
    mixed; ``bm25={...}`` / ``dense={...}`` pass them explicitly. ``model`` is a loaded
    SentenceTransformer or a model reference.
    """
    if name == "bm25":
        return BM25Retriever(**opts)
    if name == "dense":
        if model is None:
            raise ValueError("make_retriever('dense') needs a model")
        return DenseRetriever(model, **opts)
    if name == "hybrid":
        if model is None:
            raise ValueError("make_retriever('hybrid') needs a model")
        bm25_opts = dict(opts.pop("bm25", None) or {})
        dense_opts = dict(opts.pop("dense", None) or {})
        fusion = {}
        for key, value in opts.items():
            if key in _BM25_KEYS:
                bm25_opts[key] = value
            elif key in _DENSE_KEYS:
                dense_opts[key] = value
            elif key in _HYBRID_KEYS:
                fusion[key] = value
            else:
                raise TypeError(f"make_retriever('hybrid'): unknown option {key!r}")
        return HybridRetriever([BM25Retriever(**bm25_opts), DenseRetriever(model, **dense_opts)], **fusion)
    raise ValueError(f"unknown retriever {name!r} (bm25, dense, hybrid)")


# ---------------------------------------------------------------------------------------------
# BEIR folders
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_beir(folder: str | Path):
    """(corpus, queries, qrels, answers) of a BEIR folder.

    corpus: {doc_id: {"title", "text"}}; queries: {qid: text}; qrels: {qid: {doc_id: int score}}
    from ``qrels.tsv`` (or ``qrels/test.tsv``); answers: {qid: [answers]} from ``answers.jsonl``
    when present, else {}.
    """
    folder = Path(folder)
    corpus = {str(row["_id"]): {"title": row.get("title") or "", "text": row.get("text") or ""}
              for row in _read_jsonl(folder / "corpus.jsonl")}
    queries = {str(row["_id"]): row.get("text") or "" for row in _read_jsonl(folder / "queries.jsonl")}
    qrels_path = folder / "qrels.tsv"
    if not qrels_path.exists():
        candidates = sorted((folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        preferred = [p for p in candidates if p.stem == "test"]
        qrels_path = (preferred or candidates or [qrels_path])[0]
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for i, row in enumerate(reader):
            if not row or (i == 0 and row[0].strip().lower() in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise ValueError(f"{qrels_path}:{i + 1}: expected query-id, corpus-id, score")
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = int(float(row[2]))
    answers: dict[str, list[str]] = {}
    if (folder / "answers.jsonl").exists():
        for row in _read_jsonl(folder / "answers.jsonl"):
            value = row.get("answers") or []
            answers[str(row["_id"])] = [value] if isinstance(value, str) else [str(a) for a in value]
    return corpus, queries, qrels, answers


def load_ir_set(folder: str | Path, max_queries: int | None = None):
    """(corpus {id: passage_text}, queries {id: text}, qrels {qid: {doc_id: score > 0}}) of a BEIR folder, for
    evaluation: only queries with a positive, in file order, at most ``max_queries`` of them."""
    corpus_rows, queries, qrels, _ = load_beir(folder)
    corpus = {doc_id: passage_text(row) for doc_id, row in corpus_rows.items()}
    qrels = {q: rel for q, rel in ((q, {d: s for d, s in r.items() if s > 0}) for q, r in qrels.items()) if rel}
    queries = {q: t for q, t in queries.items() if q in qrels}
    if max_queries:
        queries = dict(list(queries.items())[:max_queries])
    return corpus, queries, qrels
