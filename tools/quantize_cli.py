"""``minireranker quantize``: flags -> QDQConfig -> :func:`~minireranker.calibration.qdq.quantize_bundle`."""

from __future__ import annotations

import argparse

from .args import keyword_defaults, positive_int


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``quantize`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..calibration.qdq import METHODS, QDQConfig

    d = keyword_defaults(QDQConfig)
    p = subparsers.add_parser(
        "quantize", help="INT8 Q/DQ band and tail graphs, calibrated on a JSONL set (TensorRT 11's INT8 form)",
        description="Write a copy of an fp32 bundle whose band and tail graphs carry explicit Q/DQ nodes "
        "(symmetric int8, per-channel weights), calibrated on the inputs they receive while the float bundle "
        "reranks the set's first --queries queries; the next --check-queries queries measure the score "
        "difference to the float bundle. Labels are not needed. The K/V entries are the float bundle's.")
    p.add_argument("bundle", help="fp32 bundle directory with float weights")
    p.add_argument("--data", required=True, help="queries and candidates, eval's JSONL format (grades optional)")
    p.add_argument("-o", "--out", required=True, help="the new bundle's directory (must not exist)")
    p.add_argument("--queries", type=positive_int, default=d["queries"],
                   help="calibration queries (default %(default)s)")
    p.add_argument("--check-queries", type=positive_int, default=d["check_queries"],
                   help="queries after them that measure the result (default %(default)s)")
    p.add_argument("--method", choices=METHODS, default=d["method"],
                   help="activation range method (default %(default)s; ONNX Runtime's entropy and percentile "
                   "calibrators fail on feeds of different shapes)")
    p.set_defaults(func=cmd_quantize)
    return p


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..calibration.qdq import QDQConfig, quantize_bundle

    quantize_bundle(QDQConfig(args.bundle, args.data, args.out, queries=args.queries,
                              check_queries=args.check_queries, method=args.method))
    return 0
