"""The bench's flagging and the marginal-cost arithmetic on synthetic numbers: no timing, no model."""

from __future__ import annotations

import pytest

from minireranker.calibration.bench.flags import (
    BASELINE_ATTEMPTS, CONTENTION_LIMIT, ERRORS, is_error, marginal_flags, measured_quietly, system_flags,
)
from minireranker.calibration.bench.marginal import rerank_command, summarize_marginal
from minireranker.calibration.bench.presets import BenchError

BOUNDS = {"compute_floor_s": 0.010, "kv_floor_s": 0.001}


def scripted(shares):
    """A contention probe that returns the next of ``shares`` and the attempt's number as the value."""
    calls = iter(range(1, len(shares) + 1))
    shares = iter(shares)

    def probe(measure):
        measure()
        return next(calls), next(shares)

    return probe


def test_a_quiet_first_attempt_is_kept():
    value, quiet = measured_quietly(lambda: None, contention=scripted([0.02]))
    assert value == 1 and quiet == {"contention": 0.02, "attempts": 1, "quiet": True}


def test_a_contended_baseline_is_measured_again_until_quiet():
    value, quiet = measured_quietly(lambda: None, contention=scripted([0.5, 0.3, 0.05]))
    assert value == 3 and quiet == {"contention": 0.05, "attempts": 3, "quiet": True}


def test_retries_are_bounded_and_the_least_contended_attempt_is_flagged():
    shares = [0.5, 0.2, 0.4, 0.01]  # the fourth would be quiet, but it is never reached
    value, quiet = measured_quietly(lambda: None, contention=scripted(shares))
    assert BASELINE_ATTEMPTS == 3 and quiet["attempts"] == 3
    assert value == 2 and quiet["contention"] == 0.2 and quiet["quiet"] is False


def test_the_limit_is_ten_percent_inclusive():
    assert CONTENTION_LIMIT == 0.10
    assert measured_quietly(lambda: None, contention=scripted([0.10]))[1]["quiet"] is True
    assert measured_quietly(lambda: None, attempts=1, contention=scripted([0.11]))[1]["quiet"] is False


def test_an_unknown_contention_is_not_retried():
    value, quiet = measured_quietly(lambda: None, contention=scripted([None, 0.9]))
    assert value == 1 and quiet == {"contention": None, "attempts": 1, "quiet": True}


def test_a_time_below_its_compute_floor_is_a_measurement_error():
    flags = system_flags(0.005, BOUNDS, baselines_quiet=True, contention_max=0.0)
    assert [f["flag"] for f in flags] == ["below_compute_floor"] and is_error(flags)
    assert "measurement error" in flags[0]["detail"]


def test_a_time_below_both_floors_names_both():
    flags = system_flags(0.0005, BOUNDS, baselines_quiet=True, contention_max=None)
    assert [f["flag"] for f in flags] == ["below_compute_floor", "below_kv_floor"]


def test_a_time_at_or_above_its_floors_is_a_result():
    assert system_flags(0.010, BOUNDS, baselines_quiet=True, contention_max=0.1) == []  # equal is not below
    assert system_flags(1.0, None, baselines_quiet=True, contention_max=None) == []  # no floor: nothing to beat


def test_contention_is_a_warning_not_an_error():
    flags = system_flags(0.02, BOUNDS, baselines_quiet=False, contention_max=0.25)
    assert [f["flag"] for f in flags] == ["baseline_contended", "contended"] and not is_error(flags)
    assert "25%" in flags[1]["detail"]
    assert [f["flag"] for f in system_flags(1.0, None, True, 0.5)] == ["contended"]  # dense rows too
    assert not set(f["flag"] for f in flags) & set(ERRORS)


def test_a_marginal_that_is_not_positive_is_an_error():
    assert marginal_flags(1.2, 1.0) == []
    for t_n in (1.0, 0.9):
        flags = marginal_flags(t_n, 1.0)
        assert [f["flag"] for f in flags] == ["marginal_not_positive"] and is_error(flags)


def _runs(t_n, t_1, n):
    return ([{"repeat": r, "candidates": n, "wall_s": t, "contention": 0.0} for r, t in enumerate(t_n)]
            + [{"repeat": r, "candidates": 1, "wall_s": t, "contention": 0.0} for r, t in enumerate(t_1)])


def test_marginal_is_the_difference_of_medians_over_n_minus_one():
    out = summarize_marginal(_runs([1.40, 1.30, 9.0], [1.0, 1.01, 0.99], 40), 40,
                             {"dense_transformers": 0.5, "dense_transformers_batched": 0.25})
    assert out["t_n_s"] == {"median": 1.40, "min": 1.30, "max": 9.0} and out["t_1_s"]["median"] == 1.0
    assert out["marginal_per_candidate_s"] == pytest.approx(0.40 / 39, rel=1e-12)
    assert out["ratio_to"]["dense_transformers"] == pytest.approx(0.40 / 39 / 0.5, rel=1e-12)
    assert out["ratio_to"]["dense_transformers_batched"] == pytest.approx(0.40 / 39 / 0.25, rel=1e-12)
    assert out["flags"] == [] and out["measurement_error"] is False


def test_a_noisy_marginal_is_flagged_not_reported():
    out = summarize_marginal(_runs([1.0], [1.1], 4), 4, {"dense_transformers": 0.5})
    assert out["measurement_error"] is True and out["marginal_per_candidate_s"] < 0


def test_marginal_needs_both_counts():
    with pytest.raises(BenchError, match="marginal"):
        summarize_marginal(_runs([1.0], [], 4), 4, {})


def test_the_command_is_minireranker_rerank_on_cached_ids():
    argv = rerank_command("B", "C", "a query", ["x", "y"])
    assert argv[argv.index("rerank"):] == ["rerank", "B", "--cache", "C", "--query", "a query", "--ids", "x", "y"]
