"""``minireranker index``: flags -> :func:`~minireranker.runtime.reranker.index_documents`."""

from __future__ import annotations

import argparse
import sys
import time

from .args import DOC_HELP, add_runtime_arguments, reranker_options, with_ids


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``index`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("index", help="index documents into the K/V cache",
                              description="Index documents (skipping those already cached) into the K/V cache. "
                              "Exit status 1 if any document failed or was not stored (over --max-cache-bytes).")
    add_runtime_arguments(p)
    p.add_argument("documents", nargs="+", metavar="DOC", help=DOC_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)
    return p


def cmd_index(args: argparse.Namespace) -> int:
    from ..runtime.documents import expand_document_args, short_label
    from ..runtime.reranker import index_documents

    docs = with_ids(expand_document_args(args.documents))
    t0 = time.perf_counter()
    report = index_documents(args.bundle, args.cache, docs, progress=not args.quiet, **reranker_options(args))
    seconds = time.perf_counter() - t0
    # a rate only over documents actually encoded ("0.0 documents/s" when all were cached says nothing)
    rate = f" ({report.indexed / seconds:.1f} documents/s)" if report.indexed and seconds > 0 else ""
    declined = f", not stored {len(report.declined)} (over the cache bound)" if report.declined else ""
    print(f"indexed {report.indexed}, skipped {report.skipped} (already cached), failed {len(report.failed)}"
          f"{declined} in {seconds:.1f} s{rate}")
    for f in report.failed:
        print(f"  failed [{f.index}] {short_label(f.document)}: {f.error}", file=sys.stderr)
    for f in report.declined:
        print(f"  not stored [{f.index}] {short_label(f.document)}: {f.error}", file=sys.stderr)
    return 1 if report.failed or report.declined else 0
