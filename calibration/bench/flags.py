"""When a figure of ``minireranker bench`` is not a result: contended baselines, and times below their own floor.

The floors (the K/V bytes at the memcpy rate, the FLOPs at the GEMM rate) are only as good as the machine was
quiet while they were measured, so each baseline is re-measured while other processes take more than
:data:`CONTENTION_LIMIT` of all cores (at most :data:`BASELINE_ATTEMPTS` times, keeping the least contended);
one that never got a quiet machine is flagged. A system faster than its own floor did not do the work the floor
counts (or the floor was measured badly): that is a measurement error, flagged in ``results.json``
(``flags``, ``measurement_error``) and shown as such in the table instead of its ratios.

A flag is ``{"flag": NAME, "detail": text}``; NAME is one of :data:`ERRORS` (the figure is not a result) or
:data:`WARNINGS` (the figure stands, with a caveat).
"""

from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

from .systems import _busy_cpu_s

CONTENTION_LIMIT = 0.10  # share of all cores other processes may take while a baseline is measured
BASELINE_ATTEMPTS = 3
ERRORS = ("below_compute_floor", "below_kv_floor", "marginal_not_positive")
WARNINGS = ("baseline_contended", "contended")

T = TypeVar("T")


def with_contention(measure: Callable[[], T]) -> tuple[T, float | None]:
    """``measure()`` and the share of all cores other processes used meanwhile (None where /proc is missing)."""
    busy, own, t0 = _busy_cpu_s(), os.times(), time.perf_counter()
    value = measure()
    wall, busy_after, own_after = time.perf_counter() - t0, _busy_cpu_s(), os.times()
    if busy is None or busy_after is None or wall <= 0:
        return value, None
    mine = own_after.user - own.user + own_after.system - own.system
    return value, max(0.0, busy_after - busy - mine) / (wall * (os.cpu_count() or 1))


def measured_quietly(measure: Callable[[], T], attempts: int = BASELINE_ATTEMPTS, limit: float = CONTENTION_LIMIT,
                     contention: Callable[[Callable[[], T]], tuple[T, float | None]] = with_contention,
                     ) -> tuple[T, dict]:
    """Measure until other processes took at most ``limit`` of the CPU (``attempts`` at most); the least
    contended attempt's value and ``{contention, attempts, quiet}``. ``contention`` is injectable for tests."""
    best: tuple[T, float | None] | None = None
    for attempt in range(1, attempts + 1):
        value, share = contention(measure)
        if best is None or share is None or (best[1] is not None and share < best[1]):
            best = (value, share)
        if share is None or share <= limit:
            break
    assert best is not None  # attempts >= 1
    return best[0], {"contention": best[1], "attempts": attempt, "quiet": best[1] is None or best[1] <= limit}


def system_flags(total_s: float, bounds: dict | None, baselines_quiet: bool, contention_max: float | None,
                 limit: float = CONTENTION_LIMIT) -> list[dict]:
    """The flags of one system's row: its median ``total_s`` against its floors (``bounds``, None for the
    systems without one), whether every baseline behind those floors was quiet, and its own runs' contention."""
    flags = []
    if bounds is not None:
        for name, floor in (("compute", bounds["compute_floor_s"]), ("kv", bounds["kv_floor_s"])):
            if total_s < floor:
                flags.append({"flag": f"below_{name}_floor", "detail": f"{total_s:.3g} s per query is below its own "
                              f"{name} floor of {floor:.3g} s: a measurement error, not a result"})
        if not baselines_quiet:
            flags.append({"flag": "baseline_contended", "detail": f"other processes took more than {limit:.0%} of "
                          f"the CPU while this run's floors were measured, after {BASELINE_ATTEMPTS} attempts"})
    if contention_max is not None and contention_max > limit:
        flags.append({"flag": "contended", "detail": f"other processes took up to {contention_max:.0%} of the CPU "
                      "during a timed run"})
    return flags


def marginal_flags(t_n_s: float, t_1_s: float) -> list[dict]:
    """N candidates that took no longer than 1 mean the difference is noise: a measurement error."""
    if t_n_s > t_1_s:
        return []
    return [{"flag": "marginal_not_positive", "detail": f"N candidates took {t_n_s:.3g} s, not more than one "
             f"candidate's {t_1_s:.3g} s: the difference is noise; use more --repeats or a larger --marginal"}]


def is_error(flags: list[dict]) -> bool:
    """True when one of ``flags`` makes the figure a measurement error."""
    return any(f["flag"] in ERRORS for f in flags)
