"""The marginal cost of one more candidate, through the command line, warm (issue 12's independent check).

::

    t_N = wall time of  minireranker rerank BUNDLE --cache C --query Q --ids ID_1 ... ID_N
    t_1 = wall time of  minireranker rerank BUNDLE --cache C --query Q --ids ID_1
    marginal per candidate = (median t_N - median t_1) / (N - 1)

Both on the same warm cache (every id indexed beforehand; one untimed call of each first puts the entries in
the page cache), alternating which goes first, one query per repeat. Process start, imports, loading the
bundle and the query head are in both and cancel; what is left is what each further candidate costs (its K/V
read, band and tail rows). It is compared with dense transformers' time per pair from the same run.

``results.json`` ``marginal`` (null when it did not run)::

    command (with BUNDLE, CACHE, QUERY, IDS in place), configuration {system, bundle, spec, candidates,
    tokens_per_doc, repeats}, t_n_s, t_1_s (spreads), marginal_per_candidate_s,
    dense_per_pair_s {system: seconds}, ratio_to {system: marginal / dense per pair}, flags, measurement_error,
    runs [{repeat, candidates, wall_s, contention}]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable

from .flags import is_error, marginal_flags, with_contention
from .presets import BenchError


def rerank_command(bundle: str, cache: str, query: str, ids: list[str]) -> list[str]:
    """The ``minireranker rerank`` command line (the installed entry point, else ``python -m``)."""
    exe = shutil.which("minireranker")
    head = [exe] if exe else [sys.executable, "-m", "minireranker.tools.cli"]
    return [*head, "rerank", bundle, "--cache", cache, "--query", query, "--ids", *ids]


def _time_command(argv: list[str]) -> tuple[float, float | None]:
    """Wall seconds of one command and the CPU share other processes took meanwhile; BenchError if it fails."""
    def run() -> float:
        t0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"marginal cost: `{' '.join(argv[:4])} ...` failed (exit {out.returncode}): "
                             f"{out.stderr.strip()[-500:]}")
        return time.perf_counter() - t0

    return with_contention(run)  # the child's CPU counts as ours (os.times includes reaped children)


def measure_marginal(bundle: str, cache: str, ids: list[str], queries: list[str], warmup: str,
                     log: Callable[[str], None]) -> list[dict]:
    """Timed ``rerank`` calls on all of ``ids`` and on the first, one query per repeat; the runs."""
    for n in (len(ids), 1):  # untimed: the page cache and the CRCs
        _time_command(rerank_command(bundle, cache, warmup, ids[:n]))
    runs = []
    for r, query in enumerate(queries):
        for n in ((len(ids), 1) if r % 2 == 0 else (1, len(ids))):
            wall, contention = _time_command(rerank_command(bundle, cache, query, ids[:n]))
            runs.append({"repeat": r, "candidates": n, "wall_s": wall, "contention": contention})
        log(f"marginal {r + 1}/{len(queries)}: rerank on {len(ids)} candidates "
            f"{runs[-2 if r % 2 == 0 else -1]['wall_s']:.3f} s, on 1 {runs[-1 if r % 2 == 0 else -2]['wall_s']:.3f} s")
    return runs


def summarize_marginal(runs: list[dict], candidates: int, dense_per_pair_s: dict[str, float]) -> dict:
    """The medians, the marginal per candidate, its ratio to each dense system's time per pair, and its flags."""
    t_n = [r["wall_s"] for r in runs if r["candidates"] == candidates]
    t_1 = [r["wall_s"] for r in runs if r["candidates"] == 1]
    if not t_n or not t_1 or candidates < 2:
        raise BenchError(f"marginal cost needs timed runs on {candidates} (>= 2) and on 1 candidate")
    m_n, m_1 = statistics.median(t_n), statistics.median(t_1)
    marginal = (m_n - m_1) / (candidates - 1)
    flags = marginal_flags(m_n, m_1)
    return {"t_n_s": _spread(t_n), "t_1_s": _spread(t_1), "marginal_per_candidate_s": marginal,
            "dense_per_pair_s": dict(dense_per_pair_s),
            "ratio_to": {name: marginal / s for name, s in dense_per_pair_s.items()},
            "flags": flags, "measurement_error": is_error(flags), "runs": runs}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
