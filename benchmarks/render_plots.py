"""Render every plot the toolkit writes from small hand-made results, for docs/plots.md and tests/test_plots.py.

    python benchmarks/render_plots.py --out docs/plots          # writes <name>-after.png for each name below

No model runs: each fixture is a result in the structure its report code reads (results.json of ``bench``,
calibration.json of ``calibrate``, profile.json of ``profile``, eval.json of ``eval``) with made-up but
self-consistent numbers, and the contact sheet uses the demo corpus's own images. Names and writers:

======================  ===========================================================  =====================
name                    writer                                                       fixture
======================  ===========================================================  =====================
``bench``               ``calibration.bench.report.write_plot``                      :func:`bench_result`
``pareto``              ``calibration.report.pareto_plot``                           :func:`pareto_result`
``profile``             ``runtime.profiling.profile.plot_profile``                   :func:`profile_result`
``eval``                ``calibration.report.eval_plot``                             :func:`eval_result`
``contact-sheet``       ``calibration.demo.run.contact_sheet`` (labels known)        :func:`sheet_tiles`
======================  ===========================================================  =====================
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

from minireranker.calibration.bench.report import write_plot
from minireranker.calibration.bench.systems import STAGES as BENCH_STAGES
from minireranker.calibration.calibrate import choose, frontier
from minireranker.calibration.demo.run import ASSETS, SheetTile, contact_sheet
from minireranker.calibration.metrics import METRICS, paired_difference, per_query, summarize
from minireranker.calibration.report import eval_plot, pareto_plot
from minireranker.runtime.documents import Document
from minireranker.runtime.profiling.cost import STAGES as PROFILE_STAGES
from minireranker.runtime.profiling.profile import plot_profile

def _bench_system(label: str, other: float, **stages: float) -> dict:
    total = other + sum(stages.values())
    return {"label": label, "stages_s": {k: {"median": stages.get(k, 0.0)} for k in BENCH_STAGES},
            "other_s": {"median": other}, "total_s": {"median": total}}


def bench_result() -> dict:
    """A bench run's results.json, in the fields the plot reads: dense's preprocess is 11% of its total."""
    systems = {
        "dense_transformers": _bench_system("(a) dense, transformers", 0.06, preprocess=0.22, vision=0.62, lm=1.10),
        "dense_transformers_batched": _bench_system("(a2) dense, transformers, batched", 0.04, preprocess=0.21,
                                                    vision=0.45, lm=0.70),
        "dense_onnx": _bench_system("(b) dense, ONNX", 0.03, preprocess=0.20, vision=0.30, doc_prefix=0.25,
                                    band=0.12),
        "prefix_reuse": _bench_system("(c) prefix reuse", 0.002, query_head=0.004, kv_read=0.018, band=0.030,
                                      tail=0.006),
        "minireranker": _bench_system("(d) miniReranker", 0.0005, query_head=0.002, kv_read=0.003, band=0.005,
                                      tail=0.0015),
    }
    return {"preset": {"name": "small"}, "settings": {"candidates": 20}, "systems": systems}


def pareto_result() -> dict:
    """A calibrate run's calibration.json: 36 specs (exit layer x band x keep ratio), frontier and choice computed."""
    points = []
    for exit_layer in (3, 4, 5):
        for band in (1, 2, 3):
            for keep in (0.25, 0.5, 0.75, 1.0):
                tokens = 64 * (0.2 + 0.8 * keep)
                fidelity = 1 - 0.35 * np.exp(-0.45 * exit_layer - 0.35 * band - 1.2 * keep)
                points.append({"label": f"exit {exit_layer}, band {band}, keep {keep:g}", "fidelity": float(fidelity),
                               "agreement_spearman": fidelity, "keep_ratio": keep,
                               "flops_per_query": 0.75e6 * (exit_layer + 1) * tokens,  # a tiny model's sizes
                               "kv_bytes_per_query": 500 * band * tokens})
    for p, on in zip(points, frontier(points)):
        p["on_frontier"] = on
    return {"checkpoint": "assets/reranker", "points": points, "chosen": choose(points, 0.98), "target": 0.98,
            "fidelity": {"short": "nDCG@10 / dense"}, "cost": {"candidates": 20}}


def _profile_run(cache: str, n: int, q: int, **ms: float) -> dict:
    stages = {s: {"p50": ms.get(s, 0.0) * (1 if s in ("query_head",) else n)} for s in PROFILE_STAGES}
    return {"cache": cache, "candidates": n, "query_tokens": q, "stages": stages,
            "total": {"p50": 0.3 + sum(v["p50"] for v in stages.values())}}


