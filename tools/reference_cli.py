"""``minireranker reference``: flags -> :func:`~minireranker.export.reference.reference_scores`."""

from __future__ import annotations

import argparse
import json

from .args import DOC_HELP, add_spec_arguments, needs_export, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``reference`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("reference", help="score documents with the torch reference (the golden source)",
                              description="Score documents for a query with the torch reference pipeline.")
    p.add_argument("checkpoint", help="reranker checkpoint directory (Qwen3-VL, Qwen2-VL or Qwen2.5-VL; Hugging Face layout)")
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument("documents", nargs="+", metavar="DOC", help=DOC_HELP)
    add_spec_arguments(p, "default: the checkpoint's minireranker.json, else exact")
    p.add_argument("--json", action="store_true", help="print JSON {query, spec, results}")
    needs_export(p)
    p.set_defaults(func=cmd_reference)
    return p


def cmd_reference(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)  # flag errors first, before the seconds torch takes to import
    from ..export.reference import reference_scores
    from ..runtime.documents import expand_document_args

    result = reference_scores(args.checkpoint, args.query, expand_document_args(args.documents), spec)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"query: {result['query']}")
        for rank, r in enumerate(result["results"], 1):
            print(f"{rank:>3}. score {r['score']:+.6f}  p={r['probability']:.4f}  [{r['index']}] {r['document']}")
    return 0
