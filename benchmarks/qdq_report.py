"""Q/DQ INT8 band and tail (``minireranker quantize``) against float on the demo's held-out set: fidelity.

    python benchmarks/qdq_report.py --out bench-out/qdq [--queries 24]

Builds the float bundle of the bundled demo reranker under its calibrated spec (as ``minireranker demo``
does) and the dynamic-int8 one (``--weights int8``, export/quantize.py) for comparison, writes the Q/DQ
bundle with :func:`~minireranker.calibration.qdq.quantize_bundle` calibrated on the demo's *calibration*
split (never the held-out one), scores every held-out query with each, and reports against float: the
per-query Spearman of the scores (mean, min), nDCG@10 and its relative change, and the largest |score
difference|. Speed is not measured: Q/DQ graphs are meant for TensorRT, and ONNX Runtime's CPU kernels for
them say nothing about it. Writes qdq.json and qdq.md to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from minireranker.calibration.data import load_labelled_set
from minireranker.calibration.demo.run import ASSETS, demo_spec
from minireranker.calibration.metrics import ndcg_at, spearman
from minireranker.calibration.qdq import QDQConfig, quantize_bundle
from minireranker.export.onnx_export import BuildConfig, build_bundle
from minireranker.runtime.reranker import Reranker

SYSTEMS = ("float", "int8 dynamic", "int8 Q/DQ")


def scores_of(bundle: Path, cache: Path, data) -> list[np.ndarray]:
    """Scores in candidate order for every query (one shared cache: the three bundles' entries are equal)."""
    out = []
    with Reranker(bundle, cache) as r:
        for q in data.queries:
            result = r.rerank(q.query, q.candidates)
            if result.failed:
                raise SystemExit(f"document {result.failed[0].document} failed: {result.failed[0].error}")
            s = np.empty(len(q.candidates))
            for x in result.results:
                s[x.index] = x.score
            out.append(s)
    return out


def summarize(scores: dict[str, list[np.ndarray]], data) -> dict:
    grades = [q.grades for q in data.queries]
    relevant = [i for i, g in enumerate(grades) if np.any(g > 0)]
    rows = {}
    for name, s in scores.items():
        ndcg = float(np.mean([ndcg_at(s[i], grades[i], 10) for i in relevant]))
        rows[name] = {"ndcg@10": ndcg}
        if name != "float":
            rho = np.array([spearman(a, b) for a, b in zip(s, scores["float"])])
            rows[name].update({"spearman_mean": float(rho.mean()), "spearman_min": float(rho.min()),
                               "max_abs_score_diff": float(max(np.abs(a - b).max()
                                                               for a, b in zip(s, scores["float"])))})
    for name in rows:
        rows[name]["ndcg@10_relative_change"] = rows[name]["ndcg@10"] / rows["float"]["ndcg@10"] - 1
    return {"queries": len(data.queries), "ndcg_queries": len(relevant), "systems": rows}


def table(s: dict) -> str:
    lines = ["| bundle | nDCG@10 | change vs float | Spearman vs float (mean, min) | max abs score diff |",
             "|---|---:|---:|---|---:|"]
    for name, r in s["systems"].items():
        rho = "-" if name == "float" else f"{r['spearman_mean']:.4f}, {r['spearman_min']:.4f}"
        diff = "-" if name == "float" else f"{r['max_abs_score_diff']:.3g}"
        lines.append(f"| {name} | {r['ndcg@10']:.4f} | {100 * r['ndcg@10_relative_change']:+.2f}% | {rho} | {diff} |")
    lines += ["", f"{s['queries']} held-out queries ({s['ndcg_queries']} with a relevant candidate)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/qdq")
    parser.add_argument("--checkpoint", default=str(ASSETS / "reranker"))
    parser.add_argument("--calib", default=str(ASSETS / "eval" / "calib.jsonl"), help="calibration queries")
    parser.add_argument("--data", default=str(ASSETS / "eval" / "heldout.jsonl"), help="the measured set")
    parser.add_argument("--method", default="minmax", help="activation range method (calibration/qdq.py)")
    parser.add_argument("--queries", type=int, default=24, help="calibration queries of --calib")
    args = parser.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec, _ = demo_spec(args.checkpoint, None)
    data = load_labelled_set(args.data)
    with tempfile.TemporaryDirectory(prefix="qdq-report-") as tmp:
        tmp = Path(tmp)
        bundles = {"float": build_bundle(args.checkpoint, tmp / "float", spec, log=lambda m: None).path,
                   "int8 dynamic": build_bundle(args.checkpoint, tmp / "int8", spec, BuildConfig(weights="int8"),
                                                log=lambda m: None).path}
        quantization = quantize_bundle(QDQConfig(str(bundles["float"]), args.calib, str(tmp / "qdq"),
                                                 queries=args.queries, method=args.method), log=print)
        bundles["int8 Q/DQ"] = tmp / "qdq"
        check = json.loads((tmp / "qdq" / "bundle.json").read_text())["validation"]["end_to_end"]
        scores = {name: scores_of(path, tmp / "cache", data) for name, path in bundles.items()}
    summary = summarize(scores, data)
    report = {"checkpoint": args.checkpoint, "spec": spec.to_dict(), "data": args.data, "calib": args.calib,
              "quantization": quantization, "qdq_check": check, **summary, "wall_s": time.perf_counter() - t0}
    (out / "qdq.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = table(summary)
    (out / "qdq.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
