"""Every plot the toolkit writes, rendered from benchmarks/render_plots.py's small fixtures (no model runs).

Each is a valid PNG of the size its figure defines, and each reads right: bench's stages are shares on a
linear axis and never stacked on the log one, the Pareto plot has a labelled colour bar and tick labels that
do not overlap, the profile's stages are drawn over ``total`` and told apart by marker, eval's bars carry
their 95% intervals, and a contact sheet marks relevance only when labels are given.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from minireranker.calibration.bench.report import stage_figure  # noqa: E402
from minireranker.calibration.demo.run import (  # noqa: E402
    BORDER, GAP, HEADER, THUMB, TILE_MIN_WIDTH, TITLE, contact_sheet, relevance_mark,
)
from minireranker.calibration.report import eval_figure, log_ticks, pareto_figure  # noqa: E402
from minireranker.runtime.profiling.profile import profile_figure  # noqa: E402
from minireranker.runtime.profiling.report import PLOT_DPI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render_plots", ROOT / "benchmarks" / "render_plots.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# contact sheet of render.sheet_tiles(): thumbnails scaled to 150 px high (wide ones to at most 375 px wide):
# two 64x64 digits -> 150, a 192x64 composite -> 375, a text -> 150, the 128x85 photo -> 226
THUMB_WIDTHS = (150, 375, 150, 150, 226)
SHEET_WIDTH = GAP + sum(max(w, TILE_MIN_WIDTH) + 2 * BORDER + GAP for w in THUMB_WIDTHS)
TILE_HEIGHT = THUMB + HEADER + 2 * BORDER + 2  # thumbnail, header, border, spacing; plus 15 px per caption line
SIZES = {  # figure inches x PLOT_DPI, as each figure function sets them (no tight bounding box)
    "bench": (12 * PLOT_DPI, round((1.9 + 0.55 * 5) * PLOT_DPI)),          # five systems
    "pareto": (12 * PLOT_DPI, round(4.6 * PLOT_DPI)),
    "profile": (round((5 * 2 + 1.4) * PLOT_DPI), round(4.2 * PLOT_DPI)),  # two panels: warm, cold-unindexed
    "eval": (round((2.2 + 1.6 * 4 + 0.25 * 4 + 4.2) * PLOT_DPI), round(4.4 * PLOT_DPI)),  # 4 metrics, 4 systems
    "contact-sheet": (SHEET_WIDTH, TITLE + TILE_HEIGHT + 2 * 15 + GAP),  # labelled: name and relevance tag
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    return render.render_plots(tmp_path_factory.mktemp("plots"))


@pytest.mark.parametrize("name", list(render.PLOTS))
def test_each_plot_is_a_valid_png_of_its_size(rendered, name):
    path = rendered[name]
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size == SIZES[name]
    assert path.stat().st_size <= 150 * 1024  # small enough to commit beside the docs


def _rgb(color) -> tuple[int, int, int]:
    return tuple(round(255 * c) for c in plt.matplotlib.colors.to_rgb(color))


def test_bench_stacks_shares_on_a_linear_axis_and_only_dots_on_the_log_one():
    result = render.bench_result()
    fig = stage_figure(result)
    totals, shares = fig.axes[:2]
    try:
        assert totals.get_xscale() == "log" and not totals.patches  # totals: one dot each, no stacked bars
        assert shares.get_xscale() == "linear" and shares.get_xlim() == (0, 100)
        rows: dict[float, list] = {}
        for bar in shares.patches:
            rows.setdefault(round(bar.get_y() + bar.get_height() / 2, 6), []).append(bar)
        assert len(rows) == len(result["systems"])
        for bars in rows.values():  # each system's shares fill its bar exactly (tolerance 1e-9 %)
            assert sum(b.get_width() for b in bars) == pytest.approx(100, abs=1e-9)
        dense = min(rows)  # the first system, (a) dense, sits on row 0
        s = result["systems"]["dense_transformers"]
        preprocess = 100 * s["stages_s"]["preprocess"]["median"] / s["total_s"]["median"]
        assert rows[dense][0].get_width() == pytest.approx(preprocess, abs=1e-9) and 10.5 < preprocess < 11.5
    finally:
        plt.close(fig)


def test_pareto_has_a_labelled_colour_bar_and_ticks_that_do_not_overlap():
    fig = pareto_figure(render.pareto_result())
    try:
        colorbars = [ax for ax in fig.axes if "keep ratio" in ax.get_ylabel()]
        assert len(colorbars) == 1 and colorbars[0].get_ylim() == (0.0, 1.0)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes[:2]:
            labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
            boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
            assert len(boxes) >= 4, ax.get_xlabel()
            assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]
            assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]  # no minor labels to crowd
    finally:
        plt.close(fig)


@pytest.mark.parametrize("lo, hi", [(0.0124, 0.1), (68, 334), (3e-4, 2.4), (1.0, 1.9), (1.6, 1.9), (3e-5, 4e4)])
def test_log_ticks_are_few_inside_the_range_and_distinct(lo, hi):
    ticks = log_ticks(lo, hi)
    assert 2 <= len(ticks) <= 7 and all(lo <= t <= hi for t in ticks)
    assert len({f"{t:g}" for t in ticks}) == len(ticks)


def test_profile_draws_every_stage_over_total_with_its_own_marker():
    fig = profile_figure(render.profile_result())
    try:
        cold = fig.axes[1]
        lines = {line.get_label(): line for line in cold.get_lines()}
        total = lines["total (wall), q=16"]
        stages = [line for label, line in lines.items() if not label.startswith("total")]
        assert "index" in lines and all(s.get_zorder() > total.get_zorder() for s in stages)
        assert len({s.get_marker() for s in stages}) == len(stages)  # coinciding lines stay told apart
        n, index = lines["index"].get_data()
        _, wall = total.get_data()
        assert np.all(index / wall > 0.85) and index[-1] / wall[-1] > 0.95  # the case: index nearly all of total
    finally:
        plt.close(fig)


def test_eval_bars_carry_95_percent_intervals_and_the_paired_differences_theirs():
    result = render.eval_result()
    fig = eval_figure(result)
    try:
        bars, diffs = fig.axes[:2]
        containers = [c for c in bars.containers if isinstance(c, BarContainer)]
        assert len(containers) == len(result["systems"])
        for container, system in zip(containers, result["systems"]):
            assert container.errorbar is not None, system["name"]
            segments = container.errorbar.lines[2][0].get_segments()
            for bar, (low, high), metric in zip(container, segments, ("hit@1", "mrr", "ndcg@5", "ndcg@10")):
                mean = system["metrics"][metric]
                assert bar.get_height() == pytest.approx(mean, abs=1e-12)
                assert low[1] <= mean + 1e-12 and high[1] >= mean - 1e-12 and high[1] > low[1], system["name"]
        paired = [s for s in result["systems"] if s["vs_dense"]]
        drawn = diffs.containers
        assert len(drawn) == len(paired)
        for container, system in zip(drawn, paired):
            (low, _), (high, _) = container.lines[2][0].get_segments()[0]
            assert (low, high) == pytest.approx(tuple(system["vs_dense"]["ci95"]), abs=1e-12)
    finally:
        plt.close(fig)


def _mark_pixels(path: Path) -> dict[str, int]:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = {"relevant": relevance_mark(2)[0], "partly": relevance_mark(1)[0], "not": relevance_mark(0)[0]}
    return {k: int(np.all(pixels == c, axis=1).sum()) for k, c in colours.items()}


def test_relevance_marks_only_when_labels_are_given(tmp_path):
    assert relevance_mark(None) is None
    assert "not relevant" not in relevance_mark(2)[1] and "grade 2" in relevance_mark(2)[1]
    assert "not relevant" not in relevance_mark(1)[1] and "not relevant" in relevance_mark(0)[1]
    labelled = contact_sheet(render.SHEET_QUERY, render.sheet_tiles(labelled=True), tmp_path / "labelled.png")
    unlabelled = contact_sheet(render.SHEET_QUERY, render.sheet_tiles(labelled=False), tmp_path / "plain.png")
    marks = _mark_pixels(labelled)
    border = 2 * BORDER * THUMB  # at least the two side borders of a tile's thumbnail height
    assert marks["relevant"] > 2 * border and marks["partly"] > border and marks["not"] > 2 * border
    assert _mark_pixels(unlabelled) == {"relevant": 0, "partly": 0, "not": 0}
    with Image.open(unlabelled) as im:  # no tag line under the names
        assert im.size == (SHEET_WIDTH, TITLE + TILE_HEIGHT + 15 + GAP)


def test_contact_sheet_thumbnails_fill_their_tiles(tmp_path):
    path = contact_sheet(render.SHEET_QUERY, render.sheet_tiles(labelled=False)[:1], tmp_path / "one.png")
    top, left = TITLE + BORDER + HEADER, GAP + BORDER
    tile = np.asarray(Image.open(path).convert("L"))[top: top + THUMB, left: left + THUMB]
    ink = np.argwhere(tile < 128)  # the handwritten seven's dark pixels
    rows, cols = ink[:, 0], ink[:, 1]
    assert rows.max() - rows.min() > 100 and cols.max() - cols.min() > 60  # scaled up from 64 px, not a stamp
