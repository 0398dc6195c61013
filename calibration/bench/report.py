"""The tables and the plot of ``minireranker bench`` (results.md, results.png); see calibration/bench/harness.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...runtime.profiling.report import pyplot, save_figure, write_report
from .flags import ERRORS
from .systems import STAGES


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%" if x < 0.1 else f"{x:.3g}x"


def _bytes(n: float | None) -> str:
    if not n:
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def render_markdown(result: dict) -> str:
    """The run's three tables: totals, stages, and what bounds the warm rerank."""
    st, m, systems = result["settings"], result["machine"], list(result["systems"].values())
    tokens = sorted({r["query_tokens"] for s in systems for r in s["runs"] if "query_tokens" in r})
    segment = f" (query segments of {tokens[0]}–{tokens[-1]} tokens)" if tokens else ""
    out = [f"Preset `{result['preset']['name']}`, {st['candidates']} candidates, one query per repeat{segment}, "
           f"{st['repeats']} repeats: median [min – max]. {m['cpu']}, {m['cores']} cores, {result['created']}.", "",
           "| system | per query | [min – max] | vs (a) | vs (b) | vs best dense ³ | K/V per query | "
           "peak RSS serve / index | index 1 doc | CPU used by others ¹ |", "|---|" + "---:|" * 9]
    for s in systems:
        t, rss, idx = s["total_s"], s["peak_rss_bytes"], s["index_one_doc"]
        scaled = f" ² {s['measured_pairs']} pairs measured, scaled" if s["scaled"] else ""
        other = "–" if s["contention_max"] is None else f"≤ {100 * s['contention_max']:.0f}%"
        ratios = (" | ".join(["measurement error ⁴"] * 3) if s.get("measurement_error") else
                  " | ".join(_ratio(s.get(k)) for k in ("ratio_to_dense_transformers", "ratio_to_dense_onnx",
                                                       "ratio_to_best_dense")))
        out.append(f"| {s['label']}{scaled} | {_s(t['median'])} | [{_s(t['min'])} – {_s(t['max'])}] | {ratios} | "
                   f"{_bytes(s['kv_bytes_read_per_query'])} | {_bytes(rss['serve'])} / {_bytes(rss['index'])} | "
                   f"{_s(idx and idx['per_doc_s']['median'])} | {other} |")
    names = [k for k in STAGES if any(s["stages_s"][k]["median"] > 0 for s in systems)]
    out += ["", "Per stage, median per query (the query head's runs per query in brackets):", "",
            "| system | " + " | ".join(names) + " | other | total |", "|---|" + "---:|" * (len(names) + 2)]
    for s in systems:
        cells = [_s(s["stages_s"][k]["median"]) + (f" ({s['query_head_runs_per_query']}×)" if k == "query_head" else "")
                 for k in names]
        out.append(f"| {s['label']} | " + " | ".join(cells)
                   + f" | {_s(s['other_s']['median'])} | {_s(s['total_s']['median'])} |")
    out += ["", "What bounds the warm rerank: its K/V bytes at this run's memcpy rate (K/V floor) and its FLOPs at "
            "this run's GEMM rate (compute floor):", "",
            "| system | K/V read | read GiB/s | memcpy GiB/s | K/V floor | total / K/V floor | GFLOP | GEMM GFLOP/s "
            "| compute floor | total / compute floor |", "|---|" + "---:|" * 9]
    for s in systems:
        if (b := s["bounds"]) is not None:
            out.append(f"| {s['label']} | {_s(b['kv_read_s'])} | {b['read_gib_s']:.2f} | {b['memcpy_gib_s']:.2f} | "
                       f"{_s(b['kv_floor_s'])} | {b['total_over_kv_floor']:.1f}x | {b['gflop_per_query']:.3g} | "
                       f"{b['gemm_gflops']:.0f} | {_s(b['compute_floor_s'])} | {b['total_over_compute_floor']:.2f}x |")
    out += _batch_lines(result) + _marginal_lines(result)
    out += ["", "¹ the largest share of all cores that other processes used during one of the system's timed runs."]
    if any(s["scaled"] for s in systems):
        out.append(f"² dense is linear in the number of pairs: timed on a subset, scaled to {st['candidates']}.")
    best = result.get("best_dense")
    if best:
        out.append(f"³ the best dense baseline of this run: {result['systems'][best['system']]['label']}.")
    out += [f"⁴ {s['label']}: {f['detail']}." if f["flag"] in ERRORS else f"Note, {s['label']}: {f['detail']}."
            for s in systems for f in s.get("flags", [])]
    return "\n".join(out) + "\n"


def _batch_lines(result: dict) -> list[str]:
    """(a2)'s time per query at each batch size it tried."""
    s = result["systems"].get("dense_transformers_batched")
    if s is None:
        return []
    sizes = ", ".join(f"{size}: {_s(t['median'])}" for size, t in s["by_batch_size"].items())
    return ["", f"(a2) per query at each batch size (median; the best, {s['batch_size']}, is its row above): {sizes}."]


