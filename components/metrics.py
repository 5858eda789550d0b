"""Information-retrieval and extractive-QA metrics, in plain Python (no model, no framework).

IR (``ir_metrics``), for the queries that have at least one relevant document in ``qrels``
(relevance > 0), averaged over those queries; a query missing from ``results`` scores 0:

- ``recall@k``: relevant documents in the top k / all relevant documents of the query;
- ``precision@k``: relevant documents in the top k / k;
- ``hit@k``: 1 if any relevant document is in the top k (sentence-transformers' accuracy@k);
- ``mrr@k``: 1 / rank of the first relevant document in the top k (0 if none);
- ``ndcg@k``: graded gain ``rel`` with a log2(rank + 1) discount, divided by the DCG of the ideal
  ranking of the query's qrels;
- ``map@k``: the sum of precision@rank at each relevant rank <= k, divided by
  min(k, number of relevant documents).

These are the definitions of sentence-transformers' InformationRetrievalEvaluator (which uses
binary relevance for nDCG; here nDCG uses the graded qrels, identical on binary qrels) and of
pytrec_eval for recall/precision/MRR. Results are sorted by score first (stable: tied
documents keep the order given); a document listed twice counts once, at its best rank.

QA: ``normalize_answer`` (lowercase; drop punctuation, including Chinese punctuation, and
whitespace; drop English articles), ``exact_match`` and ``token_f1`` where tokens are characters
for CJK text and words otherwise (the CMRC2018 convention), the best over the gold answers.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Iterable, Mapping, Sequence

__all__ = ["ir_metrics", "ir_metrics_per_query", "normalize_answer", "exact_match", "token_f1",
           "qa_metrics", "answer_tokens"]

DEFAULT_KS = (1, 3, 5, 10)
IR_METRICS = ("recall", "precision", "hit", "mrr", "ndcg", "map")


def _ranked(hits: Sequence) -> list[str]:
    """Doc ids best first: by score descending; ties keep the given order."""
    items = []
    for h in hits:
        if isinstance(h, (tuple, list)):
            items.append((str(h[0]), float(h[1]) if len(h) > 1 else 0.0))
        else:
            items.append((str(h), 0.0))
    items.sort(key=lambda x: -x[1])  # stable: tied documents keep the retriever's order
    seen, out = set(), []
    for doc, _ in items:  # a document counts once, at its best rank
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def _query_metrics(ranked: list[str], rel: Mapping[str, int], ks: Sequence[int]) -> dict[str, float]:
    relevant = {d for d, r in rel.items() if r > 0}
    n_rel = len(relevant)
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)
    flags = [d in relevant for d in ranked]
    out: dict[str, float] = {}
    for k in ks:
        top = flags[:k]
        found = sum(top)
        out[f"recall@{k}"] = found / n_rel
        out[f"precision@{k}"] = found / k
        out[f"hit@{k}"] = 1.0 if found else 0.0
        first = next((i for i, f in enumerate(top) if f), None)
        out[f"mrr@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
        idcg = _dcg(ideal[:k])
        out[f"ndcg@{k}"] = _dcg([max(rel.get(d, 0), 0) for d in ranked[:k]]) / idcg if idcg > 0 else 0.0
        hits, ap = 0, 0.0
        for i, f in enumerate(top):
            if f:
                hits += 1
                ap += hits / (i + 1)
        out[f"map@{k}"] = ap / min(k, n_rel)
    return out


def ir_metrics_per_query(results: Mapping[str, Sequence], qrels: Mapping[str, Mapping[str, int]],
                         ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """``{qid: {metric@k: value}}`` for every query of ``qrels`` with a relevant document."""
    ks = _check_ks(ks)
    out = {}
    for qid, rel in qrels.items():
        if not any(r > 0 for r in rel.values()):
            continue
        ranked = _ranked(results.get(qid, ()))
        out[qid] = _query_metrics(ranked, rel, ks)
    return out


def ir_metrics(results: Mapping[str, Sequence], qrels: Mapping[str, Mapping[str, int]],
               ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean ``recall@k``, ``precision@k``, ``hit@k``, ``mrr@k``, ``ndcg@k``, ``map@k`` over the
    queries of ``qrels`` that have a relevant document (``results``: qid -> [(doc_id, score)])."""
    ks = _check_ks(ks)
    per = ir_metrics_per_query(results, qrels, ks)
    keys = [f"{m}@{k}" for m in IR_METRICS for k in ks]
    if not per:
        return {key: 0.0 for key in keys}
    return {key: sum(q[key] for q in per.values()) / len(per) for key in keys}


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


# ---------------------------------------------------------------------------------------------
# QA
# ---------------------------------------------------------------------------------------------

_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# ASCII punctuation plus common Chinese / full-width punctuation (NFKC folds most full-width forms).
_EXTRA_PUNCT = set("，。、；：？！…—·「」『』《》〈〉【】〔〕（）“”‘’﹏～￥％＃＠＆×÷")


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or ch in _EXTRA_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Lowercase, NFKC, no punctuation (ASCII and Chinese), no English articles, no whitespace
    between CJK characters, single spaces between words."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = "".join(" " if _is_punct(ch) else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    words = text.split()
    # Join with spaces only between two non-CJK words: "北京 大学" == "北京大学", "new york" stays.
    out = ""
    for w in words:
        if out and not (_CJK.search(out[-1]) or _CJK.search(w[0])):
            out += " "
        out += w
    return out


def answer_tokens(text: str) -> list[str]:
    """Tokens of a normalised answer: each CJK character alone, other text as words."""
    tokens: list[str] = []
    for word in normalize_answer(text).split():
        buf = ""
        for ch in word:
            if _CJK.match(ch):
                if buf:
                    tokens.append(buf)
                    buf = ""
                tokens.append(ch)
            else:
                buf += ch
        if buf:
            tokens.append(buf)
    return tokens


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def exact_match(pred: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    p = normalize_answer(pred)
    return 1.0 if any(p == normalize_answer(g) for g in _golds(golds)) else 0.0


def token_f1(pred: str, golds: str | Sequence[str]) -> float:
    """Best token F1 over the gold answers (characters for CJK, words otherwise)."""
    p_tokens = answer_tokens(pred)
    best = 0.0
    for gold in _golds(golds):
        g_tokens = answer_tokens(gold)
        if not p_tokens or not g_tokens:
            best = max(best, 1.0 if p_tokens == g_tokens else 0.0)
            continue
        common = sum((Counter(p_tokens) & Counter(g_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(p_tokens), common / len(g_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def qa_metrics(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` over the questions of ``answers`` (missing predictions score 0)."""
    qids = [q for q, golds in answers.items() if _golds(golds)]
    if not qids:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    em = sum(exact_match(predictions.get(q, ""), answers[q]) if q in predictions else 0.0 for q in qids)
    f1 = sum(token_f1(predictions.get(q, ""), answers[q]) if q in predictions else 0.0 for q in qids)
    return {"exact_match": em / len(qids), "f1": f1 / len(qids), "count": len(qids)}
