"""``minireranker rerank``: flags -> one :class:`~minireranker.runtime.reranker.Reranker`, held open for one
query (``--query``) or a JSONL file of them (``--jsonl``, :func:`~minireranker.runtime.batch.rerank_lines`)."""

from __future__ import annotations

import argparse
import json
import sys

from .args import (DOCS_HELP, IDS_HELP, add_runtime_arguments, documents_from_args, keyword_defaults, positive_int,
                   read_stdin_once, reranker_options, shown)

JSONL_HELP = ("a JSONL file of queries, or - for stdin: one query a line, in eval's format with the grades optional "
              "and ignored ({\"query\": ..., \"candidates\": [{\"image\": ..., \"text\": ..., \"id\": ...}]}; image "
              "paths relative to the file's directory, or to the current one for -); prints one JSON line per query "
              "(docs/cli.md). A bad line is reported on stderr as {\"line\": N, \"error\": ...} and skipped: the "
              "other lines still run, and the exit status is then 1")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``rerank`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..runtime.reranker import MAX_QUERY_TOKENS, Reranker

    top_k = keyword_defaults(Reranker.rerank)["top_k"]  # the call cmd_rerank makes
    p = subparsers.add_parser("rerank", help="rerank documents or cached ids for a query, or a JSONL file of queries",
                              description="Score documents for a query with the bundle's engines and the K/V "
                              "cache; documents not yet cached are indexed on the fly. Exit status 1 if any "
                              "document failed (or, with --jsonl, any line).")
    add_runtime_arguments(p)
    queries = p.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query",
                         help=f"the query text: not empty, at most {MAX_QUERY_TOKENS} tokens (a longer query is an "
                         "error, not truncated)")
    queries.add_argument("--jsonl", metavar="FILE", help=JSONL_HELP)
    p.add_argument("documents", nargs="*", metavar="DOC", help=DOCS_HELP)
    p.add_argument("--ids", nargs="+", default=None, help=IDS_HELP)
    p.add_argument("--top-k", type=positive_int, default=top_k, metavar="K",
                   help=f"print only the K best (of each line, with --jsonl), K >= 1 ({shown(top_k, 'all')})")
    p.add_argument("--json", action="store_true", help="print JSON {query, spec, results, failed} (--jsonl prints "
                   "JSON lines always)")
    p.set_defaults(func=cmd_rerank)
    return p


def cmd_rerank(args: argparse.Namespace) -> int:
    from ..runtime.documents import Document, expand_list_args, resolve_id
    from ..runtime.errors import DocumentError
    from ..runtime.reranker import Reranker

    read_stdin_once(DOC=args.documents, **{"--ids": args.ids, "--jsonl": args.jsonl})
    if args.jsonl is not None:
        if args.documents or args.ids:
            raise DocumentError("--jsonl takes each query's candidates from its line: give no DOC or --ids with it")
        return _rerank_jsonl(args)
    docs, typed_ids = documents_from_args(args.documents), expand_list_args(args.ids or [])
    if not docs and not typed_ids:
        raise DocumentError("give documents (DOC...) or --ids of documents already indexed")
    with Reranker(args.bundle, args.cache, **reranker_options(args)) as reranker:
        _note_ids_as_typed(reranker, typed_ids)
        out = reranker.rerank(args.query, docs + [Document(id=resolve_id(i)) for i in typed_ids], args.top_k)
        spec = reranker.bundle.data["spec"]
    _print_output(out, spec, args.json)
    return 1 if out.failed else 0


def _note_ids_as_typed(reranker, typed: list[str]) -> None:
    """One line on stderr when ``--ids`` that miss are in the cache under the ids a cache indexed before ids
    were resolved paths holds (the strings typed then): those documents need indexing again."""
    from ..runtime.documents import Document, ids_indexed_as_typed

    old = ids_indexed_as_typed(typed, lambda i: reranker.key(Document(id=i)) in reranker.store)
    if old:
        print(f"note: this cache was indexed with ids as typed (before ids became resolved paths, docs/cli.md); "
              f"re-index these documents (minireranker index BUNDLE --cache DIR DOC...) to look them up by path: "
              f"{', '.join(old)}", file=sys.stderr)


def _print_output(out, spec: dict, as_json: bool) -> None:
    from ..runtime.documents import short_label

    if as_json:
        print(json.dumps(out.to_dict(spec), indent=2))
    else:
        print(f"query: {out.query}")
        for rank, r in enumerate(out.results, 1):
            print(f"{rank:>3}. score {r.score:+.6f}  p={r.probability:.4f}  [{r.index}] {r.document}")
        stages = "  ".join(f"{k} {1e3 * v:.1f} ms" for k, v in out.timings.items())
        print(f"timings: {stages}")
    for f in out.failed:
        print(f"failed [{f.index}] {short_label(f.document)}: {f.error}", file=sys.stderr)


def _rerank_jsonl(args: argparse.Namespace) -> int:
    """Each line's result as a JSON line on stdout as soon as it is scored; bad lines on stderr."""
    from ..runtime.batch import rerank_lines
    from ..runtime.reranker import Reranker

    opened, base = _open_jsonl(args.jsonl)
    status = 0
    with opened as stream, Reranker(args.bundle, args.cache, **reranker_options(args)) as reranker:
        for item in rerank_lines(reranker, stream, base, args.top_k):
            status = 1 if "error" in item or item["failed"] else status
            print(json.dumps(item), file=sys.stderr if "error" in item else sys.stdout, flush=True)
    return status


def _open_jsonl(name: str):
    """(a context manager giving the binary stream of ``--jsonl name``, the directory its image paths are
    relative to)."""
    import contextlib
    from pathlib import Path

    from ..runtime.errors import DocumentError

    if name == "-":
        return contextlib.nullcontext(getattr(sys.stdin, "buffer", sys.stdin)), Path(".")
    try:
        return open(name, "rb"), Path(name).parent
    except OSError as exc:
        raise DocumentError(f"--jsonl {name}: cannot open it ({exc.strerror or exc}); give a JSONL file of "
                            "queries, or - for stdin") from None
