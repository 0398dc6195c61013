"""The near-tie rank check of ranking_helpers: it allows swaps within the tolerance and nothing else."""

from __future__ import annotations

import pytest
from ranking_helpers import assert_ranking_within, rank_violations

TOLERANCE = 0.05  # the score tolerance a swap must stay below (fp16's in tests/runtime/test_runtime_parity.py)


def test_the_reference_order_passes():
    assert_ranking_within([0, 2, 1], [3.0, 1.0, 2.0], TOLERANCE)
    assert rank_violations([0, 2, 1], [3.0, 1.0, 2.0], TOLERANCE) == []


def test_a_swap_within_the_tolerance_passes():
    assert_ranking_within([1, 0, 2], [1.0, 0.99, 0.0], TOLERANCE)  # gap 0.01 < 0.05


def test_a_swap_beyond_the_tolerance_fails():
    with pytest.raises(AssertionError, match="candidate 1 ranked above 0"):
        assert_ranking_within([1, 0, 2], [1.0, 0.9, 0.0], TOLERANCE, context="q")  # gap 0.1 >= 0.05
    assert rank_violations([1, 0, 2], [1.0, 0.9, 0.0], TOLERANCE) == [(1, 0, pytest.approx(0.1, abs=1e-12))]


def test_a_gap_equal_to_the_tolerance_is_not_a_near_tie():
    with pytest.raises(AssertionError):
        assert_ranking_within([1, 0], [1.0, 0.5], 0.5)  # both exact in binary: gap == tolerance


def test_pairs_are_checked_across_the_ranking_not_only_neighbours():
    """Reversed near-ties of 0.03 each: neighbours are within 0.05, but the ends are 0.06 apart."""
    assert_ranking_within([2, 1, 0], [1.0, 0.98, 0.96], TOLERANCE)  # ends 0.04 apart: allowed
    with pytest.raises(AssertionError, match="candidate 2 ranked above 0"):
        assert_ranking_within([2, 1, 0], [1.0, 0.97, 0.94], TOLERANCE)


def test_a_ranking_that_drops_or_repeats_a_candidate_fails():
    with pytest.raises(AssertionError, match="not a permutation"):
        assert_ranking_within([0, 0, 1], [1.0, 0.5, 0.0], TOLERANCE)
    with pytest.raises(AssertionError, match="not a permutation"):
        assert_ranking_within([0, 1], [1.0, 0.5, 0.0], TOLERANCE)


def test_a_zero_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        rank_violations([0, 1], [1.0, 0.0], 0.0)
