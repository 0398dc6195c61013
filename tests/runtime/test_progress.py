"""Progress output: tqdm's bar on a terminal, plain timed lines in a log, nothing when disabled."""

from __future__ import annotations

import io

from minireranker.runtime import progress as progress_module
from minireranker.runtime.progress import LineProgress, progress, progress_bar


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_at_most_every_interval_and_always_at_the_end(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    out = io.StringIO()
    bar = LineProgress(10, "indexing", "doc", file=out, every_s=10.0)
    for _ in range(4):  # 4 updates within 3 s: no line yet
        clock.now += 0.75
        bar.update(1)
    assert out.getvalue() == ""
    clock.now += 10.0
    bar.update(1)  # 13 s in: one line
    bar.set_postfix(loss="0.123")
    clock.now += 1.0
    bar.update(5)
    bar.close()
    bar.close()  # a second close writes nothing
    lines = out.getvalue().splitlines()
    assert lines == ["indexing: 5/10 doc (50%), 0.4 doc/s, 13.0 s",
                     "indexing: 10/10 doc (100%), 0.7 doc/s, 14.0 s, loss=0.123"]
    assert "\r" not in out.getvalue()


def test_a_non_terminal_gets_lines_and_disable_gets_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(3, "x", "doc"), LineProgress)
    assert list(progress(["a", "b", "c"], "sweep", "query")) == ["a", "b", "c"]
    assert capsys.readouterr().err.splitlines()[-1].startswith("sweep: 3/3 query (100%)")
    assert list(progress(range(3), "quiet", "query", disable=True)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(2, "indexing", "doc")
    try:
        assert isinstance(bar, tqdm)
    finally:
        bar.close()
