"""``minireranker build``: flags -> :class:`~minireranker.export.build_config.BuildConfig` -> ``build_bundle``,
on the checkpoint itself or, for a PEFT adapter folder, on the adapter merged into ``--base``
(:func:`~minireranker.export.checkpoint.checkpoint_for_build`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_spec_arguments, needs_export, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``build`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..export.build_config import ATTENTIONS, PRECISIONS, WEIGHTS, BuildConfig  # torch-free: defaults for --help

    d = BuildConfig()
    p = subparsers.add_parser("build", help="build a bundle of ONNX engines from a checkpoint",
                              description="Export the engine segments of a checkpoint under a spec to ONNX, "
                              "validate them against the torch reference, and write a bundle directory.")
    p.add_argument("checkpoint", help="reranker checkpoint directory (Qwen3-VL, Qwen2-VL or Qwen2.5-VL), or a "
                   "PEFT adapter folder (adapter_config.json + adapter_model.safetensors), merged into its base for "
                   "the build")
    p.add_argument("--base", default=None, metavar="DIR",
                   help="for an adapter folder: the base checkpoint directory (default: the adapter config's "
                   "base_model_name_or_path when that is a local directory); see docs/checkpoints.md")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    add_spec_arguments(p, "default: the checkpoint's minireranker.json, else exact")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help=f"fp32 for CPUs, fp16 for GPUs (default {d.precision})")
    p.add_argument("--attention", choices=ATTENTIONS, default=d.attention,
                   help="portable: MatMul/Softmax (opset 17, TensorRT 10.3 and later); fused: ONNX Attention (opset "
                   "23, TensorRT 10.14 and later); plugin: portable with the band's attention "
                   "a TensorRT plugin node (TensorRT 10.9 and later; --backend tensorrt only; unverified on hardware) "
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
    from ..export.checkpoint import checkpoint_for_build
    from ..export.onnx_export import build_bundle

    from ..export.checkpoint import adapter_base, is_adapter_dir

    source = None
    if is_adapter_dir(Path(args.checkpoint)):  # the merged checkpoint is temporary: record what it came from
        source = {"adapter": str(Path(args.checkpoint).resolve()),
                  "base": str(Path(adapter_base(Path(args.checkpoint), args.base)).resolve())}
    with checkpoint_for_build(args.checkpoint, args.base) as checkpoint:  # a merged adapter is removed after
        build_bundle(checkpoint, args.output, spec, config, source=source)
    return 0
