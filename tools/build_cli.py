"""``minireranker build``: flags -> :class:`~minireranker.export.build_config.BuildConfig` -> ``build_bundle``."""

from __future__ import annotations

import argparse

from .args import add_spec_arguments, needs_export, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``build`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..export.build_config import ATTENTIONS, PRECISIONS, WEIGHTS, BuildConfig  # torch-free: defaults for --help

    d = BuildConfig()
    p = subparsers.add_parser("build", help="build a bundle of ONNX engines from a checkpoint",
                              description="Export the engine segments of a checkpoint under a spec to ONNX, "
                              "validate them against the torch reference, and write a bundle directory.")
    p.add_argument("checkpoint", help="Qwen3-VL reranker checkpoint directory")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    add_spec_arguments(p, "default: the checkpoint's minireranker.json, else exact")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help=f"fp32 for CPUs, fp16 for GPUs (default {d.precision})")
    p.add_argument("--attention", choices=ATTENTIONS, default=d.attention,
                   help="portable: MatMul/Softmax (opset 17, TensorRT 10.3); fused: ONNX Attention (opset 23) "
                   f"(default {d.attention})")
    p.add_argument("--weights", choices=WEIGHTS, default=d.weights,
                   help="int8: the band's and tail's weight matrices as int8 (ONNX Runtime dynamic quantization; "
                   f"fp32 bundles on CPUs only; see docs/parity.md for its fidelity) (default {d.weights})")
    p.add_argument("--no-validate", dest="validate", action="store_false", default=d.validate,
                   help="skip the comparison with the torch reference")
    needs_export(p)
    p.set_defaults(func=cmd_build)
    return p


def cmd_build(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)  # flag errors first, before the seconds torch takes to import
    from ..export.build_config import BuildConfig

    config = BuildConfig(precision=args.precision, attention=args.attention, weights=args.weights,
                         validate=args.validate)  # and the combination of flags, before torch too
    from ..export.onnx_export import build_bundle

    build_bundle(args.checkpoint, args.output, spec, config)
    return 0
