"""Two-stage score fusion (components/fusion.py): hand-computed cases."""

from __future__ import annotations

import pytest

from components.fusion import choose_weight, fuse, load_fusion_weight, minmax, save_fusion


def test_minmax_and_fuse():
    assert minmax([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert minmax([5.0, 5.0]) == [0.0, 0.0]  # no information, no preference
    assert minmax([]) == []
    # first stage prefers doc 0, reranker prefers doc 1; w=0.5 with scores 0..1 -> a tie broken by neither
    assert fuse([0.9, 0.5], [-3.0, 7.0], 0.0) == [1.0, 0.0]
    assert fuse([0.9, 0.5], [-3.0, 7.0], 1.0) == [0.0, 1.0]
    assert fuse([0.9, 0.5, 0.7], [0.0, 10.0, 5.0], 0.25) == pytest.approx([0.75, 0.25, 0.5 * 0.75 + 0.125])
    with pytest.raises(ValueError):
        fuse([1.0], [1.0, 2.0], 0.5)


def test_weight_goes_to_a_reranker_that_fixes_the_first_stage():
    # q1: the first stage has the positive (index 1) second, the reranker puts it first.
    # q2: both agree (index 0).
    first = [[0.9, 0.8, 0.1], [0.9, 0.2, 0.1]]
    rerank = [[0.0, 5.0, 1.0], [3.0, 1.0, 0.0]]
    relevant = [{1}, {0}]
    w, by = choose_weight(first, rerank, relevant, k=10)
    assert by[0.0] == pytest.approx((0.5 + 1.0) / 2)
    assert by[1.0] == pytest.approx(1.0)
    # q1 fused: doc0 = 1 - w, doc1 = w + (1 - w) * 0.875, so doc1 wins once w > 1/9: the smallest such w is 0.2
    assert by[0.1] == pytest.approx(0.75)
    assert w == 0.2 and by[w] == pytest.approx(1.0)


def test_a_reranker_that_adds_nothing_gets_no_weight():
    first = [[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]]
    rerank = [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]  # always prefers the last candidate: wrong
    relevant = [{0}, {0}]
    w, by = choose_weight(first, rerank, relevant)
    assert w == 0.0 and by[0.0] == 1.0 and by[1.0] == pytest.approx(1 / 3)
    # all weights tie (both perfect): the smaller weight wins
    w, _ = choose_weight([[1.0, 0.0]], [[1.0, 0.0]], [{0}])
    assert w == 0.0
    with pytest.raises(ValueError):
        choose_weight([], [], [])


def test_saved_weight_round_trips(tmp_path):
    assert load_fusion_weight(tmp_path) is None
    save_fusion(tmp_path, 0.3, {0.0: 0.5, 0.3: 0.7, 1.0: 0.6}, k=10, queries=58)
    assert load_fusion_weight(tmp_path) == 0.3
