"""Tables and plots of ``minireranker eval`` (eval.md, eval.png) and ``calibrate`` (report.md, pareto.png).

Plots need matplotlib (the ``plot`` extra); without it the functions return False and only JSON and
Markdown are written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.profiling.report import pyplot as _pyplot, save_figure
from .metrics import METRICS, paired_difference, per_query

LABELS = {"hit@1": "Hit@1", "mrr": "MRR", "ndcg@5": "nDCG@5", "ndcg@10": "nDCG@10"}


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{1e3 * s:.0f} ms"


def _reference_note(result: dict) -> str:
    """Which dense system the fractions and differences are of, and what the other dense row is."""
    ref, trained = result.get("reference_system", "dense"), result.get("trained")
    names = {s["name"] for s in result["systems"]}
    if trained is None:  # an eval.json of schema 1: always vision-first dense
        return "Reference: `dense`."
    if trained != "query-first":
        return (f"Reference: `dense` (--reference {result['reference']}). The checkpoint was trained in the "
                f"order it runs ({trained}), so `dense` is also dense in its trained format: there is no "
                "separate `dense, trained format` row.")
    other = "dense" if ref != "dense" else "dense, trained format"
    what = {"dense": "dense in the order miniReranker runs (vision-first: the document before the query)",
            "dense, trained format": "dense in the order the checkpoint was trained in (query-first: system, "
                                     "instruction, query, then the document)"}
    note = f"Reference: `{ref}`, {what[ref]} (--reference {result['reference']})."
    return note + (f" `{other}` is {what[other]}." if other in names else "")


def eval_markdown(result: dict) -> str:
    """Metrics per system, then each system's fraction of the reference dense system, then the consistency check."""
    systems = result["systems"]
    ref = result.get("reference_system", "dense")
    m0 = systems[0]["metrics"]
    excluded = f", {m0['excluded']} excluded (no relevant candidate)" if m0["excluded"] else ""
    out = [f"`{result['data']}`: {m0['queries']} queries scored{excluded}, "
           f"{result['consistency']['pairs']} pairs; checkpoint `{result['checkpoint']}`.", "",
           _reference_note(result), "",
           "| system | " + " | ".join(LABELS[m] for m in METRICS) + " | time |", "|---|" + "---:|" * (len(METRICS) + 1)]
    for s in systems:
        out.append(f"| {s['name']} | " + " | ".join(_f(s["metrics"][m]) for m in METRICS)
                   + f" | {_seconds(s['wall_s'])} |")
    out += ["", f"Fraction of the reference, `{ref}` (metric of the system / metric of `{ref}`):", "",
            "| system | " + " | ".join(LABELS[m] for m in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for s in systems:
        out.append(f"| {s['name']} | " + " | ".join(_pct(s["fraction_of_dense"][m]) for m in METRICS) + " |")
    paired = [s for s in systems if s.get("vs_dense")]
    if paired:
        out += ["", f"nDCG@10 minus `{ref}`'s, query by query (mean, 95% paired-bootstrap interval; wins / losses "
                f"are queries above / below `{ref}`). An interval that excludes 0 is a clear difference:", "",
                "| system | difference | 95% interval | wins / losses |", "|---|---:|---:|---:|"]
        for s in paired:
            v = s["vs_dense"]
            out.append(f"| {s['name']} | {v['delta']:+.3f} | [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] | "
                       f"{v['wins']} / {v['losses']} |")
    c = result["consistency"]
    out += ["", f"Consistency: max |{c['exact_system']} - dense| = {c['max_abs_exact_minus_dense']:.2e} over "
            f"{c['pairs']} pairs (score = logit yes - logit no; `dense` is the vision-first sequence the exact "
            "spec caches, whatever the reference)."]
    return "\n".join(out) + "\n"


def _mean_ci95(result: dict, system: dict, metric: str) -> tuple[float, float] | None:
    """95% bootstrap interval of ``system``'s mean ``metric`` over the queries eval averaged (the interval of a
    mean is that of its paired difference from zero); None where eval.json holds no per-query scores."""
    if "scores" not in system or "queries" not in result:
        return None
    values = per_query(system["scores"], [q["grades"] for q in result["queries"]], metric)
    if not len(values):
        return None
    low, high = paired_difference(values, np.zeros(len(values)))["ci95"]
    return low, high


def _eval_bars(ax, result: dict, colors) -> None:
    """Grouped bars, one group per metric, one bar per system, each with its 95% bootstrap interval."""
    systems = result["systems"]
    width = 0.8 / len(systems)
    for j, s in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(METRICS))]
        means = [s["metrics"][m] for m in METRICS]
        cis = [_mean_ci95(result, s, m) for m in METRICS]
        err = None if None in cis else np.array([[mu - lo, hi - mu] for mu, (lo, hi) in zip(means, cis)]).T
        ax.bar(xs, means, width, yerr=err, capsize=2.5, error_kw={"elinewidth": 1, "ecolor": "0.15"},
               label=s["name"], color=colors(j))
    ax.set_xticks(range(len(METRICS)), [LABELS[m] for m in METRICS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over queries (whiskers: 95% bootstrap interval)")
    ax.grid(axis="y", alpha=0.3)


def _eval_differences(ax, result: dict, colors) -> None:
    """Each system's nDCG@10 minus the reference's, with eval's paired 95% interval; 0 dashed."""
    from matplotlib.ticker import MaxNLocator

    ref = result.get("reference_system", "dense")
    rows = [(j, s) for j, s in enumerate(result["systems"]) if s.get("vs_dense")]
    for row, (j, s) in enumerate(rows):
        v = s["vs_dense"]
        ax.errorbar(v["delta"], row, xerr=[[v["delta"] - v["ci95"][0]], [v["ci95"][1] - v["delta"]]], fmt="o",
                    color=colors(j), ecolor=colors(j), capsize=4, elinewidth=2, ms=7)
    ax.axvline(0, color="0.3", ls="--", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(5))  # differences of a few hundredths: few, readable labels
    ax.set_yticks(range(len(rows)), [s["name"] for _, s in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(f"nDCG@10 minus {ref}'s\n(mean and 95% paired interval)")
    ax.set_title("an interval that excludes 0 is a clear difference", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def eval_figure(result: dict) -> Any:
    """Left: grouped bars, one group per metric, one bar per system, with 95% bootstrap intervals of each mean;
    right (when eval compared systems): nDCG@10 minus the reference's with eval's paired 95% intervals. The
    matplotlib figure, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    systems = result["systems"]
    paired = any(s.get("vs_dense") for s in systems)
    wide = 2.2 + 1.6 * len(METRICS) + 0.25 * len(systems)
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(wide + (4.2 if paired else 0), 4.4), squeeze=False,
                             gridspec_kw={"width_ratios": [wide, 4.2] if paired else [1]}, layout="constrained")
    def colors(j: int):  # a system's colour, the same in both panels
        return plt.get_cmap("tab10")(j % 10)

    _eval_bars(axes[0][0], result, colors)
    if paired:
        _eval_differences(axes[0][1], result, colors)
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, ncol=len(systems), loc="outside lower center")
    fig.suptitle(f"minireranker eval: {Path(result['data']).name}, {systems[0]['metrics']['queries']} queries")
    return fig


def eval_plot(result: dict, path: Path) -> bool:
    """eval.png: :func:`eval_figure` as a PNG; False (nothing written) without matplotlib."""
    fig = eval_figure(result)
    return fig is not None and bool(save_figure(fig, path))


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _calibration_reference(result: dict) -> str:
    """The reference dense system, its metrics, and the other dense system's fidelity against it."""
    ref = result.get("reference_system", "dense")
    metrics = result["dense_metrics"]
    line = f"Reference: `{ref}` (--reference {result.get('reference', 'vision-first')}): " + (
        ", ".join(f"{LABELS[m]} {_f(v)}" for m, v in metrics.items() if m in LABELS) if metrics
        else "label-free set, no metrics") + "."
    change = result.get("format_change")
    if change is not None:
        order = ("vision-first, the order miniReranker runs" if change["system"] == "dense"
                 else "query-first, the order the checkpoint was trained in")
        line += (f" `{change['system']}` ({order}) has fidelity {change['fidelity']:.4f} against it: the order "
                 "change alone.")
    elif result.get("trained"):
        line += f" The checkpoint was trained in the order it runs ({result['trained']}): one dense system."
    return line


def calibration_markdown(result: dict) -> str:
    """Settings, the choice (or why none), and the frontier and every point sorted by cost."""
    fid = result["fidelity"]
    out = [f"Calibration of `{result['checkpoint']}` on `{result['data']}`: {result['queries']} queries, "
           f"{len(result['points'])} specs swept; fidelity = {fid['description']}; target {result['target']:g}.",
           f"Cost per query for {result['cost']['candidates']} candidates ({result['cost']['precision']} K/V), "
           f"warm (documents indexed beforehand). Query position P = {result['query_position']} for specs with A > 0.",
           _calibration_reference(result), ""]
    chosen = result["chosen"]
    if chosen is None:
        best = max(result["points"], key=lambda p: p["fidelity"])
        out += [f"**No swept spec meets the target {result['target']:g}**; the best reaches {best['fidelity']:.4f} "
                f"({best['label']}). Lower --target or widen the grid.", ""]
    else:
        p = result["points"][chosen]
        out += [f"**Chosen**: {p['label']}: fidelity {p['fidelity']:.4f}, {p['flops_per_query'] / 1e9:.3g} GFLOP "
                f"and {_mb(p['kv_bytes_per_query'])} K/V per query ({p['flops_per_query'] / result['exact_cost']['flops_per_query']:.1%} "
                f"of the exact spec's FLOPs).", ""]
        if result.get("exit_head"):
            h = result["exit_head"]
            out += [f"**Exit head** (`--exit-head`): a linear head on layer {p['spec']['exit_layer']}'s normed hidden "
                    f"state fitted to the trained order's dense scores, body untouched, in `{h['checkpoint']}`: mean "
                    f"|score - dense| {h['yes_no_rows']['mean_abs']:.4f} with the yes/no rows -> "
                    f"{h['exit_head']['mean_abs']:.4f} with the head, Spearman {h['yes_no_rows']['spearman']:.3f} -> "
                    f"{h['exit_head']['spearman']:.3f} (on the calibration set itself).", ""]
    head = ["| spec | fidelity | agreement (Spearman) | GFLOP/query | K/V per query | frontier |", "|---|---:|---:|---:|---:|:---:|"]
    rows = sorted(range(len(result["points"])), key=lambda i: (result["points"][i]["flops_per_query"],
                                                                result["points"][i]["kv_bytes_per_query"]))
    def line(i: int) -> str:
        p = result["points"][i]
        mark = "**" if i == chosen else ""
        return (f"| {mark}{p['label']}{mark} | {p['fidelity']:.4f} | {p['agreement_spearman']:.4f} | "
                f"{p['flops_per_query'] / 1e9:.4g} | {_mb(p['kv_bytes_per_query'])} | {'●' if p['on_frontier'] else ''} |")
    out += ["Pareto frontier (no other spec is at most as costly in FLOPs and K/V bytes and at least as faithful):",
            "", *head, *[line(i) for i in rows if result["points"][i]["on_frontier"]], "", "Every spec swept:", "",
            *head, *[line(i) for i in rows]]
    return "\n".join(out) + "\n"


FLOP_UNITS = ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1.0, "FLOP"))
BYTE_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "bytes"))


def _unit(values: list[float], units: tuple[tuple[float, str], ...]) -> tuple[float, str]:
    """The largest unit in which the largest value is at least 1, so ticks read 75, 150 rather than 0.075."""
    top = max(values, default=0.0)
    return next(((scale, name) for scale, name in units if top >= scale), units[-1])


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions for a log axis over [lo, hi] (lo > 0): 1-2-5 steps, 1-1.5-2-3-5-7 where that gives fewer
    than four, decades alone (at most seven) where it gives more than seven, the ends and middle where a range
    is too narrow for any of these; labelled plainly (``%g``), they never crowd."""
    exponents = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** e for e in exponents for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 4:
            break
    if len(ticks) < 2:  # a range narrower than 1 to 1.5: its ends and middle, to two significant digits
        return sorted({float(f"{x:.2g}") for x in (lo * 1.05, math.sqrt(lo * hi), hi / 1.05)})
    if len(ticks) <= 7:
        return ticks
    decades = [t for t in ticks if math.log10(t) == round(math.log10(t))]
    return decades[::math.ceil(len(decades) / 7)]  # every other (third...) decade past seven


def _log_axis(ax, values: list[float]) -> None:
    """Log x axis over ``values`` with a margin, plain major labels at :func:`log_ticks`, no minor labels."""
    from matplotlib.ticker import NullFormatter

    lo, hi = min(values) / 1.15, max(values) * 1.15
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xticks(ticks := log_ticks(lo, hi), [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto_figure(result: dict) -> Any:
    """Fidelity against FLOPs and against K/V bytes per query, each spec coloured by its keep ratio (the colour
    bar at the right); frontier circled, chosen starred, target dashed. Log x axes with plain, spaced labels
    when every cost is positive. The matplotlib figure, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    pts, chosen = result["points"], result["chosen"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, layout="constrained")
    for ax, key, units, what in ((axes[0], "flops_per_query", FLOP_UNITS, "compute per query"),
                                 (axes[1], "kv_bytes_per_query", BYTE_UNITS, "K/V read per query")):
        scale, unit = _unit([p[key] for p in pts], units)
        xs = [p[key] / scale for p in pts]
        dots = ax.scatter(xs, [p["fidelity"] for p in pts], s=18, c=[p["keep_ratio"] for p in pts],
                          cmap="viridis", vmin=0, vmax=1, alpha=0.75, label="swept spec (colour: keep ratio)")
        ax.axhline(result["target"], ls="--", color="grey", lw=1, label=f"target {result['target']:g}")
        if chosen is not None:  # under the frontier's rings, so the ring around the chosen spec still shows
            ax.plot(pts[chosen][key] / scale, pts[chosen]["fidelity"], "*", color="gold", mec="black", ms=17,
                    zorder=3, label=f"chosen: {pts[chosen]['label']}")
        front = sorted((p[key] / scale, p["fidelity"]) for p in pts if p["on_frontier"])
        ax.plot([f[0] for f in front], [f[1] for f in front], "o", mfc="none", mec="crimson", ms=8, zorder=4,
                label="Pareto frontier")
        if min(xs) > 0:
            _log_axis(ax, xs)
        ax.set_xlabel(f"{what} ({unit}" + (", log scale)" if min(xs) > 0 else ")"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fidelity ({result['fidelity']['short']})")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.colorbar(dots, ax=list(axes), fraction=0.03, pad=0.02).set_label(
        "keep ratio (share of document tokens kept)")
    fig.suptitle(f"minireranker calibrate: {Path(result['checkpoint']).name}, {result['cost']['candidates']} candidates")
    return fig


def pareto_plot(result: dict, path: Path) -> bool:
    """pareto.png: :func:`pareto_figure` as a PNG; False (nothing written) without matplotlib."""
    fig = pareto_figure(result)
    return fig is not None and bool(save_figure(fig, path))
