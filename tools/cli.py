"""The ``minireranker`` command line: a thin layer over the library.

Each subcommand parses its flags and calls one public function. Errors a user can cause are printed as
one line (``error: ...``) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _build_spec(args: argparse.Namespace):
    """--spec FILE | --exact | --exit-layer/--band/--keep-ratio/--guide/--query-position (None: checkpoint's)."""
    from ..runtime.errors import SpecError
    from ..runtime.spec import RerankSpec

    flags = [args.exit_layer, args.band, args.keep_ratio, args.guide, args.query_position]
    chosen = sum([args.spec is not None, args.exact, any(f is not None for f in flags)])
    if chosen > 1:
        raise SpecError("choose one of --spec FILE, --exact, or the --exit-layer/--band/--keep-ratio flags")
    if args.exact:
        return RerankSpec.exact()
    if args.spec is not None:
        return _spec_arg(args.spec)
    if not any(f is not None for f in flags):
        return None
    band = None
    if args.band is not None:
        try:
            a, b = (int(x) for x in args.band.split(":"))
        except ValueError:
            raise SpecError(f"--band must be A:B (two layer indices), got {args.band!r}") from None
        band = (a, b)
    fields = {"exit_layer": args.exit_layer, "band": band, "keep_ratio": args.keep_ratio, "guide": args.guide,
              "query_position": args.query_position}
    return RerankSpec(**{k: v for k, v in fields.items() if v is not None})


def cmd_build(args: argparse.Namespace) -> int:
    spec = _build_spec(args)  # flag errors first, before the seconds torch takes to import
    from ..export.onnx_export import BuildConfig, build_bundle

    config = BuildConfig(precision=args.precision, attention=args.attention, validate=not args.no_validate)
    build_bundle(args.checkpoint, args.output, spec, config)
    return 0


def _reranker_options(args: argparse.Namespace) -> dict:
    opts = {"max_cache_bytes": args.max_cache_bytes, "int8_cache": args.int8_cache}
    if args.provider:
        opts["providers"] = args.provider
    return opts


def _with_ids(docs: list) -> list:
    """On the command line a document's id is how it was written (a path or text:...), so that
    `rerank --ids PATH` finds what `index PATH` cached; a changed file under the same path is re-indexed."""
    import dataclasses

    return [d if d.id is not None else dataclasses.replace(d, id=d.label) for d in docs]


def cmd_index(args: argparse.Namespace) -> int:
    import time

    from ..runtime.documents import expand_document_args
    from ..runtime.reranker import index_documents

    docs = _with_ids(expand_document_args(args.documents))
    t0 = time.perf_counter()
    report = index_documents(args.bundle, args.cache, docs, progress=not args.quiet, **_reranker_options(args))
    seconds = time.perf_counter() - t0
    rate = report.indexed / seconds if seconds > 0 else 0.0
    print(f"indexed {report.indexed}, skipped {report.skipped} (already cached), failed {len(report.failed)} "
          f"in {seconds:.1f} s ({rate:.1f} documents/s)")
    for f in report.failed:
        print(f"  failed [{f.index}] {f.document}: {f.error}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_rerank(args: argparse.Namespace) -> int:
    from ..runtime.documents import Document, expand_document_args
    from ..runtime.errors import DocumentError
    from ..runtime.reranker import rerank_documents

    if not args.documents and not args.ids:
        raise DocumentError("give documents (DOC...) or --ids of documents already indexed")
    docs = _with_ids(expand_document_args(args.documents)) + [Document(id=i) for i in args.ids or []]
    out, spec = rerank_documents(args.bundle, args.cache, args.query, docs, args.top_k, **_reranker_options(args))
    if args.json:
        print(json.dumps(out.to_dict(spec), indent=2))
    else:
        print(f"query: {out.query}")
        for rank, r in enumerate(out.results, 1):
            print(f"{rank:>3}. score {r.score:+.6f}  p={r.probability:.4f}  [{r.index}] {r.document}")
        stages = "  ".join(f"{k} {1e3 * v:.1f} ms" for k, v in out.timings.items())
        print(f"timings: {stages}")
    for f in out.failed:
        print(f"failed [{f.index}] {f.document}: {f.error}", file=sys.stderr)
    return 1 if out.failed else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..runtime.bundle import inspect_bundle

    info = inspect_bundle(args.bundle)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    spec = info["spec"]
    print(f"bundle {info['path']}  fingerprint {info['fingerprint'][:16]}  {info['precision']}, "
          f"{info['attention']} attention, opset {info['opset']}")
    print(f"spec: exit layer {spec['exit_layer']}, band {spec['band']}, keep {spec['keep_ratio']}, "
          f"guide {spec['guide']}, query position {spec['query_position']}")
    print("graphs:")
    for name, g in info["graphs"].items():
        ins = ", ".join(f"{i['name']}{i['shape']}" for i in g["inputs"])
        outs = ", ".join(f"{o['name']}{o['shape']}" for o in g["outputs"])
        print(f"  {name:<11} {g['parameters'] or 0:>12,} params  ({ins}) -> ({outs})")
    print(f"parameters active per query (query_head + band + tail): {info['parameters_per_query']:,}")
    ex = info["kv_bytes_example"]["image_1024x1024_keep"]
    print(f"K/V bytes per kept document token: {info['kv_bytes_per_token']:,}; "
          f"a 1024x1024 image keeps {ex['tokens']} tokens = {ex['bytes'] / 1e6:.2f} MB")
    print("files:")
    for name, size in info["files"].items():
        print(f"  {name:<32} {size:>14,} bytes")
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
    from ..calibration.verify import verify_checkpoint
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
    from ..calibration.demo.run import run_demo

    if args.candidates < 1 or args.show < 1:
        raise MiniRerankerError("--candidates and --show must be at least 1")
    run_demo(output=Path(args.output), checkpoint=args.checkpoint, embedder=args.embedder, images=args.images,
             queries=args.query, spec_file=args.spec, candidates=args.candidates, show=args.show)
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

    p = sub.add_parser("build", help="build a bundle of ONNX engines from a checkpoint",
                       description="Export the engine segments of a checkpoint under a spec to ONNX, validate "
                       "them against the torch reference, and write a bundle directory.")
    p.add_argument("checkpoint", help="Qwen3-VL reranker checkpoint directory")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    p.add_argument("--spec", default=None, help="a minireranker.json spec file")
    p.add_argument("--exact", action="store_true", help="the exact spec (A=0, B=E=L-1, keep 1)")
    p.add_argument("--exit-layer", type=int, default=None, help="E: score at the output of this layer")
    p.add_argument("--band", default=None, metavar="A:B", help="layers where the query sees the document")
    p.add_argument("--keep-ratio", type=float, default=None, help="fraction of visual tokens kept (0 < r <= 1)")
    p.add_argument("--guide", default=None, help="pruning guide: self or embedder:DIR")
    p.add_argument("--query-position", type=int, default=None, help="fixed query position (required when A > 0)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="fp32 for CPUs, fp16 for GPUs")
    p.add_argument("--attention", choices=["portable", "fused"], default="portable",
                   help="portable: MatMul/Softmax (opset 17, TensorRT 10.3); fused: ONNX Attention (opset 23)")
    p.add_argument("--no-validate", action="store_true", help="skip the comparison with the torch reference")
    p.set_defaults(func=cmd_build)

    def runtime_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="bundle directory (from minireranker build)")
        p.add_argument("--cache", required=True, help="K/V cache directory")
        p.add_argument("--provider", action="append", default=None,
                       help="ONNX Runtime execution provider (repeatable); default: TensorRT, CUDA, CPU where present")
        p.add_argument("--max-cache-bytes", type=int, default=None, help="LRU bound on the cache size")
        p.add_argument("--int8-cache", action="store_true", help="store K/V as int8 with per-channel scales")

    p = sub.add_parser("index", help="index documents into the K/V cache",
                       description="Index documents (skipping those already cached) into the K/V cache.")
    runtime_flags(p)
    p.add_argument("documents", nargs="+", metavar="DOC", help=DOC_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("rerank", help="rerank documents or cached ids for a query",
                       description="Score documents for a query with the bundle's engines and the K/V cache; "
                       "documents not yet cached are indexed on the fly. Exit status 1 if any document failed.")
    runtime_flags(p)
    p.add_argument("--query", required=True,
                   help="the query text: not empty, at most 512 tokens (a longer query is an error, not truncated)")
    p.add_argument("documents", nargs="*", metavar="DOC", help=DOC_HELP)
    p.add_argument("--ids", nargs="+", default=None, help="ids of documents already indexed")
    p.add_argument("--top-k", type=int, default=None, help="print only the K best")
    p.add_argument("--json", action="store_true", help="print JSON {query, spec, results, failed}")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("inspect", help="describe a bundle",
                       description="Print a bundle's spec, graphs, parameters per query, K/V bytes and files.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    from .bench_cli import register as register_bench
    from .calibrate_cli import register as register_calibrate
    from .eval_cli import register as register_eval
    from .profile_cli import register as register_profile
    from .serve_cli import register as register_serve

    register_bench(sub)
    register_eval(sub)
    register_calibrate(sub)
    register_profile(sub)
    register_serve(sub)

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
                       description="Build engines from the bundled real-data reranker with its calibrated spec, "
                       "index the bundled corpus, retrieve with the bundled embedder, rerank a few queries with "
                       "the runtime, and score the same candidates densely in the same run; prints rankings, "
                       "per-stage times and the speedup, and writes a PNG contact sheet per query.")
    p.add_argument("--output", default="minireranker-demo", help="folder for the demo's files (bundle, cache, "
                   "contact sheets, demo.json)")
    p.add_argument("--checkpoint", default=None, help="your own reranker checkpoint instead of the bundled one")
    p.add_argument("--embedder", default=None, help="embedder checkpoint for the first stage (default: the bundled "
                   "one with the bundled reranker, none with --checkpoint: then every document is a candidate)")
    p.add_argument("--spec", default=None, help="minireranker.json to build (default: the checkpoint's own)")
    p.add_argument("--images", nargs="*", default=None, metavar="DOC",
                   help="your own documents instead of the bundled corpus; " + DOC_HELP)
    p.add_argument("--query", action="append", default=None, help="a query (repeatable; default: the first "
                   "bundled demo queries)")
    p.add_argument("--candidates", type=int, default=20, help="first-stage candidates reranked per query")
    p.add_argument("--show", type=int, default=5, help="results printed and drawn per query")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Pillow warns (with a source line) about images between 1x and 2x its pixel limit; the runtime
    # refuses those itself with a one-line message, so the warning is only noise on the terminal.
    warnings.filterwarnings("ignore", message=".*decompression bomb.*")
    parser = build_parser()
    # DOC arguments may follow options (`rerank B --cache C --query Q doc1 doc2`): argparse's greedy
    # positional matching leaves them over, so they are appended to the documents here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "documents") or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.documents = list(args.documents or []) + extra
    try:
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away fails here, in the handler below, not at exit
        return status
    except MiniRerankerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`minireranker inspect B --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
