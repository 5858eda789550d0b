"""Retrieval primitives: tokenisation, BM25, dense FAISS search, RRF fusion, BEIR loading."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from components.retrieval import (BM25Retriever, DenseRetriever, HybridRetriever, batch_size_for, detect_language, encode,
                                  encode_distributed, load_beir, load_model, make_retriever, passage_text,
                                  simple_stem, tokenize)

ZH_DOCS = {
    "z1": "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。",
    "z2": "上海是中国最大的经济中心城市，位于长江入海口。",
    "z3": "长城是中国古代的军事防御工程，修筑历史可上溯到西周时期。",
    "z4": "熊猫是中国特有的哺乳动物，主要生活在四川的山区竹林里。",
}

EN_DOCS = {
    "e1": "The cat sat on the warm mat near the fireplace.",
    "e2": "Python is a popular programming language for data science.",
    "e3": "The Eiffel Tower is a wrought iron tower in Paris, France.",
    "e4": "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "e5": "Dogs are loyal animals that love running in the park.",
    "e6": "The stock market fell sharply after the interest rate decision.",
    "e7": "Mount Everest is the highest mountain above sea level.",
    "e8": "A violin is a string instrument played with a bow.",
}
EN_QUERIES = ["Which tower is in Paris?", "highest mountain on earth", "programming language for data",
              "animal that likes to run", "how do plants make sugar from light"]
EN_GOLD = ["e3", "e7", "e2", "e5", "e4"]


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def test_module_import_is_light():
    code = ("import sys, components.retrieval, components.metrics, components.mining; "
            "heavy = [m for m in ('torch', 'faiss', 'numpy', 'bm25s', 'jieba', 'sentence_transformers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_passage_text():
    assert passage_text({"title": "标题", "text": "正文"}) == "标题\n正文"
    assert passage_text({"title": "", "text": "正文"}) == "正文"
    assert passage_text({"text": " body "}) == "body"
    assert passage_text("plain") == "plain"


def test_tokenizers():
    jieba_tokens = tokenize("我爱北京天安门！", "jieba")
    assert "北京" in jieba_tokens and "天安门" in jieba_tokens and "！" not in jieba_tokens
    assert tokenize("北京大学", "char_bigram") == ["北", "京", "大", "学", "北京", "京大", "大学"]
    assert tokenize("GPU加速 Training", "char_bigram") == ["gpu", "加", "速", "加速", "training"]
    assert tokenize("The dogs were Running quickly", "regex", stem=True, stopwords=True) == ["dog", "were", "run", "quick"]
    assert simple_stem("studies") == "study" and simple_stem("class") == "class" and simple_stem("stopped") == "stop"
    assert detect_language(ZH_DOCS.values()) == "zh" and detect_language(EN_DOCS.values()) == "en"


def test_top_k_ties_and_positive_only():
    from components.retrieval import _top_k

    scores = np.array([0, 2, 1, 2, 0, 3, 2], dtype=np.float32)
    assert _top_k(scores, 3) == [(5, 3.0), (1, 2.0), (3, 2.0)]  # ties by index, also across the cut
    assert _top_k(scores, 10, positive_only=True) == [(5, 3.0), (1, 2.0), (3, 2.0), (6, 2.0), (2, 1.0)]
    assert _top_k(scores, 7)[-2:] == [(0, 0.0), (4, 0.0)]
    assert _top_k(np.zeros(4), 2, positive_only=True) == [] and _top_k(scores, 0) == []


@pytest.mark.parametrize("tokenizer", ["auto", "jieba", "char_bigram"])
def test_bm25_chinese(tokenizer):
    r = BM25Retriever(tokenizer=tokenizer).index(list(ZH_DOCS), list(ZH_DOCS.values()))
    assert r.describe()["language"] == "zh"
    if tokenizer == "auto":
        assert r.describe()["tokenizer"] == "jieba"
    hits = r.search(["中国的首都是哪里？", "熊猫生活在哪里", "长城的历史"], k=3)
    assert [h[0][0] for h in hits] == ["z1", "z4", "z3"]
    assert all(s > 0 for h in hits for _, s in h)
    assert all(h == sorted(h, key=lambda x: -x[1]) for h in hits)
    # score() agrees with search()
    top = hits[0]
    assert r.score(["中国的首都是哪里？"], [[d for d, _ in top]])[0] == pytest.approx([s for _, s in top])


def test_bm25_english_stemming_and_no_match():
    r = BM25Retriever().index(list(EN_DOCS), list(EN_DOCS.values()))
    assert r.describe()["tokenizer"] == "regex"
    hits = r.search(["cats sitting on mats", "zzzz qqqq"], k=5)
    assert hits[0][0][0] == "e1"
    assert hits[1] == []  # nothing shares a token: no result rather than arbitrary zero-score ones
    assert len(r.search(["the tower"], k=100)[0]) <= len(EN_DOCS)


def test_dense_search_batches_are_identical_and_scores_are_cosines(minilm):
    r = DenseRetriever(minilm).index(list(EN_DOCS), list(EN_DOCS.values()))
    assert r.doc_embeddings.shape == (len(EN_DOCS), 384)
    assert np.allclose(np.linalg.norm(r.doc_embeddings, axis=1), 1, atol=1e-5)
    one = r.search(EN_QUERIES, k=4, query_batch=len(EN_QUERIES))
    small = r.search(EN_QUERIES, k=4, query_batch=2)  # bounded memory path: 3 batches
    assert [[d for d, _ in h] for h in small] == [[d for d, _ in h] for h in one]
    assert np.allclose([[s for _, s in h] for h in small], [[s for _, s in h] for h in one], atol=1e-5)
    assert [h[0][0] for h in one] == EN_GOLD
    q = r.embed_queries(EN_QUERIES)
    expected = q @ r.doc_embeddings.T
    for qi, hits in enumerate(one):
        for doc, s in hits:
            assert s == pytest.approx(float(expected[qi, list(EN_DOCS).index(doc)]), abs=1e-5)
    assert r.score(EN_QUERIES[:1], [["e3", "e1", "nope"]])[0] == pytest.approx(
        [expected[0, 2], expected[0, 0], 0.0], abs=1e-5)
    assert r.search(EN_QUERIES[:1], k=100)[0].__len__() == len(EN_DOCS)  # k is capped at the corpus size


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_dense_approximate_indexes(minilm, index):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 32)).astype(np.float32)
    ids = [f"d{i}" for i in range(400)]
    exact = DenseRetriever(minilm).index_embeddings(ids, emb)
    approx = DenseRetriever(minilm, index=index, nprobe=1000, ef_search=400).index_embeddings(ids, emb)
    queries = emb[:20] + 0.01 * rng.normal(size=(20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    a, b = exact.search_embeddings(queries, 5), approx.search_embeddings(queries, 5)
    assert [h[0][0] for h in a] == [f"d{i}" for i in range(20)]
    # Probing every list / a wide beam makes the approximate index exact on this small set.
    assert [[d for d, _ in h] for h in b] == [[d for d, _ in h] for h in a]


def test_encode_prompt_and_normalize(minilm):
    plain = encode(minilm, ["hello world"], normalize=False)
    prompted = encode(minilm, ["hello world"], prompt="query: ")
    assert plain.dtype == np.float32 and plain.shape == (1, 384)
    assert not np.allclose(plain / np.linalg.norm(plain), prompted, atol=1e-3)
    assert np.allclose(encode(minilm, ["query: hello world"]), prompted, atol=1e-5)
    assert encode(minilm, []).shape == (0, 384)


def test_hybrid_rrf_fusion(minilm):
    ids, texts = list(EN_DOCS), list(EN_DOCS.values())
    bm25 = BM25Retriever()
    dense = DenseRetriever(minilm)
    hybrid = HybridRetriever([bm25, dense], weights=[2.0, 1.0], rrf_k=10, candidates=5).index(ids, texts)
    query = ["tower in Paris made of iron"]
    fused = hybrid.search(query, k=3)[0]
    lists = [bm25.search(query, 5)[0], dense.search(query, 5)[0]]
    expected = {}
    for w, hits in zip([2.0, 1.0], lists):
        for rank, (doc, _) in enumerate(hits, start=1):
            expected[doc] = expected.get(doc, 0.0) + w / (10 + rank)
    best = sorted(expected.items(), key=lambda kv: -kv[1])[:3]
    assert [d for d, _ in fused] == [d for d, _ in best]
    assert [s for _, s in fused] == pytest.approx([s for _, s in best])
    assert fused[0][0] == "e3"
    assert hybrid.score(query, [["e3"]]) == dense.score(query, [["e3"]])  # thresholds use the dense cosine


def test_make_retriever(minilm):
    assert isinstance(make_retriever("bm25", tokenizer="char_bigram"), BM25Retriever)
    d = make_retriever("dense", minilm, query_prompt="q: ", index="hnsw")
    assert isinstance(d, DenseRetriever) and d.query_prompt == "q: " and d.index_type == "hnsw"
    h = make_retriever("hybrid", minilm, tokenizer="jieba", passage_prompt="p: ", rrf_k=5, candidates=7)
    assert isinstance(h, HybridRetriever) and h.rrf_k == 5 and h.candidates == 7
    assert h.retrievers[0].tokenizer_name == "jieba" and h.retrievers[1].passage_prompt == "p: "
    with pytest.raises(ValueError):
        make_retriever("sparse")
    with pytest.raises(ValueError):
        make_retriever("dense")
    with pytest.raises(TypeError):
        make_retriever("hybrid", minilm, colour="red")
    with pytest.raises(RuntimeError):
        BM25Retriever().search(["x"], 1)


def test_dense_matches_sentence_transformers_evaluator(minilm):
    """DenseRetriever + ir_metrics reproduce InformationRetrievalEvaluator on the same model and data."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from components.metrics import ir_metrics

    queries = {f"q{i}": q for i, q in enumerate(EN_QUERIES + ["a musical instrument", "a pet animal"])}
    relevant = {"q0": {"e3"}, "q1": {"e7"}, "q2": {"e2"}, "q3": {"e5", "e1"}, "q4": {"e4"}, "q5": {"e8"},
                "q6": {"e1", "e5"}}
    ks = [1, 3, 5]
    ev = InformationRetrievalEvaluator(queries=queries, corpus=EN_DOCS, relevant_docs=relevant, mrr_at_k=ks,
                                       ndcg_at_k=ks, accuracy_at_k=ks, precision_recall_at_k=ks, map_at_k=ks,
                                       write_csv=False)
    st = ev(minilm)
    r = DenseRetriever(minilm).index(list(EN_DOCS), list(EN_DOCS.values()))
    results = dict(zip(queries, r.search(list(queries.values()), k=5)))
    ours = ir_metrics(results, {q: {d: 1 for d in rel} for q, rel in relevant.items()}, ks=ks)
    for k in ks:
        for metric in ("recall", "precision", "mrr", "ndcg", "map"):
            assert ours[f"{metric}@{k}"] == pytest.approx(st[f"cosine_{metric}@{k}"], abs=1e-6), (metric, k)


