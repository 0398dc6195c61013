"""Rank checks for scores computed at a lower precision (``from ranking_helpers import ...``; tests/ is on
pytest's pythonpath).

fp16 scores may legitimately reorder two candidates whose reference scores are closer than the fp16 score
tolerance; a strict ranking equality then fails on a harmless near-tie. :func:`assert_ranking_within` allows
exactly those swaps and no others: every pair the ranking puts in the wrong order must be a near-tie of the
reference, however far apart the two candidates sit in the ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_violations(order: Sequence[int], reference: Sequence[float], tolerance: float) -> list[tuple[int, int, float]]:
    """Pairs ``(above, below, gap)`` where ``order`` (candidate indices, best first) ranks ``above`` over
    ``below`` although the reference scores ``below`` higher by ``gap >= tolerance``; worst first."""
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}; compare the orders exactly for a strict check")
    scores = np.asarray(reference, dtype=np.float64)
    ranked = scores[np.asarray(order, dtype=np.int64)]             # reference scores in the given order
    gaps = ranked[None, :] - ranked[:, None]                        # [p, q]: score at q minus score at p
    above, below = np.nonzero(np.triu(gaps >= tolerance, k=1))      # p ranked above q, q better by >= tolerance
    found = [(int(order[p]), int(order[q]), float(gaps[p, q])) for p, q in zip(above, below)]
    return sorted(found, key=lambda v: -v[2])


def assert_ranking_within(order: Sequence[int], reference: Sequence[float], tolerance: float,
                          context: str = "") -> None:
    """Fail unless ``order`` ranks every candidate of ``reference`` once and swaps only pairs whose reference
    scores differ by less than ``tolerance``."""
    order = [int(i) for i in order]
    assert sorted(order) == list(range(len(reference))), \
        f"{context}: the ranking {order} is not a permutation of the {len(reference)} candidates"
    bad = rank_violations(order, reference, tolerance)
    assert not bad, (f"{context}: {len(bad)} pair(s) out of order beyond the tolerance {tolerance}; worst: candidate "
                     f"{bad[0][0]} ranked above {bad[0][1]}, whose reference score is higher by {bad[0][2]:.3g}")
