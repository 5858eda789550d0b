"""reranker_finetune's data paths without training: the errors a user hits, and what each loss is fed."""

from __future__ import annotations

import pytest

from components.reranker_finetune import RerankerFinetuneParams, load_groups, to_dataset
from orchestrator.api import Artifact, write_jsonl


def art(tmp_path, kind, rows, name):
    folder = tmp_path / name
    folder.mkdir()
    a = Artifact(kind, folder, f"k:{name}")
    write_jsonl(a.main_file, rows)
    return a


PAIRS = [{"query": "q1", "positive": "p1"}, {"query": "q2", "positive": "p2"}]
CORPUS = [{"_id": f"d{i}", "title": "", "text": f"p{i}"} for i in range(1, 9)]


def test_plain_pairs_without_negatives_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="random_negatives"):
        load_groups(art(tmp_path, "pairs", PAIRS, "train"), None, RerankerFinetuneParams(), seed=0)


def test_random_negatives_need_a_corpus(tmp_path):
    with pytest.raises(ValueError, match="corpus"):
        load_groups(art(tmp_path, "pairs", PAIRS, "train"), None, RerankerFinetuneParams(random_negatives=2), seed=0)


def test_random_negatives_never_a_positive_and_deterministic(tmp_path):
    params = RerankerFinetuneParams(random_negatives=3)
    train, corpus = art(tmp_path, "pairs", PAIRS, "train"), art(tmp_path, "corpus", CORPUS, "corpus")
    groups = load_groups(train, corpus, params, seed=7)
    assert groups == load_groups(train, corpus, params, seed=7)
    for g in groups.values():
        assert len(g["random"]) == 3 and not set(g["random"]) & set(g["pos"])


def test_labeled_pairs_feed_bce_and_listwise(tmp_path):
    rows = [{"query": "q", "doc": "a", "label": 1}, {"query": "q", "doc": "b", "label": 0},
            {"query": "q", "doc": "c", "label": 0}]
    groups = load_groups(art(tmp_path, "labeled_pairs", rows, "train"), None, RerankerFinetuneParams(), seed=0)
    data, columns, stats = to_dataset(groups, RerankerFinetuneParams(loss="bce"))
    assert columns == ["query", "document", "label"] and sorted(data["label"]) == [0.0, 0.0, 1.0]
    assert stats["hard_negatives"] == 2 and stats["queries_without_negative"] == 0
    data, columns, _ = to_dataset(groups, RerankerFinetuneParams(loss="lambda"))
    assert columns == ["query", "docs", "labels"] and data["labels"][0] == [1.0, 0.0, 0.0]
    data, columns, _ = to_dataset(groups, RerankerFinetuneParams(loss="mnrl"))
    assert columns == ["query", "positive", "negative_1", "negative_2"]


def test_warm_start_without_a_retriever_input_is_a_clear_error(tmp_path):
    from components.reranker_finetune import reranker_finetune
    from orchestrator.context import NodeContext

    inputs = {"train": art(tmp_path, "pairs", PAIRS, "train"), "corpus": art(tmp_path, "corpus", CORPUS, "corpus")}
    ctx = NodeContext(node="rr", entry_dir=tmp_path / "entry", recipe_dir=tmp_path)
    with pytest.raises(ValueError, match="warm_start needs the `retriever` input"):
        reranker_finetune(RerankerFinetuneParams(random_negatives=1, warm_start=True), inputs, ctx)
