"""Ranking metrics and rank agreement against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minireranker.calibration.metrics import (average_ranks, dcg, hit_at_1, kendall, ndcg_at, paired_difference,
                                              per_query, query_metrics, ranking, reciprocal_rank, spearman, summarize)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-12  # closed forms evaluated in float64


def test_dcg_by_hand():
    """Gains 2**g - 1 (grade 3 -> 7, 2 -> 3, 1 -> 1, 0 -> 0), discounts log2(rank + 1), cut at k."""
    grades = np.array([2, 0, 1, 3])
    assert dcg(grades, 1) == pytest.approx(3.0, abs=ATOL)                   # 3 / log2(2)
    assert dcg(grades, 3) == pytest.approx(3.0 + 0.0 + 0.5, abs=ATOL)       # + 0 / log2(3) + 1 / log2(4)
    assert dcg(grades, 4) == pytest.approx(3.5 + 7 / math.log2(5), abs=ATOL)
    assert dcg(grades, 4) == pytest.approx(6.514736, abs=1e-6)              # 7 / log2(5) = 3.014736
    assert dcg(grades, 10) == dcg(grades, 4)                                # k past the end: every grade
    assert dcg(np.array([1, 2]), 2) == pytest.approx(1 + 3 / math.log2(3), abs=ATOL)  # order matters
    assert dcg(np.array([2, 1]), 2) == pytest.approx(3 + 1 / math.log2(3), abs=ATOL)
    assert dcg(grades, 0) == 0.0 and dcg(np.array([], dtype=int), 5) == 0.0


def test_graded_ndcg_mrr_hit_by_hand():
    scores, grades = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 2, 1, 0])
    # ranking 0,1,2,3 -> grades [0, 2, 1, 0]; DCG = 3/log2(3) + 1/log2(4); IDCG = 3/log2(2) + 1/log2(3)
    dcg, idcg = 3 / math.log2(3) + 1 / 2, 3 + 1 / math.log2(3)
    assert ndcg_at(scores, grades, 5) == pytest.approx(dcg / idcg, abs=ATOL)
    assert dcg / idcg == pytest.approx(0.659002, abs=1e-6)
    assert hit_at_1(scores, grades) == 0.0
    assert reciprocal_rank(scores, grades) == 0.5
    # cut-off: with k = 1 only the top (irrelevant) counts
    assert ndcg_at(scores, grades, 1) == 0.0
    # the ideal order scores 1
    assert ndcg_at(np.array([0.1, 0.9, 0.5, 0.0]), grades, 10) == pytest.approx(1.0, abs=ATOL)


def test_relevant_past_the_cutoff():
    grades = np.zeros(12, dtype=int)
    grades[10] = 1  # ranked 11th below
    scores = -np.arange(12.0)
    assert ndcg_at(scores, grades, 10) == 0.0
    assert reciprocal_rank(scores, grades) == pytest.approx(1 / 11, abs=ATOL)
    assert query_metrics(scores, grades)["ndcg@5"] == 0.0


def test_ties_are_broken_by_candidate_order():
    assert list(ranking(np.array([1.0, 1.0, 0.0, 1.0]))) == [0, 1, 3, 2]
    assert hit_at_1(np.array([1.0, 1.0, 0.0]), np.array([0, 1, 0])) == 0.0
    assert reciprocal_rank(np.array([1.0, 1.0, 0.0]), np.array([0, 1, 0])) == 0.5
    assert hit_at_1(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0])) == 1.0


def test_summary_excludes_queries_without_relevant_candidates():
    s = summarize([np.array([2.0, 1.0]), np.array([1.0, 2.0]), np.array([0.0, 1.0])],
                  [np.array([1, 0]), np.array([1, 0]), np.array([0, 0])])
    assert (s.queries, s.excluded) == (2, 1)
    assert s.means["hit@1"] == 0.5
    assert s.means["mrr"] == pytest.approx(0.75, abs=ATOL)
    assert s.means["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2, abs=ATOL)


def test_spearman_and_kendall_by_hand():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert spearman(a, b) == pytest.approx(1 - 6 * 2 / (4 * 15), abs=ATOL)  # 0.8
    assert kendall(a, b) == pytest.approx((5 - 1) / 6, abs=ATOL)
    assert spearman(a, -a) == pytest.approx(-1.0, abs=ATOL)
    # ties: average ranks [1.5, 1.5, 3]; tau-b = 2 / sqrt(2 * 3)
    t, u = np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    assert list(average_ranks(t)) == [1.5, 1.5, 3.0]
    assert spearman(t, u) == pytest.approx(1.5 / math.sqrt(1.5 * 2), abs=ATOL)
    assert kendall(t, u) == pytest.approx(2 / math.sqrt(6), abs=ATOL)
    # a constant vector carries no order
    assert spearman(np.ones(3), u) == 0.0 and kendall(u, np.ones(3)) == 0.0
    assert spearman(np.ones(3), np.ones(3)) == 1.0


def test_agreement_matches_scipy_on_random_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 5, 20).astype(float), rng.integers(0, 5, 20).astype(float)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)


def test_per_query_keeps_the_queries_summarize_averages():
    scores = [np.array([2.0, 1.0]), np.array([1.0, 2.0]), np.array([1.0, 0.0])]
    grades = [np.array([1, 0]), np.array([1, 0]), np.array([0, 0])]
    np.testing.assert_array_equal(per_query(scores, grades, "hit@1"), [1.0, 0.0])
    assert per_query(scores, grades, "hit@1").mean() == summarize(scores, grades).means["hit@1"]
    with pytest.raises(ValueError, match="unknown metric"):
        per_query(scores, grades, "ndcg@3")


def test_paired_difference_interval():
    """A constant gap has a zero-width interval; a gap that flips sign across queries straddles 0."""
    same = paired_difference(np.array([0.6, 0.7, 0.8]), np.array([0.5, 0.6, 0.7]))
    assert same["delta"] == pytest.approx(0.1, abs=ATOL)
    assert same["ci95"] == pytest.approx([0.1, 0.1], abs=ATOL) and (same["wins"], same["losses"]) == (3, 0)
    noisy = paired_difference(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0, 0.9]))
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and (noisy["wins"], noisy["losses"]) == (2, 2)
    # 15 gaps of +1 and 5 of -1: a resample's mean is 2 X / 20 - 1 with X ~ Binomial(20, 0.75). The 2.5%
    # quantile of X is 11 (P(X <= 10) = 0.014, P(X <= 11) = 0.041): mean 0.1. The 97.5% quantile is 18
    # (P(X <= 18) = 0.976), so close to the edge that 10,000 draws may give 19: mean 0.8 or 0.9.
    many = paired_difference(np.r_[np.ones(15), np.zeros(5)], np.r_[np.zeros(15), np.ones(5)])
    assert many["delta"] == pytest.approx(0.5, abs=ATOL)
    assert many["ci95"][0] == pytest.approx(0.1, abs=ATOL)
    assert min(abs(many["ci95"][1] - 0.8), abs(many["ci95"][1] - 0.9)) < ATOL
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(np.array([]), np.array([]))
