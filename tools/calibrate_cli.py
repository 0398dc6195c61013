"""``minireranker calibrate``: flags -> :class:`~minireranker.calibration.calibrate.CalibrationConfig`."""

from __future__ import annotations

import argparse
import sys

from ..runtime.errors import SpecError
from ..runtime.spec import parse_band
from .args import needs_export
from .eval_cli import add_reference_flag, add_run_flags

DESCRIPTION = """\
Sweep exit layer E, band [A, B] (A <= B <= E) and keep ratio on a calibration set (the JSONL of
docs/eval.md; relevance grades optional), and write the cheapest spec that keeps --target of the dense
model's quality as minireranker.json. The dense model is the --reference: by default dense scoring in the
order the checkpoint was trained in (query-first for Qwen3-VL-Reranker), else in the order miniReranker
runs. Fidelity of a spec = its --metric as a fraction of the reference's when the set is graded, else its
rank agreement with the reference's scores (mean Spearman over queries). Cost = FLOPs and
K/V bytes read per query for --candidates cached candidates (docs/calibration.md has the formula).
Choice: fewest FLOPs among specs meeting the target, then fewest K/V bytes, then highest fidelity.
Pruning is guided by --embedder when given, else by the reranker itself (attention at layer A). Specs with
A > 0 fix the query position P (--query-position; default the checkpoint's, else the longest document
sequence of the set rounded up to 16). Writes minireranker.json, calibration.json, report.md and
pareto.png to --out. Exit status 1 (report still written) when no swept spec meets the target.
Needs torch (the 'export' extra)."""


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices separated by commas, got {value!r}") from None


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in value.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {value!r}") from None


def _bands(value: str) -> tuple[tuple[int, int], ...]:
    try:  # each band is read as --band A:B is, by the one spec parser
        return tuple(parse_band(b) for b in value.replace(",", " ").split())
    except SpecError:
        raise argparse.ArgumentTypeError(f"expected bands A:B separated by commas (e.g. 1:1,1:2), got {value!r}") from None


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..calibration.calibrate import CalibrationConfig

    d = CalibrationConfig("", "")
    p = subparsers.add_parser("calibrate", help="sweep exit layer, band and keep ratio; write the cheapest faithful spec",
                              description=DESCRIPTION)
    p.add_argument("checkpoint", help="reranker checkpoint directory (Qwen3-VL, Qwen2-VL or Qwen2.5-VL; Hugging Face layout)")
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help="the calibration set (docs/eval.md); without relevance grades fidelity is rank agreement")
    p.add_argument("--embedder", default=None, metavar="DIR",
                   help="pruning guide: a Qwen3-VL-Embedding-style checkpoint (default: the reranker itself)")
    p.add_argument("--target", type=float, default=d.target,
                   help=f"fidelity the chosen spec must reach, as a fraction of the --reference dense system "
                   f"(default {d.target})")
    p.add_argument("--metric", default=d.metric, choices=["hit@1", "mrr", "ndcg@5", "ndcg@10"],
                   help=f"metric whose fraction of the --reference is the fidelity on a graded set (default {d.metric})")
    p.add_argument("--exit-layers", type=_ints, default=None, metavar="E,E,...",
                   help="exit layers to sweep (default: about L/4, L/2, 3L/4 and L-1)")
    p.add_argument("--bands", type=_bands, default=None, metavar="A:B,...",
                   help="bands to sweep (default: width 0..2 from every start up to the last exit, and [0, E])")
    p.add_argument("--keep-ratios", type=_floats, default=d.keep_ratios, metavar="R,R,...",
                   help=f"keep ratios to sweep (default {','.join(f'{r:g}' for r in d.keep_ratios)})")
    p.add_argument("--query-position", type=int, default=None, metavar="P",
                   help="query start position of specs with A > 0 (default: the checkpoint's spec's, else the "
                   "longest document sequence of the set rounded up to 16)")
    p.add_argument("--candidates", type=int, default=d.candidates,
                   help=f"candidates per query in the cost model (default {d.candidates})")
    p.add_argument("--precision", choices=["fp16", "fp32"], default=d.precision,
                   help=f"K/V precision in the cost model (default {d.precision})")
    p.add_argument("--out", default=d.out,
                   help=f"folder for minireranker.json, calibration.json, report.md, pareto.png (default {d.out})")
    p.add_argument("--exit-head", action="store_true",
                   help="also fit a linear exit head on the chosen exit layer to the dense scores of the trained "
                        "order (the body untouched) and write the checkpoint with it to OUT/checkpoint/")
    add_reference_flag(p, d, "the fidelity and --target")
    add_run_flags(p, d)
    needs_export(p)
    p.set_defaults(func=cmd_calibrate)
    return p


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..calibration.calibrate import CalibrationConfig, run_calibration

    config = CalibrationConfig(
        args.checkpoint, args.data, embedder=args.embedder, target=args.target, metric=args.metric,
        exit_layers=args.exit_layers, bands=args.bands, keep_ratios=args.keep_ratios,
        query_position=args.query_position, candidates=args.candidates, precision=args.precision, out=args.out,
        batch_size=args.batch_size, threads=args.threads, reference=args.reference, exit_head=args.exit_head,
        progress=not args.quiet)
    result = run_calibration(config)
    if result["chosen"] is None:
        best = max(result["points"], key=lambda p: p["fidelity"])
        print(f"error: no swept spec reaches the target {config.target:g} ({result['fidelity']['short']}); the best "
              f"is {best['fidelity']:.4f} ({best['label']}): lower --target or widen the grid "
              f"(report in {config.out})", file=sys.stderr)
        return 1
    return 0
