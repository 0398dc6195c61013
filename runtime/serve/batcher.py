"""Dynamic batching: concurrent requests' (query, document) pairs share band and tail engine calls.

Each request thread ``submit``s its pairs and waits on a future. One worker thread takes the first
waiting request, then keeps gathering requests for ``window_s`` seconds (or until ``max_pairs`` pairs are
gathered), and scores them all with one ``score_fn`` call (``Reranker.score_pairs``, which splits them
into engine calls of at most ``batch_size`` pairs). A request larger than ``max_pairs`` is never split
across batches; it simply makes a batch of its own.

Why a window: on a GPU, a band call over 40 candidates costs little more than one over 10, so four
clients arriving within a few milliseconds are served in about the time of one. The window is the price
a lone request pays; 2 ms is small against a rerank and can be set to 0 (gather only what is queued).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class _Job:
    pairs: Sequence[Any]
    future: Future
    enqueued: float


class BatcherClosed(RuntimeError):
    """The batcher was closed: no new work is accepted."""


class DynamicBatcher:
    """``submit(pairs) -> Future[np.ndarray]``; ``score_fn(all_pairs) -> scores`` runs on one worker thread."""

    def __init__(self, score_fn: Callable[[list], np.ndarray], window_s: float = 0.002, max_pairs: int = 64,
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        if window_s < 0 or max_pairs < 1:
            raise ValueError(f"window_s must be >= 0 and max_pairs >= 1, got {window_s}, {max_pairs}")
        self.score_fn, self.window_s, self.max_pairs = score_fn, window_s, max_pairs
        self.on_batch = on_batch  # (requests, pairs, seconds) after each batch: metrics
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="minireranker-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the one being scored)."""
        with self._cond:
            return len(self._queue)

    def submit(self, pairs: Sequence[Any]) -> Future:
        """Queue ``pairs``; the future resolves to their scores (in order) or to the scoring error."""
        future: Future = Future()
        if not pairs:
            future.set_result(np.zeros(0))
            return future
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed (the server is shutting down)")
            self._queue.append(_Job(pairs, future, time.perf_counter()))
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work; requests already queued are still scored before the worker exits."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            jobs = [self._queue.popleft()]
            count = len(jobs[0].pairs)
            deadline = time.perf_counter() + self.window_s
            while count < self.max_pairs:
                if self._queue:
                    if count + len(self._queue[0].pairs) > self.max_pairs:
                        break
                    job = self._queue.popleft()
                    jobs.append(job)
                    count += len(job.pairs)
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            pairs = [p for job in jobs for p in job.pairs]
            t0 = time.perf_counter()
            try:
                scores = self.score_fn(pairs)
            except BaseException as exc:  # the requests get the error; the worker lives on
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(jobs), len(pairs), time.perf_counter() - t0)
            start = 0
            for job in jobs:
                job.future.set_result(scores[start: start + len(job.pairs)])
                start += len(job.pairs)
