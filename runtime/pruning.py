"""Choosing which visual tokens a document keeps, from a guide's importance scores (numpy only).

The ``ceil(keep_ratio * n)`` most important tokens are kept (at least one), in their original order;
ties go to the earlier token (a stable order), so the choice is deterministic. The guides that produce
the scores are documented in :mod:`minireranker.export.pruning`.
"""

from __future__ import annotations

import math

import numpy as np


def num_kept(num_visual: int, keep_ratio: float) -> int:
    return max(1, min(num_visual, math.ceil(keep_ratio * num_visual - 1e-9)))


def select_kept(importance: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Indices (ascending) of the ``ceil(r * n)`` most important tokens; ties to the earlier token."""
    order = np.lexsort((np.arange(len(importance)), -np.asarray(importance, dtype=np.float64)))
    return np.sort(order[: num_kept(len(importance), keep_ratio)])
