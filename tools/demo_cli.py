"""``minireranker demo``: flags -> :func:`~minireranker.calibration.demo.run.run_demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.errors import MiniRerankerError
from .args import DOC_HELP, SPEC_FORMS, keyword_defaults, needs_export

DESCRIPTION = ("Build engines from the bundled real-data reranker with its calibrated spec, index the bundled "
               "corpus, retrieve with the bundled embedder, rerank a few queries with the runtime, and score the "
               "same candidates densely in the same run; prints rankings, per-stage times and the speedup, and "
               "writes a PNG contact sheet per query.")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..calibration.demo.run import run_demo  # torch loads inside it, not here

    d = keyword_defaults(run_demo)
    p = subparsers.add_parser("demo", help="run the demo on the embedded default", description=DESCRIPTION)
    # run_demo has no default folder (a library caller names one); this is the command line's own
    p.add_argument("--output", default="minireranker-demo",
                   help="folder for the demo's files (bundle, cache, contact sheets, demo.json; default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="your own reranker checkpoint instead of the bundled one")
    p.add_argument("--embedder", default=None, help="embedder checkpoint for the first stage (default: the bundled "
                   "one with the bundled reranker, none with --checkpoint: then every document is a candidate)")
    p.add_argument("--spec", default=None, metavar="FILE_OR_JSON",
                   help=f"the spec to build: {SPEC_FORMS} (default: the checkpoint's own)")
    p.add_argument("--images", nargs="*", default=None, metavar="DOC",
                   help="your own documents instead of the bundled corpus; " + DOC_HELP)
    p.add_argument("--query", action="append", default=None, help="a query (repeatable; default: the first "
                   "bundled demo queries)")
    p.add_argument("--candidates", type=int, default=d["candidates"],
                   help=f"first-stage candidates reranked per query (default {d['candidates']})")
    p.add_argument("--show", type=int, default=d["show"],
                   help=f"results printed and drawn per query (default {d['show']})")
    needs_export(p)
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    from ..calibration.demo.run import run_demo
    from ..runtime.spec import read_spec

    if args.candidates < 1 or args.show < 1:
        raise MiniRerankerError("--candidates and --show must be at least 1")
    read_spec(args.spec)  # a bad spec fails here, before the demo writes anything; run_demo reads it the same way
    run_demo(output=Path(args.output), checkpoint=args.checkpoint, embedder=args.embedder, images=args.images,
             queries=args.query, spec_file=args.spec, candidates=args.candidates, show=args.show)
    return 0
