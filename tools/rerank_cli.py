"""``minireranker rerank``: flags -> :func:`~minireranker.runtime.reranker.rerank_documents`."""

from __future__ import annotations

import argparse
import json
import sys

from .args import DOC_HELP, add_runtime_arguments, keyword_defaults, positive_int, reranker_options, shown, with_ids


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``rerank`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..runtime.reranker import MAX_QUERY_TOKENS, rerank_documents

    top_k = keyword_defaults(rerank_documents)["top_k"]
    p = subparsers.add_parser("rerank", help="rerank documents or cached ids for a query",
                              description="Score documents for a query with the bundle's engines and the K/V "
                              "cache; documents not yet cached are indexed on the fly. Exit status 1 if any "
                              "document failed.")
    add_runtime_arguments(p)
    p.add_argument("--query", required=True,
                   help=f"the query text: not empty, at most {MAX_QUERY_TOKENS} tokens (a longer query is an error, "
                   "not truncated)")
    p.add_argument("documents", nargs="*", metavar="DOC", help=DOC_HELP)
    p.add_argument("--ids", nargs="+", default=None, help="ids of documents already indexed")
    p.add_argument("--top-k", type=positive_int, default=top_k, metavar="K",
                   help=f"print only the K best, K >= 1 ({shown(top_k, 'all')})")
    p.add_argument("--json", action="store_true", help="print JSON {query, spec, results, failed}")
    p.set_defaults(func=cmd_rerank)
    return p


def cmd_rerank(args: argparse.Namespace) -> int:
    from ..runtime.documents import Document, expand_document_args, short_label
    from ..runtime.errors import DocumentError
    from ..runtime.reranker import rerank_documents

    if not args.documents and not args.ids:
        raise DocumentError("give documents (DOC...) or --ids of documents already indexed")
    docs = with_ids(expand_document_args(args.documents)) + [Document(id=i) for i in args.ids or []]
    out, spec = rerank_documents(args.bundle, args.cache, args.query, docs, args.top_k, **reranker_options(args))
    if args.json:
        print(json.dumps(out.to_dict(spec), indent=2))
    else:
        print(f"query: {out.query}")
        for rank, r in enumerate(out.results, 1):
            print(f"{rank:>3}. score {r.score:+.6f}  p={r.probability:.4f}  [{r.index}] {r.document}")
        stages = "  ".join(f"{k} {1e3 * v:.1f} ms" for k, v in out.timings.items())
        print(f"timings: {stages}")
    for f in out.failed:
        print(f"failed [{f.index}] {short_label(f.document)}: {f.error}", file=sys.stderr)
    return 1 if out.failed else 0
