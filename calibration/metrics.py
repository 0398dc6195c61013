"""Ranking metrics with graded relevance, and rank agreement between two score vectors (numpy only).

Definitions (also in ``docs/eval.md``):

* **Ranking.** Candidates are sorted by score, highest first; equal scores keep the candidates' order
  in the file (a stable sort), so a tie never helps or hurts by chance and every run ranks alike.
* **Relevant** means grade > 0. Gains are graded: ``2**grade - 1``.
* **Hit@1** = 1 if the top-ranked candidate is relevant, else 0.
* **MRR** = 1 / rank of the first relevant candidate (ranks from 1).
* **nDCG@k** = DCG@k / IDCG@k with ``DCG@k = sum_{i<k} (2**g_i - 1) / log2(i + 2)`` over the ranking and
  IDCG@k the same sum over the grades sorted in decreasing order (the best possible ranking).
* A query with **no relevant candidate** has no defined MRR or nDCG: it is excluded from every mean
  and counted in ``excluded`` (reports say how many), rather than silently scored 0 or 1.
* **Paired difference** of two systems on one metric: the mean over queries of (system - reference),
  with a 95% percentile-bootstrap interval (queries resampled with replacement, the same resample for
  both systems, 10,000 draws, fixed seed). An interval that excludes 0 is what reports call a clear
  difference; on a few dozen queries a gap of a few points often does not.
* **Spearman** = Pearson correlation of the two vectors' ranks, ties given their average rank;
  **Kendall** = tau-b (tie-corrected). When one vector is constant and the other is not, the agreement
  is 0 (a constant carries no order); when both are constant it is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("hit@1", "mrr", "ndcg@5", "ndcg@10")


def ranking(scores: np.ndarray) -> np.ndarray:
    """Candidate indices best first; ties keep the candidates' order (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def hit_at_1(scores: np.ndarray, grades: np.ndarray) -> float:
    return float(np.asarray(grades)[ranking(scores)[0]] > 0)


def reciprocal_rank(scores: np.ndarray, grades: np.ndarray) -> float:
    """1 / rank of the first relevant candidate; 0 when none is relevant."""
    ranked = np.asarray(grades)[ranking(scores)]
    hits = np.flatnonzero(ranked > 0)
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


def dcg(grades_in_order: np.ndarray, k: int) -> float:
    """Discounted cumulative gain of the first ``k`` grades: ``sum (2**g - 1) / log2(rank + 1)``, ranks from 1."""
    g = np.asarray(grades_in_order, dtype=np.float64)[:k]
    return float(np.sum((2.0 ** g - 1.0) / np.log2(np.arange(2, len(g) + 2))))


def ndcg_at(scores: np.ndarray, grades: np.ndarray, k: int) -> float:
    """DCG@k of the ranking over the ideal DCG@k; 0 when no candidate is relevant."""
    grades = np.asarray(grades)
    ideal = dcg(np.sort(grades)[::-1], k)
    return dcg(grades[ranking(scores)], k) / ideal if ideal > 0 else 0.0


def query_metrics(scores: np.ndarray, grades: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one query."""
    return {"hit@1": hit_at_1(scores, grades), "mrr": reciprocal_rank(scores, grades),
            "ndcg@5": ndcg_at(scores, grades, 5), "ndcg@10": ndcg_at(scores, grades, 10)}


@dataclass(frozen=True)
class MetricSummary:
    """Means over the queries that have a relevant candidate; ``excluded`` counts the others."""

    means: dict[str, float]
    queries: int
    excluded: int

    def to_dict(self) -> dict:
        return {**self.means, "queries": self.queries, "excluded": self.excluded}


def summarize(scores: list[np.ndarray], grades: list[np.ndarray]) -> MetricSummary:
    """Mean of each metric over queries (``scores[i]``, ``grades[i]`` are query i's candidates)."""
    rows = [query_metrics(s, g) for s, g in zip(scores, grades) if np.any(np.asarray(g) > 0)]
    means = {m: float(np.mean([r[m] for r in rows])) if rows else math.nan for m in METRICS}
    return MetricSummary(means, len(rows), len(scores) - len(rows))


def per_query(scores: list[np.ndarray], grades: list[np.ndarray], metric: str) -> np.ndarray:
    """``metric`` of each query that has a relevant candidate (the queries :func:`summarize` averages)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
    return np.array([query_metrics(s, g)[metric] for s, g in zip(scores, grades) if np.any(np.asarray(g) > 0)])


def paired_difference(system: np.ndarray, reference: np.ndarray, draws: int = 10_000,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``system - reference`` over queries and its 95% percentile-bootstrap interval."""
    diff = np.asarray(system, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if diff.ndim != 1 or len(diff) == 0:
        raise ValueError(f"paired_difference needs two equal-length, non-empty vectors, got {np.shape(system)} "
                         f"and {np.shape(reference)}")
    means = diff[np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"delta": float(diff.mean()), "ci95": [float(low), float(high)], "queries": len(diff),
            "wins": int(np.sum(diff > 0)), "losses": int(np.sum(diff < 0))}


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` ascending, tied values sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def _constant_case(a: np.ndarray, b: np.ndarray) -> float | None:
    ca, cb = np.all(a == a[0]), np.all(b == b[0])
    if ca and cb:
        return 1.0
    if ca or cb:
        return 0.0
    return None


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (see the module docstring for constant vectors)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"spearman needs two vectors of the same non-zero length, got {len(a)} and {len(b)}")
    special = _constant_case(a, b) if len(a) > 1 else 1.0
    if special is not None:
        return special
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    return float(np.dot(ra, rb) / math.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_a)(n0 - ties_b)), O(n^2)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"kendall needs two vectors of the same non-zero length, got {len(a)} and {len(b)}")
    special = _constant_case(a, b) if len(a) > 1 else 1.0
    if special is not None:
        return special
    iu = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[:, None] - a[None, :])[iu], np.sign(b[:, None] - b[None, :])[iu]
    n0 = len(da)
    ties_a, ties_b = int(np.sum(da == 0)), int(np.sum(db == 0))
    return float(np.sum(da * db) / math.sqrt((n0 - ties_a) * (n0 - ties_b)))
