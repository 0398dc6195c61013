"""The proof of ``minireranker adapt`` on the bundled demo data: the format change, the spec, and what adapt
recovers, on the held-out split, with a small sweep of steps and learning rate.

    python benchmarks/adapt_sweep.py --out bench-out/adapt [--checkpoint DIR] [--spec FILE] [--data FILE]
                                     [--steps 200,400] [--lr 5e-4,2e-3] [--rank 16] [--label-weight 0.5]
                                     [--lora-dropout 0] [--adapt-data default|large]
                                     [--heldout shipped|confirm|FILE]

Default checkpoint: the bundled query-first demo reranker (``assets/reranker-query-first``, trained in
Qwen3-VL-Reranker's order: the stock checkpoint a user brings); default spec: the layers and pruning of the
bundled demo's calibrated spec (``assets/reranker/minireranker.json``: exit 2, band [0, 0], keep 1), the
checkpoint's own template strings and trained order kept; default adaptation data: queries of
the *training* split written by the demo's generator (``data_files.write_labelled_set(..., "train", ...)``,
unlabelled use: the teacher labels them), so neither the calibration nor the held-out split is trained on.

Rows, each scored on the held-out split (nDCG@10, its fraction of row 1's, the paired 95% bootstrap interval
of the difference to row 1, nDCG@10 per query kind):

1. dense in the trained order (the teacher, as users run it today);
2. the same weights vision-first, exact spec;
3. the spec, zero-shot (the yes/no rows at its exit layer), and with an exit head fitted on the adaptation
   data without training the body (``calibrate --exit-head``'s head);
4. after ``adapt`` for each (steps, lr, LoRA rank, label weight), with the yes/no rows and with the exit head (one run gives both:
   ``--exit-head`` fits the head on the adapted body). A rank other than adapt's default keeps its
   alpha/rank ratio (alpha = 2 x rank), so the LoRA update's scale, and with it the learning rate's meaning,
   does not change with the rank.

The defaults are picked on the calibration split (mean nDCG@10 of the exit-head variant), never on the
held-out split. Writes results.json and results.md (and prints the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from minireranker.calibration.adapt import TEACHER_FILE, AdaptConfig, run_adapt
from minireranker.calibration.data import load_labelled_set
from minireranker.calibration.metrics import paired_difference, per_query
from minireranker.calibration.scoring import LoadedReranker, torch_threads, trained_dense_scores
from minireranker.runtime.spec import HeadSpec, RerankSpec

ASSETS = Path(__file__).resolve().parents[1] / "calibration" / "demo" / "assets"
KINDS = ("digit", "ordered", "pair", "count", "photo")


LARGE = {"digit": 80, "ordered": 120, "pair": 100, "count": 60, "photo": 50}  # --adapt-data large: 410 queries


def adaptation_data(out: Path, size: str = "default") -> Path:
    """Queries of the demo's training split (documents rendered from training digits), in eval's format:
    ``default`` the generator's 130 (pools.EVAL_QUERY_KINDS), ``large`` :data:`LARGE`."""
    from minireranker.calibration.demo import data_files, images

    path = out / "adapt-data" / "train.jsonl"
    if not path.is_file():
        data_files.write_labelled_set(path.parent, "train", images.split_digits(0), seed=4,
                                      kinds=LARGE if size == "large" else None)
    return path


CONFIRM_SEED = 11  # --heldout confirm: the shipped held-out split is seed 1 (train.py: the demo's seed + 1)


def heldout_file(out: Path, which: str) -> Path:
    """The split the rows are scored on: ``shipped`` (``assets/eval/heldout.jsonl``), ``confirm`` (a second
    held-out split, written here: the same generator, kinds and held-out digit images, another seed, so other
    documents and candidate lists; for a configuration chosen by looking at the shipped one), or a file."""
    if which == "shipped":
        return ASSETS / "eval" / "heldout.jsonl"
    if which != "confirm":
        return Path(which)
    from minireranker.calibration.demo import data_files, images

    path = out / "confirm" / "heldout.jsonl"
    if not path.is_file():
        data_files.write_labelled_set(path.parent, "heldout", images.split_digits(0), seed=CONFIRM_SEED)
    return path


def demo_spec_layers() -> str:
    """The bundled demo's calibrated spec, its layer and pruning fields only (inline JSON)."""
    spec = json.loads((ASSETS / "reranker" / "minireranker.json").read_text(encoding="utf-8"))
    return json.dumps({k: spec[k] for k in ("exit_layer", "band", "keep_ratio", "guide", "query_position")})


def scores_of(checkpoint: Path, spec: RerankSpec | None, data) -> list[np.ndarray]:
    """Every query's scores: under ``spec`` (the torch reference), or ``None``: dense in the trained order."""
    loaded = LoadedReranker(checkpoint)
    if spec is None:
        teacher = loaded.pipeline(loaded.exact_spec())
        return [trained_dense_scores(teacher, q.query, q.candidates) for q in data.queries]
    pipeline = loaded.pipeline(spec)
    return [pipeline.rerank(q.query, q.candidates) for q in data.queries]


