"""Tables and plots of ``minireranker eval`` (eval.md, eval.png) and ``calibrate`` (report.md, pareto.png).

Plots need matplotlib (the ``plot`` extra); without it the functions return False and only JSON and
Markdown are written.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.profiling.report import pyplot as _pyplot
from .metrics import METRICS

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


def eval_plot(result: dict, path: Path) -> bool:
    """Grouped bars: one group per metric, one bar per system."""
    plt = _pyplot()
    if plt is None:
        return False
    systems = result["systems"]
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(METRICS) + 0.25 * len(systems), 4.2))
    for j, s in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(METRICS))]
        ax.bar(xs, [s["metrics"][m] for m in METRICS], width, label=s["name"], color=plt.get_cmap("tab10")(j % 10))
    ax.set_xticks(range(len(METRICS)), [LABELS[m] for m in METRICS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over queries")
    ax.set_title(f"minireranker eval: {Path(result['data']).name}, {systems[0]['metrics']['queries']} queries")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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


def pareto_plot(result: dict, path: Path) -> bool:
    """Fidelity against FLOPs and against K/V bytes per query; frontier joined, chosen starred, target dashed."""
    plt = _pyplot()
    if plt is None:
        return False
    pts, chosen = result["points"], result["chosen"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, key, label in ((axes[0], "flops_per_query", "GFLOP per query"),
                           (axes[1], "kv_bytes_per_query", "K/V MiB read per query")):
        scale = 1e9 if key.startswith("flops") else 2**20
        xs = [p[key] / scale for p in pts]
        ax.scatter(xs, [p["fidelity"] for p in pts], s=14, c=[p["keep_ratio"] for p in pts], cmap="viridis",
                   vmin=0, vmax=1, alpha=0.6, label="swept spec (colour: keep ratio)")
        front = sorted((p[key] / scale, p["fidelity"]) for p in pts if p["on_frontier"])
        ax.plot([f[0] for f in front], [f[1] for f in front], "o", mfc="none", mec="crimson", ms=8,
                label="Pareto frontier")
        ax.axhline(result["target"], ls="--", color="grey", lw=1, label=f"target {result['target']:g}")
        if chosen is not None:
            ax.plot(pts[chosen][key] / scale, pts[chosen]["fidelity"], "*", color="crimson", ms=16,
                    label=f"chosen: {pts[chosen]['label']}")
        if min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(label + " (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fidelity ({result['fidelity']['short']})")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"minireranker calibrate: {Path(result['checkpoint']).name}, {result['cost']['candidates']} candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
