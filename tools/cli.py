"""The ``minireranker`` command line: a thin layer over the library.

Each subcommand parses its flags and calls one public function. Errors a user can cause are printed as
one line (``error: ...``) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.errors import MiniRerankerError

DOC_HELP = "a document: an image PATH, text:STRING, or PATH::text:STRING (image then text); directories and globs expand"


def _spec_arg(value: str | None):
    """``--spec``: None (the checkpoint's own), 'exact', or a minireranker.json file."""
    from ..runtime.spec import RerankSpec

    if value is None:
        return None
    if value == "exact":
        return RerankSpec.exact()
    return RerankSpec.from_file(value)


def cmd_reference(args: argparse.Namespace) -> int:
    from ..export.reference import reference_scores
    from ..runtime.documents import expand_document_args

    documents = expand_document_args(args.documents)
    result = reference_scores(args.checkpoint, args.query, documents, _spec_arg(args.spec))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"query: {result['query']}")
        for rank, r in enumerate(result["results"], 1):
            print(f"{rank:>3}. score {r['score']:+.6f}  p={r['probability']:.4f}  [{r['index']}] {r['document']}")
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from ..export.tiny import write_tiny_checkpoint
    from ..runtime.spec import RerankSpec

    spec = None
    if args.spec:
        RerankSpec.from_file(args.spec)  # a missing or invalid file is a SpecError here, not a traceback
        spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    path = write_tiny_checkpoint(args.output, args.preset, seed=args.seed, spec=spec)
    print(f"wrote a random-weight tiny checkpoint ({args.preset}, seed {args.seed}) to {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..export.verify import verify_checkpoint
    from ..runtime.documents import expand_document_args

    docs = expand_document_args(args.documents) if args.documents else None
    report = verify_checkpoint(args.checkpoint, _spec_arg(args.spec), docs, args.query, args.tolerance)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in ("exact", "spec"):
            if name in report:
                r = report[name]
                print(f"{name:>5}: max |reference - transformers| = {r['max_abs_diff']:.2e} over {report['pairs']} "
                      f"pairs ({'ok' if r['ok'] else 'FAILED'}, tolerance {report['tolerance']:g})")
    return 0 if report["ok"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ..export.demo import run_demo

    run_demo(output=Path(args.output), checkpoint=args.checkpoint, images=args.images, queries=args.query)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minireranker",
        description="Deploy Qwen3-VL point-wise rerankers fast: vision-first prefix caching, early exit, "
        "interaction band and embedder-guided pruning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("reference", help="score documents with the torch reference (the golden source)",
                       description="Score documents for a query with the torch reference pipeline.")
    p.add_argument("checkpoint", help="Qwen3-VL reranker checkpoint directory (Hugging Face layout)")
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument("documents", nargs="+", metavar="DOC", help=DOC_HELP)
    p.add_argument("--spec", default=None,
                   help="a minireranker.json file, or 'exact'; default: the checkpoint's minireranker.json, else exact")
    p.add_argument("--json", action="store_true", help="print JSON {query, spec, results}")
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("tiny", help="write a random-weight tiny checkpoint (for tests and trials)",
                       description="Write a complete tiny Qwen3-VL checkpoint with random weights.")
    p.add_argument("output", help="directory to write")
    p.add_argument("--preset", default="tiny", help="tiny preset name (see minireranker.export.tiny.PRESETS)")
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--spec", default=None, help="a minireranker.json to copy into the checkpoint")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("verify", help="check the torch reference against transformers on a checkpoint",
                       description="Score sample pairs with the torch reference and with transformers' own "
                       "Qwen3-VL (exact spec, and --spec if given); report the largest difference. "
                       "Exit status 1 when it exceeds the tolerance.")
    p.add_argument("checkpoint", help="Qwen3-VL reranker checkpoint directory")
    p.add_argument("documents", nargs="*", metavar="DOC", help="documents to use (default: built-in samples); " + DOC_HELP)
    p.add_argument("--query", action="append", default=None, help="a query (repeatable; default: built-in samples)")
    p.add_argument("--spec", default=None, help="an approximate spec (minireranker.json) to check besides the exact one")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |difference| of scores")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="run the demo on the embedded default",
                       description="Rerank a small image corpus with the exact and an approximate spec, side "
                       "by side, and report the time of each.")
    p.add_argument("--output", default="minireranker-demo", help="folder for the demo's files")
    p.add_argument("--checkpoint", default=None, help="your own reranker checkpoint instead of the built-in one")
    p.add_argument("--images", nargs="*", default=None, metavar="DOC", help="your own documents; " + DOC_HELP)
    p.add_argument("--query", action="append", default=None, help="a query (repeatable)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MiniRerankerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