def kinds_of(path: Path) -> list[str | None]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row.get("meta") or {}).get("kind") for row in rows]


def row(name: str, scores, teacher, data, kinds) -> dict:
    grades = [q.grades for q in data.queries]
    mine, ref = per_query(scores, grades, "ndcg@10"), per_query(teacher, grades, "ndcg@10")
    graded = [k for k, g in zip(kinds, grades) if g.max() > 0]  # the queries per_query keeps
    by_kind = {k: float(mine[[i for i, x in enumerate(graded) if x == k]].mean()) for k in KINDS if k in graded}
    return {"system": name, "ndcg@10": float(mine.mean()), "fraction": float(mine.mean() / ref.mean()),
            "vs_teacher": paired_difference(mine, ref), "by_kind": by_kind, "per_query": mine.tolist()}


def spec_with_head(checkpoint: Path, head: HeadSpec | None = None) -> RerankSpec:
    """The checkpoint's own spec (its minireranker.json), optionally with another head."""
    loaded = LoadedReranker(checkpoint)
    spec = loaded.spec.resolve(loaded.num_layers)
    return spec if head is None else dataclasses.replace(spec, head=head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/adapt")
    parser.add_argument("--checkpoint", default=str(ASSETS / "reranker-query-first"))
    parser.add_argument("--spec", default=None, help="a spec file or inline JSON (default: the bundled demo's "
                        "calibrated layers, exit 2, band [0, 0], keep 1)")
    parser.add_argument("--data", default=None, help="adaptation pairs (default: the training split's queries)")
    parser.add_argument("--adapt-data", choices=["default", "large"], default="default",
                        help="without --data: 130 (default) or 410 (large) queries of the training split")
    parser.add_argument("--heldout", default="shipped", metavar="shipped|confirm|FILE",
                        help="the split every row is scored on (default: the shipped held-out split; confirm: a "
                        "second one, written with another seed)")
    parser.add_argument("--no-head-only", action="store_true", help="skip the exit-head-alone row")
    parser.add_argument("--steps", default="200,400")
    parser.add_argument("--lr", default="5e-4,2e-3")
    parser.add_argument("--rank", default=str(AdaptConfig.rank), help="LoRA ranks (alpha = 2 x rank)")
    parser.add_argument("--label-weight", default=str(AdaptConfig.label_weight),
                        help="weights of the label loss (the adaptation data's grades)")
    parser.add_argument("--lora-dropout", default=str(AdaptConfig.lora_dropout),
                        help="dropouts on the LoRA branch's input")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint)
    spec_file = args.spec or demo_spec_layers()
    data_file = Path(args.data) if args.data else adaptation_data(out, args.adapt_data)
    held_path, calib_path = heldout_file(out, args.heldout), ASSETS / "eval" / "calib.jsonl"
    heldout, calib = load_labelled_set(held_path), load_labelled_set(calib_path)
    kinds, calib_kinds = kinds_of(held_path), kinds_of(calib_path)
    adapt_set = load_labelled_set(data_file, require_labels=False)
    rows, sweep = [], []
    with torch_threads(1):
        loaded = LoadedReranker(checkpoint)
        spec = loaded.with_template(RerankSpec.from_file(spec_file) if Path(spec_file).is_file() else
                                    RerankSpec.from_dict(json.loads(spec_file)), set()).resolve(loaded.num_layers)
        teacher, calib_teacher = scores_of(checkpoint, None, heldout), scores_of(checkpoint, None, calib)
        rows.append(row(f"1. dense, trained order ({loaded.spec.trained}): the teacher", teacher, teacher, heldout,
                        kinds))
        rows.append(row("2. vision-first, exact spec", scores_of(checkpoint, loaded.exact_spec(), heldout), teacher,
                        heldout, kinds))
        rows.append(row("3. spec, zero-shot (yes/no rows)", scores_of(checkpoint, spec, heldout), teacher, heldout,
                        kinds))
        spec_json = json.dumps(spec.to_dict())
        head_only = out / "exit-head-only"
        if not args.no_head_only:
            t0 = time.perf_counter()
            run_adapt(AdaptConfig(str(checkpoint), str(data_file), str(head_only), spec=spec_json, steps=0,
                                  exit_head=True, resume=False, progress=False), log=lambda _: None)
            r = row("3. spec, zero-shot + exit head (body untouched)",
                    scores_of(head_only, spec_with_head(head_only), heldout), teacher, heldout, kinds)
            r["wall_s"] = time.perf_counter() - t0
            rows.append(r)
        grid = [(steps, lr, rank, weight, dropout) for steps in (int(s) for s in args.steps.split(","))
                for lr in (float(x) for x in args.lr.split(",")) for rank in (int(r) for r in args.rank.split(","))
                for weight in (float(w) for w in args.label_weight.split(","))
                for dropout in (float(d) for d in args.lora_dropout.split(","))]
        for steps, lr, rank, weight, dropout in grid:
            extra = "".join([f", rank {rank}" if rank != AdaptConfig.rank else "",
                             f", label weight {weight:g}" if weight != AdaptConfig.label_weight else "",
                             f", dropout {dropout:g}" if dropout != AdaptConfig.lora_dropout else ""])
            target = out / (f"adapted-{steps}-{lr:g}-r{rank}-w{weight:g}"
                            + (f"-d{dropout:g}" if dropout != AdaptConfig.lora_dropout else ""))
            if (head_only / TEACHER_FILE).is_file():  # the same teacher labels: computed once
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(head_only / TEACHER_FILE, target / TEACHER_FILE)
            t0 = time.perf_counter()
            report = run_adapt(AdaptConfig(str(checkpoint), str(data_file), str(target), spec=spec_json,
                                           steps=steps, lr=lr, rank=rank, alpha=2.0 * rank, label_weight=weight,
                                           lora_dropout=dropout,
                                           exit_head=True, progress=False, resume=False),
                               log=lambda _: None)
            wall = time.perf_counter() - t0
            trained = steps * report["settings"]["queries_per_step"] * adapt_set.num_pairs / len(adapt_set.queries)
            variants = {"yes/no rows": spec_with_head(target, HeadSpec("yes_no")),
                        "exit head": spec_with_head(target)}
            for variant, s in variants.items():
                r = row(f"4. adapted, {steps} steps, lr {lr:g}{extra}, {variant}",
                        scores_of(target, s, heldout), teacher, heldout, kinds)
                r.update({"steps": steps, "lr": lr, "rank": rank, "label_weight": weight, "lora_dropout": dropout,
                          "variant": variant,
                          "wall_s": wall,
                          "training_pairs": trained, "s_per_1000_training_pairs": wall / trained * 1000,
                          "loss_first": report["loss_first"], "loss_last": report["loss_last"],
                          "calib": row("calib", scores_of(target, s, calib), calib_teacher, calib,
                                       calib_kinds)["ndcg@10"]})
                rows.append(r)
                sweep.append(r)
                print({k: v for k, v in r.items() if k != "per_query"}, flush=True)
    zero_shot = rows[2]
    chosen = max((r for r in sweep if r["variant"] == "exit head"), key=lambda r: r["calib"], default=None)
    loss = 1 - zero_shot["fraction"]
    for r in rows:
        r["recovered"] = (r["fraction"] - zero_shot["fraction"]) / loss if loss > 0.02 else None
    summary = {"checkpoint": str(checkpoint), "spec": spec.to_dict(), "adaptation_data": str(data_file),
               "heldout": str(held_path),
               "adaptation_pairs": adapt_set.num_pairs, "adaptation_queries": len(adapt_set.queries),
               "heldout_queries": len(heldout.queries), "zero_shot_loss": loss,
               "chosen_by_calib": None if chosen is None else {k: chosen[k] for k in ("steps", "lr", "rank",
                                                                                       "label_weight",
                                                                                       "lora_dropout")},
               "rows": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"Held-out split: {held_path} ({len(heldout.queries)} queries); adaptation data: {len(adapt_set.queries)} queries, "
             f"{adapt_set.num_pairs} pairs of the training split; spec: exit {spec.exit_layer}, band "
             f"{list(spec.band)}, keep {spec.keep_ratio}, query position {spec.query_position}.", "",
             "| system | nDCG@10 | fraction of (1) | difference to (1), 95% interval | recovered of (3)'s loss | "
             + " | ".join(KINDS) + " | adapt wall (s per 1,000 training pairs) |",
             "|---|---:|---:|---|---:|" + "---:|" * len(KINDS) + "---:|"]
    for r in rows:
        d = r["vs_teacher"]
        wall = f"{r['wall_s']:.0f} s" + (f" ({r['s_per_1000_training_pairs']:.0f} s)" if "steps" in r else "") \
            if r.get("wall_s") else "-"
        rec = "-" if r["recovered"] is None or r is zero_shot or r in rows[:2] else f"{r['recovered']:.0%}"
        mark = " (chosen on calib)" if chosen is not None and r is chosen else ""
        lines.append(f"| {r['system']}{mark} | {r['ndcg@10']:.4f} | {r['fraction']:.4f} | {d['delta']:+.4f} "
                     f"({d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}) | {rec} | "
                     + " | ".join(f"{r['by_kind'].get(k, float('nan')):.3f}" for k in KINDS) + f" | {wall} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
