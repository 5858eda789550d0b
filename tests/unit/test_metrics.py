"""IR and QA metrics: hand-computed cases and a cross-check against sentence-transformers."""

from __future__ import annotations

import math
import random

import pytest

from components.metrics import (answer_tokens, exact_match, ir_metrics, ir_metrics_per_query, normalize_answer,
                                qa_metrics, token_f1)

L3, L5 = math.log2(3), math.log2(5)


def test_ir_metrics_hand_computed_single_query():
    qrels = {"q1": {"d1": 1, "d2": 1}}
    results = {"q1": [("d3", 0.9), ("d1", 0.8), ("d4", 0.7), ("d2", 0.6), ("d5", 0.1)]}
    m = ir_metrics(results, qrels, ks=(1, 3, 5))
    assert m["recall@1"] == 0 and m["recall@3"] == 0.5 and m["recall@5"] == 1
    assert m["precision@1"] == 0 and m["precision@3"] == pytest.approx(1 / 3) and m["precision@5"] == pytest.approx(2 / 5)
    assert m["hit@1"] == 0 and m["hit@3"] == 1
    assert m["mrr@1"] == 0 and m["mrr@3"] == 0.5 and m["mrr@5"] == 0.5
    idcg = 1 + 1 / L3
    assert m["ndcg@1"] == 0
    assert m["ndcg@3"] == pytest.approx((1 / L3) / idcg)
    assert m["ndcg@5"] == pytest.approx((1 / L3 + 1 / L5) / idcg)
    assert m["map@3"] == pytest.approx(0.5 / 2)  # precision 1/2 at rank 2, over min(3, 2) relevant
    assert m["map@5"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_ir_metrics_graded_ndcg_missing_and_unjudged_queries():
    qrels = {
        "q1": {"a": 2, "b": 1, "c": 0},  # graded
        "q2": {"x": 1},  # no results at all: counts as 0
        "q3": {"y": 0},  # no relevant document: not averaged
    }
    results = {"q1": [("b", 3.0), ("c", 2.0), ("a", 1.0)], "q9": [("x", 1.0)]}
    per = ir_metrics_per_query(results, qrels, ks=(3,))
    assert set(per) == {"q1", "q2"}
    dcg = 1 / 1 + 0 + 2 / math.log2(4)
    idcg = 2 / 1 + 1 / L3
    assert per["q1"]["ndcg@3"] == pytest.approx(dcg / idcg)
    assert per["q1"]["mrr@3"] == 1.0
    assert per["q1"]["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert all(v == 0 for v in per["q2"].values())
    m = ir_metrics(results, qrels, ks=(3,))
    assert m["ndcg@3"] == pytest.approx(dcg / idcg / 2)
    assert m["recall@3"] == pytest.approx(0.5)


def test_ir_metrics_sorts_by_score_and_counts_a_document_once():
    qrels = {"q": {"d1": 1}}
    unsorted = {"q": [("d2", 0.1), ("d1", 0.9), ("d1", 0.2)]}
    m = ir_metrics(unsorted, qrels, ks=(1, 2))
    assert m["mrr@1"] == 1.0 and m["precision@2"] == 0.5
    with pytest.raises(ValueError):
        ir_metrics(unsorted, qrels, ks=(0,))
    assert ir_metrics({}, {}, ks=(1,)) == {f"{n}@1": 0.0 for n in ("recall", "precision", "hit", "mrr", "ndcg", "map")}


def test_ir_metrics_match_sentence_transformers_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rng = random.Random(7)
    docs = [f"d{i}" for i in range(60)]
    queries = {f"q{i}": f"query {i}" for i in range(40)}
    relevant = {q: set(rng.sample(docs, rng.randint(1, 5))) for q in queries}
    results = {}
    for q in queries:
        hits = rng.sample(docs, 30)
        scores = sorted((rng.random() for _ in hits), reverse=True)
        results[q] = list(zip(hits, scores))
    ks = [1, 3, 5, 10]
    ev = InformationRetrievalEvaluator(queries=queries, corpus={d: d for d in docs}, relevant_docs=relevant,
                                       mrr_at_k=ks, ndcg_at_k=ks, accuracy_at_k=ks, precision_recall_at_k=ks,
                                       map_at_k=ks, write_csv=False)
    st = ev.compute_metrics([[{"corpus_id": d, "score": s} for d, s in results[q]] for q in ev.queries_ids])
    ours = ir_metrics(results, {q: {d: 1 for d in rel} for q, rel in relevant.items()}, ks=ks)
    for k in ks:
        assert ours[f"recall@{k}"] == pytest.approx(st["recall@k"][k])
        assert ours[f"precision@{k}"] == pytest.approx(st["precision@k"][k])
        assert ours[f"mrr@{k}"] == pytest.approx(st["mrr@k"][k])
        assert ours[f"ndcg@{k}"] == pytest.approx(st["ndcg@k"][k])
        assert ours[f"map@{k}"] == pytest.approx(st["map@k"][k])
        assert ours[f"hit@{k}"] == pytest.approx(st["accuracy@k"][k])


def test_normalize_answer_chinese_and_english():
    assert normalize_answer("《北京 大学》。") == "北京大学"
    assert normalize_answer("  The  Apple, Inc.! ") == "apple inc"
    assert normalize_answer("“１９９８年”") == "1998年"  # full-width digits and quotes
    assert normalize_answer("New   York") == "new york"


def test_answer_tokens_are_characters_for_cjk_and_words_otherwise():
    assert answer_tokens("北京大学") == ["北", "京", "大", "学"]
    assert answer_tokens("iPhone 6手机") == ["iphone", "6", "手", "机"]
    assert answer_tokens("New York City") == ["new", "york", "city"]


def test_exact_match_and_f1():
    assert exact_match("北京大学。", ["清华大学", "北京 大学"]) == 1.0
    assert exact_match("北京", ["北京大学"]) == 0.0
    assert token_f1("北京大学", ["北京"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("new york city", "york city") == pytest.approx(0.8)
    # The best gold counts.
    assert token_f1("北京", ["上海", "北京"]) == 1.0
    assert token_f1("", ["北京"]) == 0.0
    assert token_f1("。", ["！"]) == 1.0  # both empty after normalisation
    m = qa_metrics({"a": "北京", "b": "上海"}, {"a": ["北京"], "b": ["北京"], "c": ["x"]})
    assert m["exact_match"] == pytest.approx(1 / 3) and m["f1"] == pytest.approx(1 / 3) and m["count"] == 3