def profile_result() -> dict:
    """A profile run's profile.json, in the fields the plot reads: warm over 3 x 3 points, cold-unindexed over 3,
    where ``index`` is about 97% of ``total``."""
    per_doc = {"kv_lookup": 0.004, "kv_read": 0.02, "band": 0.05, "tail": 0.01}
    runs = [_profile_run("warm", n, q, query_head=1.5 + 0.05 * q, **per_doc)
            for q in (4, 16, 64) for n in (10, 100, 1000)]
    runs += [_profile_run("cold-unindexed", n, 16, query_head=2.3, index=3.0, **per_doc) for n in (10, 100, 1000)]
    return {"providers": [{"providers": ["CPUExecutionProvider"], "runs": runs}]}


def _eval_system(name: str, kind: str, scores: list[np.ndarray], grades: list[np.ndarray],
                 reference: list[np.ndarray] | None) -> dict:
    metrics = summarize(scores, grades).to_dict()
    vs = None if reference is None else paired_difference(per_query(scores, grades, "ndcg@10"),
                                                          per_query(reference, grades, "ndcg@10"))
    return {"name": name, "kind": kind, "metrics": metrics, "vs_dense": vs, "wall_s": 1.0,
            "scores": [s.tolist() for s in scores]}


def eval_result(queries: int = 30, candidates: int = 10, seed: int = 0) -> dict:
    """An eval run's eval.json: graded queries and four systems whose scores are the grades plus noise."""
    rng = np.random.default_rng(seed)
    grades = [rng.choice([0, 0, 0, 1, 2], size=candidates) for _ in range(queries)]
    noisy = {sd: [g + rng.normal(0, sd, candidates) for g in grades] for sd in (0.6, 0.9, 1.6)}
    dense = noisy[0.6]
    systems = [_eval_system("first stage", "embedder", noisy[1.6], grades, dense),
               _eval_system("dense", "dense", dense, grades, None),
               _eval_system("exact", "exact", [s + rng.normal(0, 1e-4, candidates) for s in dense], grades, dense),
               _eval_system("spec (calibrated)", "bundle", noisy[0.9], grades, dense)]
    for s in systems:
        s["fraction_of_dense"] = {m: s["metrics"][m] / systems[1]["metrics"][m] for m in METRICS}
    return {"data": "demo-heldout.jsonl", "checkpoint": "assets/reranker", "reference_system": "dense",
            "queries": [{"qid": str(i), "query": f"q{i}", "candidates": [f"d{j}" for j in range(candidates)],
                         "grades": g.tolist()} for i, g in enumerate(grades)],
            "systems": systems}


SHEET_QUERY = "a handwritten seven"


def sheet_tiles(labelled: bool = True) -> list[SheetTile]:
    """Five results for SHEET_QUERY from the demo corpus, best first; grades (2 / 1 / 0) only when ``labelled``."""
    images = ASSETS / "corpus" / "images"
    rows = [("heldout-d1719", images / "heldout-d1719.png", None, 3.10, 2),
            ("heldout-c0181", images / "heldout-c0181.png", None, 2.40, 1),
            ("heldout-d1339", images / "heldout-d1339.png", None, 1.90, 2),
            ("heldout-t001", None, "Someone wrote the number one on a card.", -0.40, 0),
            ("heldout-photo-chelsea", images / "heldout-photo-chelsea.jpg", None, -1.60, 0)]
    return [SheetTile(Document(image=str(image) if image else None, text=text, id=doc_id), rank, score, doc_id,
                      grade if labelled else None)
            for rank, (doc_id, image, text, score, grade) in enumerate(rows, 1)]


PLOTS: dict[str, Callable[[Path], object]] = {
    "bench": lambda path: write_plot(bench_result(), path),
    "pareto": lambda path: pareto_plot(pareto_result(), path),
    "profile": lambda path: plot_profile(profile_result(), path),
    "eval": lambda path: eval_plot(eval_result(), path),
    "contact-sheet": lambda path: contact_sheet(SHEET_QUERY, sheet_tiles(), path),
}


def render_plots(out: Path, suffix: str = "-after") -> dict[str, Path]:
    """Render each of :data:`PLOTS` to ``out/<name><suffix>.png``; returns the paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, render in PLOTS.items():
        paths[name] = out / f"{name}{suffix}.png"
        render(paths[name])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/plots"), help="folder for the PNGs (default docs/plots)")
    parser.add_argument("--suffix", default="-after", help="added to each name before .png (default -after)")
    args = parser.parse_args()
    for path in render_plots(args.out, args.suffix).values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
