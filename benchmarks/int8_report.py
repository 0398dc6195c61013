"""int8 band and tail weights against float on the demo's held-out set: rank fidelity, nDCG@10 and speed.

    python benchmarks/int8_report.py --out bench-out/int8

Builds a float and an int8-weights bundle (``BuildConfig(weights="int8")``) of the bundled demo reranker
under its calibrated spec (as ``minireranker demo`` does), scores every held-out query with both, and
reports per query Spearman of the int8 scores against the float ones (mean, min), nDCG@10 of each, the
relative nDCG@10 change, the max |score difference|, and the warm band + tail seconds per query of each
(the runtime's own timings; both bundles' documents indexed first, then ``--repeats`` passes over the
queries, the two bundles interleaved query by query and their order swapped every pass; the median over
passes of each query, then the mean over queries). Writes int8.json and int8.md to ``--out``, prints the
table, and says whether the criterion for making int8 the default holds: mean per-query Spearman >= 0.99
AND nDCG@10 within 1% of float's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from minireranker.calibration.data import load_labelled_set
from minireranker.calibration.demo.run import ASSETS, demo_spec
from minireranker.calibration.metrics import ndcg_at, spearman
from minireranker.export.onnx_export import BuildConfig, build_bundle
from minireranker.export.validation import TOLERANCES
from minireranker.runtime.reranker import Reranker

SYSTEMS = ("float", "int8")
MIN_SPEARMAN = 0.99     # mean over queries, int8 against float
MAX_NDCG_DROP = 0.01    # relative to float's nDCG@10


def _rerank(reranker: Reranker, query) -> tuple[np.ndarray, float]:
    """Scores in candidate order, and the seconds the band and tail took."""
    out = reranker.rerank(query.query, query.candidates)
    if out.failed:
        raise SystemExit(f"document {out.failed[0].document} failed: {out.failed[0].error}")
    scores = np.empty(len(query.candidates))
    for r in out.results:
        scores[r.index] = r.score
    return scores, out.timings.get("band", 0.0) + out.timings.get("tail", 0.0)


def measure(bundles: dict[str, Path], data, cache: Path, repeats: int) -> dict[str, dict]:
    """Scores (first pass) and per-query band + tail seconds (per pass) of each bundle, interleaved."""
    result = {name: {"scores": [None] * len(data.queries), "seconds": [[] for _ in data.queries]} for name in bundles}
    rerankers = {name: Reranker(path, cache / name) for name, path in bundles.items()}
    try:
        for r in rerankers.values():
            r.index(list(data.documents.values()))
        for i, q in enumerate(data.queries):  # warm-up: sessions, allocators, the K/V store's page cache
            for name, r in rerankers.items():
                result[name]["scores"][i] = _rerank(r, q)[0]
        for rep in range(repeats):
            order = SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]
            for i, q in enumerate(data.queries):
                for name in order:
                    result[name]["seconds"][i].append(_rerank(rerankers[name], q)[1])
    finally:
        for r in rerankers.values():
            r.close()
    return result


def summarize(result: dict[str, dict], data) -> dict:
    grades = [q.grades for q in data.queries]
    base, mine = result["float"]["scores"], result["int8"]["scores"]
    rho = np.array([spearman(a, b) for a, b in zip(mine, base)])
    relevant = [i for i, g in enumerate(grades) if np.any(g > 0)]
    ndcg = {name: float(np.mean([ndcg_at(result[name]["scores"][i], grades[i], 10) for i in relevant]))
            for name in SYSTEMS}
    change = (ndcg["int8"] - ndcg["float"]) / ndcg["float"]
    ms = {name: 1e3 * float(np.mean([np.median(s) for s in result[name]["seconds"]])) for name in SYSTEMS}
    met = bool(rho.mean() >= MIN_SPEARMAN and abs(change) <= MAX_NDCG_DROP)
    return {"queries": len(data.queries), "ndcg_queries": len(relevant),
            "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min()),
            "spearman_per_query": rho.tolist(), "ndcg@10": ndcg, "ndcg@10_relative_change": change,
            "max_abs_score_diff": float(max(np.abs(a - b).max() for a, b in zip(mine, base))),
            "band_tail_ms_per_query": ms, "speedup": ms["float"] / ms["int8"],
            "criterion": {"spearman_mean_at_least": MIN_SPEARMAN, "ndcg@10_within": MAX_NDCG_DROP, "met": met}}


def table(s: dict) -> str:
    rows = ["| bundle | nDCG@10 | Spearman vs float (mean, min) | max abs score diff | band+tail ms/query |",
            "|---|---|---|---|---|"]
    for name in SYSTEMS:
        fidelity = ("-", "-") if name == "float" else (
            f"{s['spearman_mean']:.4f}, {s['spearman_min']:.4f}", f"{s['max_abs_score_diff']:.3g}")
        rows.append(f"| {name} | {s['ndcg@10'][name]:.4f} | {fidelity[0]} | {fidelity[1]} | "
                    f"{s['band_tail_ms_per_query'][name]:.2f} |")
    verdict = "met" if s["criterion"]["met"] else "not met"
    rows += ["", f"nDCG@10 change: {100 * s['ndcg@10_relative_change']:+.2f}% of float; int8 band+tail "
             f"{s['speedup']:.2f}x float's speed; {s['queries']} queries ({s['ndcg_queries']} with a relevant "
             f"candidate). Default criterion (mean Spearman >= {MIN_SPEARMAN} and nDCG@10 within "
             f"{100 * MAX_NDCG_DROP:g}%): {verdict}."]
    return "\n".join(rows)


def run(out: Path, checkpoint: str, data_path: str, repeats: int) -> dict:
    t0 = time.perf_counter()
    spec, source = demo_spec(checkpoint, None)
    data = load_labelled_set(data_path, require_labels=True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="int8-report-") as tmp:
        tmp = Path(tmp)
        bundles = {}
        for name in SYSTEMS:
            bundle = build_bundle(checkpoint, tmp / name, spec, BuildConfig(weights=name), log=lambda m: None)
            bundles[name] = bundle.path
        validation = json.loads((bundles["int8"] / "bundle.json").read_text())["validation"]
        summary = summarize(measure(bundles, data, tmp / "cache", repeats), data)
    report = {"checkpoint": checkpoint, "spec_source": source, "spec": spec.to_dict(), "data": data_path,
              "repeats": repeats, "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "int8_tolerances": TOLERANCES["fp32-int8"],
              "int8_validation": {g: validation[g] for g in ("band", "tail", "end_to_end") if g in validation},
              **summary, "wall_s": time.perf_counter() - t0}
    (out / "int8.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = table(summary)
    (out / "int8.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/int8", help="output folder for int8.json / int8.md")
    parser.add_argument("--checkpoint", default=str(ASSETS / "reranker"), help="reranker checkpoint (default: the demo's)")
    parser.add_argument("--data", default=str(ASSETS / "eval" / "heldout.jsonl"),
                        help="labelled set (default: the demo's held-out set)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the queries (default 5)")
    args = parser.parse_args()
    run(Path(args.out), args.checkpoint, args.data, args.repeats)


if __name__ == "__main__":
    main()