def test_load_beir(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in [{"_id": "d1", "title": "T", "text": "正文"},
                                                              {"_id": "d2", "text": "x"}]) + "\n", encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "问题"}, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n", encoding="utf-8")
    (tmp_path / "answers.jsonl").write_text(json.dumps({"_id": "q1", "answers": ["甲", "乙"]}, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    corpus, queries, qrels, answers = load_beir(tmp_path)
    assert corpus == {"d1": {"title": "T", "text": "正文"}, "d2": {"title": "", "text": "x"}}
    assert queries == {"q1": "问题"} and qrels == {"q1": {"d1": 1, "d2": 2}} and answers == {"q1": ["甲", "乙"]}
    (tmp_path / "answers.jsonl").unlink()
    assert load_beir(tmp_path)[3] == {}


def test_encoding_batch_defaults_to_the_device_and_does_not_change_embeddings(minilm):
    class OnGpu:
        device = "cuda:0"

    assert batch_size_for(minilm, None) == 16  # a CPU: as fast as 64, a third of the memory
    assert batch_size_for(OnGpu(), None) == 64
    assert batch_size_for(minilm, 5) == batch_size_for(OnGpu(), 5) == 5  # asked for: kept
    texts = [f"sentence {i} " + "word " * (i % 7) for i in range(40)]  # different lengths: padding differs
    assert np.allclose(encode(minilm, texts), encode(minilm, texts, batch_size=64), atol=1e-5)


def test_encode_distributed_without_ray_is_local(minilm):
    texts = ["one", "two", "three"]
    out = encode_distributed("minilm", texts, num_workers=2, model=minilm)  # Ray not initialised: local
    assert np.allclose(out, encode(minilm, texts), atol=1e-6)


@pytest.mark.slow
def test_encode_distributed_two_ray_actors(ray_local, minilm):
    texts = [f"sentence number {i}" for i in range(40)]
    out = encode_distributed("minilm", texts, num_workers=2, batch_size=8, num_cpus_per_worker=1)
    assert out.shape == (40, 384)
    assert np.allclose(out, encode(minilm, texts), atol=1e-5)
