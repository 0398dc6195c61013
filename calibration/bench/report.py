"""The tables and the plot of ``minireranker bench`` (results.md, results.png); see calibration/bench/harness.py."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...runtime.profiling.report import pyplot, write_report
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


def write_plot(result: dict, path: Path) -> bool:
    """Left: each system's stages stacked, in seconds per query on a log axis (where the totals differ by
    orders of magnitude); right: the same stages as shares of each total. False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    systems = list(result["systems"].values())
    seconds = [{k: max(0.0, (s["other_s"] if k == "other" else s["stages_s"][k])["median"]) for k in (*STAGES, "other")}
               for s in systems]
    names = [k for k in (*STAGES, "other") if any(x[k] > 0 for x in seconds)]
    fig, (ax, share) = plt.subplots(1, 2, figsize=(13, 1.8 + 0.6 * len(systems)), sharey=True,
                                    gridspec_kw={"width_ratios": [3, 2]})
    for row, (s, x) in enumerate(zip(systems, seconds)):
        total, left, part = sum(x[k] for k in names), 0.0, 0.0
        for j, k in enumerate(names):
            color = plt.get_cmap("tab10")(j)
            ax.barh(row, x[k], left=left, color=color, label=k if row == 0 else None)
            share.barh(row, 100 * x[k] / total, left=part, color=color)
            left, part = left + x[k], part + 100 * x[k] / total
        ax.text(left * 1.15, row, _s(s["total_s"]["median"]), va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(left=min(s["total_s"]["median"] for s in systems) / 20)  # the first stage starts off-axis
    ax.set_yticks(range(len(systems)), [s["label"] for s in systems], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per query, median (log scale, stages stacked)")
    share.set_xlabel("share of the system's time (%)")
    share.set_xlim(0, 100)
    st = result["settings"]
    fig.suptitle(f"minireranker bench: preset {result['preset']['name']}, {st['candidates']} candidates")
    fig.legend(fontsize=7, ncol=len(names), loc="lower center")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(out: Path, result: dict, log: Callable[[str], None]) -> None:
    """Write results.json, results.md and results.png (when matplotlib is there) and log the tables."""
    table = render_markdown(result)
    written = write_report(out, result, table, "results.json", "results.md", "results.png", write_plot)
    log("\n" + table)
    log(written.summary())
