"""What a reranker reads (components/rerank.py): the passage window that matches the query."""

from __future__ import annotations

from components.rerank import best_window, query_terms, windowed


def test_query_terms_are_cjk_bigrams_and_words():
    assert query_terms("长城在哪里") == {"长城", "城在", "在哪", "哪里"}
    assert query_terms("Who built the Great Wall?") == {"who", "built", "the", "great", "wall"}
    assert query_terms("《战国无双3》的 Koei") == {"战国", "国无", "无双", "koei"}


def test_best_window_finds_the_part_the_question_is_about():
    filler = "这是一段与问题无关的介绍文字。" * 8
    passage = "长城\n" + filler + "长城的修筑历史可上溯到西周时期。" + filler
    out = best_window("长城的修筑历史可以上溯到什么时期？", passage, 24)
    assert out.startswith("长城\n")  # the title stays
    assert "修筑历史可上溯到西周" in out
    assert len(out) == len("长城\n") + 24


def test_short_passages_and_no_window_are_unchanged():
    assert best_window("q", "title\nshort text", 50) == "title\nshort text"
    docs = ["a\n" + "x" * 100, "b\nshort"]
    assert windowed("q", docs, None) == docs
    # no title line: the window alone
    out = best_window("alpha beta", "x " * 40 + "alpha beta gamma" + " y" * 40, 20)
    assert "alpha beta" in out and len(out) == 20


def test_ties_go_to_the_start():
    passage = "t\n" + "abcdefghij" * 10
    assert best_window("no overlap here", passage, 20) == "t\n" + passage[2:22]
