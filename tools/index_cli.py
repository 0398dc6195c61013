"""``minireranker index``: flags -> :func:`~minireranker.runtime.reranker.index_documents`, or with ``--ray``
:func:`~minireranker.runtime.ray_index.index_on_ray`."""

from __future__ import annotations

import argparse
import sys
import time

from ..runtime.errors import MiniRerankerError
from .args import (DOCS_HELP, add_runtime_arguments, documents_from_args, keyword_defaults, positive_int,
                   read_stdin_once, reranker_options)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``index`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("index", help="index documents into the K/V cache",
                              description="Index documents (skipping those already cached) into the K/V cache. "
                              "Exit status 1 if any document failed or was not stored (over --max-cache-bytes).")
    add_runtime_arguments(p)
    p.add_argument("documents", nargs="+", metavar="DOC", help=DOCS_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_ray_arguments(p)
    p.set_defaults(func=cmd_index)
    return p


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray`` and the options of a Ray job (defaults: RayIndexConfig's own; docs/scale.md)."""
    from ..runtime.ray_index import RAY_INSTALL, RayIndexConfig

    d = keyword_defaults(RayIndexConfig)
    parser.add_argument("--ray", action="store_true",
                        help=f"index on Ray: a pool of workers, each with its own engines, writing into one cache "
                        f"(needs the 'ray' extra: {RAY_INSTALL}; docs/scale.md)")
    parser.add_argument("--ray-address", default=d["address"], metavar="ADDR",
                        help="with --ray: the address of a running cluster (`ray start --head` prints it) (default: "
                        "$RAY_ADDRESS if set, else a local Ray on this machine's cores)")
    parser.add_argument("--workers", type=positive_int, default=d["workers"], metavar="N",
                        help="with --ray: number of workers (default: one per CPU of the cluster, or per "
                        "--gpus-per-worker GPUs)")
    parser.add_argument("--gpus-per-worker", type=float, default=d["gpus_per_worker"], metavar="G",
                        help=f"with --ray: GPUs each worker reserves (default {d['gpus_per_worker']:g}: none)")


def cmd_index(args: argparse.Namespace) -> int:
    from ..runtime.documents import short_label

    ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--workers", args.workers),
                                         ("--gpus-per-worker", args.gpus_per_worker or None)) if value is not None]
    if ray_only and not args.ray:
        raise MiniRerankerError(f"{', '.join(ray_only)}: options of a Ray job; add --ray")
    read_stdin_once(DOC=args.documents)
    docs = documents_from_args(args.documents)
    t0 = time.perf_counter()
    report = _index(args, docs)
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


def _index(args: argparse.Namespace, docs: list):
    """The IndexReport of the local index, or of the Ray job with ``--ray``."""
    from ..runtime.ray_index import RayIndexConfig, index_on_ray
    from ..runtime.reranker import index_documents

    if not args.ray:
        return index_documents(args.bundle, args.cache, docs, progress=not args.quiet, **reranker_options(args))
    config = RayIndexConfig(address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    return index_on_ray(args.bundle, args.cache, docs, config, progress=not args.quiet, **reranker_options(args))
