"""``minireranker verify``: flags -> :func:`~minireranker.calibration.verify.verify_checkpoint`."""

from __future__ import annotations

import argparse
import json

from .args import DOC_HELP, add_spec_arguments, keyword_defaults, needs_export, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``verify`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..calibration.verify import verify_checkpoint  # torch loads inside it, not here

    tolerance = keyword_defaults(verify_checkpoint)["tolerance"]
    p = subparsers.add_parser("verify", help="check the torch reference against transformers on a checkpoint",
                              description="Score sample pairs with the torch reference and with transformers' "
                              "own model of the architecture (exact spec, and --spec if given); report the largest difference. "
                              "Exit status 1 when it exceeds the tolerance.")
    p.add_argument("checkpoint", help="reranker checkpoint directory (Qwen3-VL, Qwen2-VL or Qwen2.5-VL)")
    p.add_argument("documents", nargs="*", metavar="DOC",
                   help="documents to use (default: built-in samples); " + DOC_HELP)
    p.add_argument("--query", action="append", default=None, help="a query (repeatable; default: built-in samples)")
    add_spec_arguments(p, "an approximate spec to check besides the exact one (default: the exact one only)",
                       flags=False)
    p.add_argument("--tolerance", type=float, default=tolerance,
                   help=f"largest accepted |difference| of scores (default {tolerance:g})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    needs_export(p)
    p.set_defaults(func=cmd_verify)
    return p


def cmd_verify(args: argparse.Namespace) -> int:
    from ..calibration.verify import verify_checkpoint
    from ..runtime.documents import expand_document_args

    spec = spec_from_args(args)
    docs = expand_document_args(args.documents) if args.documents else None
    report = verify_checkpoint(args.checkpoint, spec, docs, args.query, args.tolerance)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in ("exact", "spec"):
            if name in report:
                r = report[name]
                print(f"{name:>5}: max |reference - transformers| = {r['max_abs_diff']:.2e} over {report['pairs']} "
                      f"pairs ({'ok' if r['ok'] else 'FAILED'}, tolerance {report['tolerance']:g})")
    return 0 if report["ok"] else 1
