"""``minireranker index``: flags -> :func:`~minireranker.runtime.reranker.index_documents`."""

from __future__ import annotations

import argparse
import sys
import time

from .args import DOC_HELP, add_runtime_arguments, reranker_options, with_ids


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``index`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("index", help="index documents into the K/V cache",
                              description="Index documents (skipping those already cached) into the K/V cache.")
    add_runtime_arguments(p)
    p.add_argument("documents", nargs="+", metavar="DOC", help=DOC_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)
    return p


def cmd_index(args: argparse.Namespace) -> int:
    from ..runtime.documents import expand_document_args
    from ..runtime.reranker import index_documents

    docs = with_ids(expand_document_args(args.documents))
    t0 = time.perf_counter()
    report = index_documents(args.bundle, args.cache, docs, progress=not args.quiet, **reranker_options(args))
    seconds = time.perf_counter() - t0
    rate = report.indexed / seconds if seconds > 0 else 0.0
    print(f"indexed {report.indexed}, skipped {report.skipped} (already cached), failed {len(report.failed)} "
          f"in {seconds:.1f} s ({rate:.1f} documents/s)")
    for f in report.failed:
        print(f"  failed [{f.index}] {f.document}: {f.error}", file=sys.stderr)
    return 1 if report.failed else 0