def _marginal_lines(result: dict) -> list[str]:
    """The marginal cost per candidate through the command line, warm, against dense per pair."""
    m = result.get("marginal")
    if not m:
        return []
    c, labels = m["configuration"], {k: result["systems"][k]["label"] for k in m["ratio_to"]}
    spec = c["spec"]
    out = ["", f"Marginal cost per candidate through the command line (`{' '.join(m['command'])}`, warm cache, "
           f"{c['candidates']} candidates against 1, {c['repeats']} repeats, median; {c['system']}: exit "
           f"{spec['exit_layer']}, band {spec['band'][0]}-{spec['band'][1]}, keep {spec['keep_ratio']:g}, "
           f"{c['tokens_per_doc']} tokens per document; target ≤ {100 * m['target']:g}%, aim {100 * m['aim']:g}%):",
           "", f"| t_{c['candidates']} | t_1 | marginal per candidate | dense per pair | marginal / dense per pair |",
           "|---:|---:|---:|---|---:|"]
    for name, ratio in m["ratio_to"].items():
        shown = "measurement error ⁴" if m["measurement_error"] else _ratio(ratio)
        out.append(f"| {_s(m['t_n_s']['median'])} | {_s(m['t_1_s']['median'])} | "
                   f"{_s(m['marginal_per_candidate_s'])} | {labels[name]}: {_s(m['dense_per_pair_s'][name])} | "
                   f"{shown} |")
    if not m["ratio_to"]:  # no dense system in this run's --systems
        out.append(f"| {_s(m['t_n_s']['median'])} | {_s(m['t_1_s']['median'])} | "
                   f"{_s(m['marginal_per_candidate_s'])} | – | – |")
    out += [f"⁴ marginal: {f['detail']}." for f in m["flags"]]
    return out


SHARE_LABEL_MIN = 6.0  # percent: a share this wide or wider is written inside its segment


def _stage_seconds(systems: list[dict]) -> tuple[list[str], list[dict[str, float]]]:
    """The stages (and ``other``) any system spent time in, and each system's median seconds per stage."""
    seconds = [{k: max(0.0, (s["other_s"] if k == "other" else s["stages_s"][k])["median"]) for k in (*STAGES, "other")}
               for s in systems]
    return [k for k in (*STAGES, "other") if any(x[k] > 0 for x in seconds)], seconds


def _share_bars(ax: Any, names: list[str], seconds: list[dict[str, float]], colors: dict[str, Any]) -> None:
    """One bar per system (row), its stages' shares of its time stacked from 0 to 100% on a linear axis."""
    for row, x in enumerate(seconds):
        total, left = sum(x[k] for k in names), 0.0
        for k in names:
            pct = 100 * x[k] / total if total > 0 else 0.0
            ax.barh(row, pct, left=left, height=0.7, color=colors[k], label=k if row == 0 else None)
            if pct >= SHARE_LABEL_MIN:
                ax.text(left + pct / 2, row, f"{pct:.0f}%", ha="center", va="center", fontsize=7,
                        color="black" if k == "other" else "white")
            left += pct
    ax.set_xlim(0, 100)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("share of the system's time per stage (%, linear)")
    ax.grid(axis="x", alpha=0.3)


def stage_figure(result: dict) -> Any:
    """Left: each system's total seconds per query (median) as a dot on a log axis, where totals differ by
    orders of magnitude; right: its stages as shares of that total, stacked on a linear 0-100% axis, so a
    stage's width is its share. Stages are never stacked on the log axis (a log axis turns a stacked
    segment's length into nonsense). The matplotlib figure, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    systems = list(result["systems"].values())
    names, seconds = _stage_seconds(systems)
    colors = {k: "0.75" if k == "other" else plt.get_cmap("tab10")(j) for j, k in enumerate(names)}
    fig, (ax, share) = plt.subplots(1, 2, figsize=(12, 1.9 + 0.55 * len(systems)), sharey=True,
                                    gridspec_kw={"width_ratios": [2, 3]})
    rows = range(len(systems))
    totals = [s["total_s"]["median"] for s in systems]
    ax.plot(totals, rows, "o", color="black", ms=6, zorder=3)
    for row, t in zip(rows, totals):
        ax.annotate(_s(t), (t, row), xytext=(7, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(totals) / 3, max(totals) * 6)  # room for the labels right of the dots
    ax.set_xlabel("total seconds per query, median (log scale)")
    ax.grid(axis="x", which="major", alpha=0.4)
    ax.set_yticks(list(rows), [s["label"] for s in systems], fontsize=8)
    ax.set_ylim(len(systems) - 0.5, -0.5)  # first system on top
    _share_bars(share, names, seconds, colors)
    st = result["settings"]
    fig.suptitle(f"minireranker bench: preset {result['preset']['name']}, {st['candidates']} candidates")
    fig.legend(fontsize=8, ncol=len(names), loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))  # the legend's row, 0.35 inch, below the axes
    return fig


def write_plot(result: dict, path: Path) -> bool:
    """results.png: :func:`stage_figure` as a PNG; False (nothing written) without matplotlib."""
    fig = stage_figure(result)
    return fig is not None and bool(save_figure(fig, path))


def write_results(out: Path, result: dict, log: Callable[[str], None]) -> None:
    """Write results.json, results.md and results.png (when matplotlib is there) and log the tables."""
    table = render_markdown(result)
    written = write_report(out, result, table, "results.json", "results.md", "results.png", write_plot)
    log("\n" + table)
    log(written.summary())
