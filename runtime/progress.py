"""Progress for long work: a tqdm bar on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns, which a log file (stderr redirected, a CI job, systemd)
keeps as one ever-growing line of ``\\r`` updates. Where stderr is not a terminal, :func:`progress_bar`
writes a plain line instead, at most every :data:`LINE_EVERY_S` seconds and once at the end, e.g.::

    indexing: 40/100 doc (40%), 3.1 doc/s, 12.9 s

Both kinds have ``update(n)``, ``set_description``, ``set_postfix``, ``close()`` and work as context
managers.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO

LINE_EVERY_S = 10.0  # the most often a log line is written (the last one always is)


class LineProgress:
    """tqdm's ``update``/``close`` for a log: a line at most every ``every_s`` seconds, and at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, file: TextIO | None = None,
                 every_s: float = LINE_EVERY_S) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.file = file if file is not None else sys.stderr
        self.n, self.start = 0, time.monotonic()
        self._last = self.start
        self._closed = False
        self.postfix = ""

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._write(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self._last = now
        elapsed = now - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{share}{rate}, {elapsed:.1f} s{extra}", file=self.file, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str, disable: bool = False, leave: bool = True) -> Any:
    """A tqdm bar where stderr is a terminal, :class:`LineProgress` where it is not, nothing if ``disable``."""
    if disable:
        return _NoProgress()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return LineProgress(total, desc, unit)


def progress(iterable: Iterable, desc: str, unit: str, total: int | None = None, disable: bool = False,
             leave: bool = True) -> Iterator:
    """``iterable``'s items, with :func:`progress_bar` advanced by one after each."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit, disable, leave) as bar:
        for item in iterable:
            yield item
            bar.update(1)
