"""``minireranker adapt`` on the bundled demo data: a small sweep of steps and learning rate, held-out table.

    python benchmarks/adapt_sweep.py --out bench-out/adapt [--spec FILE] [--steps 50,200] [--lr 5e-4,2e-3]

Adapts the bundled demo reranker to ``--spec`` (default: its calibrated minireranker.json) on the
calibration split for each (steps, lr), then scores the held-out split with: the checkpoint dense in its
trained order (the teacher), the spec zero-shot, and each adapted checkpoint under the spec. Reports
mean nDCG@10, its fraction of the teacher's and the paired 95% bootstrap interval of the difference, and
the adaptation's wall time per 1,000 training pairs. Writes results.json and results.md.

The bundled reranker was trained vision-first, so its teacher is its own vision-first dense model: the
sweep measures what adapt recovers of the spec's approximations (early exit, band), not of a format change.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from minireranker.calibration.adapt import AdaptConfig, run_adapt
from minireranker.calibration.data import load_labelled_set
from minireranker.calibration.metrics import paired_difference, per_query
from minireranker.calibration.scoring import LoadedReranker, torch_threads, trained_dense_scores
from minireranker.runtime.spec import RerankSpec

ASSETS = Path(__file__).resolve().parents[1] / "calibration" / "demo" / "assets"


def held_out_scores(checkpoint: Path, spec: RerankSpec | None, data) -> list[np.ndarray]:
    """Scores of every held-out query: the spec's (torch reference), or the trained-order dense model's."""
    loaded = LoadedReranker(checkpoint)
    if spec is None:
        teacher = loaded.pipeline(loaded.exact_spec())
        return [trained_dense_scores(teacher, q.query, q.candidates) for q in data.queries]
    pipeline = loaded.pipeline(spec)
    return [pipeline.rerank(q.query, q.candidates) for q in data.queries]


def row(name: str, scores, teacher, grades) -> dict:
    mine, ref = per_query(scores, grades, "ndcg@10"), per_query(teacher, grades, "ndcg@10")
    return {"system": name, "ndcg@10": float(mine.mean()), "fraction": float(mine.mean() / ref.mean()),
            "vs_teacher": paired_difference(mine, ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/adapt")
    parser.add_argument("--spec", default=str(ASSETS / "reranker" / "minireranker.json"))
    parser.add_argument("--steps", default="50,200")
    parser.add_argument("--lr", default="5e-4,2e-3")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, calib = ASSETS / "reranker", ASSETS / "eval" / "calib.jsonl"
    heldout = load_labelled_set(ASSETS / "eval" / "heldout.jsonl")
    grades = [q.grades for q in heldout.queries]
    spec = RerankSpec.from_file(args.spec)
    with torch_threads(1):
        teacher = held_out_scores(checkpoint, None, heldout)
        loaded = LoadedReranker(checkpoint)
        resolved = loaded.with_template(spec, set()).resolve(loaded.num_layers)
        rows = [row("teacher: dense, trained order", teacher, teacher, grades),
                row("spec, zero-shot", held_out_scores(checkpoint, resolved, heldout), teacher, grades)]
        calib_set = load_labelled_set(calib, require_labels=False)
        pairs_per_query = calib_set.num_pairs / len(calib_set.queries)
        for steps in (int(s) for s in args.steps.split(",")):
            for lr in (float(x) for x in args.lr.split(",")):
                target = out / f"adapted-{steps}-{lr:g}"
                t0 = time.perf_counter()
                report = run_adapt(AdaptConfig(str(checkpoint), str(calib), str(target), spec=args.spec, steps=steps,
                                               lr=lr, progress=False, resume=False), log=lambda _: None)
                wall = time.perf_counter() - t0
                r = row(f"adapted, {steps} steps, lr {lr:g}", held_out_scores(target, resolved, heldout), teacher,
                        grades)
                trained = steps * report["settings"]["queries_per_step"] * pairs_per_query  # pairs trained on
                r.update({"wall_s": wall, "training_pairs": trained, "s_per_1000_training_pairs": wall / trained * 1000,
                          "loss_first": report["loss_first"], "loss_last": report["loss_last"]})
                rows.append(r)
                print(r)
    (out / "results.json").write_text(json.dumps({"spec": resolved.to_dict(), "rows": rows}, indent=2))
    lines = ["| system | nDCG@10 | fraction of the teacher | difference (95% interval) | adapt wall (s per 1,000 "
             "training pairs) |", "|---|---:|---:|---|---:|"]
    for r in rows:
        d = r["vs_teacher"]
        wall = f"{r['wall_s']:.0f} s ({r['s_per_1000_training_pairs']:.0f} s)" if r.get("wall_s") else "-"
        lines.append(f"| {r['system']} | {r['ndcg@10']:.4f} | {r['fraction']:.4f} | {d['delta']:+.4f} "
                     f"({d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}) | {wall} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
