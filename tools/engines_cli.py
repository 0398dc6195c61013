"""``minireranker engines``: flags -> EngineBuildConfig -> :func:`~minireranker.runtime.backends.build_engines`."""

from __future__ import annotations

import argparse

from .args import keyword_defaults, positive_int


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``engines`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..engines.manifest import BACKENDS
    from ..engines.profiles import AXES
    from ..runtime.backends import EngineBuildConfig

    d = keyword_defaults(EngineBuildConfig)
    p = subparsers.add_parser(
        "engines", help="build TensorRT / GPU engines for a bundle, on the GPU that will run them",
        description="Build the GPU engines of a bundle into BUNDLE/engines/BACKEND/ with an engines.json (the "
        "backend's and libraries' versions, the GPU, the profiles, the bundle fingerprint). Run it on the device "
        "that will serve: a plan runs only on the GPU model and TensorRT version it was built with. Then pass "
        "--backend BACKEND to rerank, index, serve or profile. Unverified on hardware: docs/engines.md.")
    p.add_argument("bundle", help="bundle directory (from minireranker build)")
    p.add_argument("--backend", required=True, choices=BACKENDS,
                   help="tensorrt: native plans (polygraphy); onnxruntime-tensorrt: ONNX Runtime's TensorRT EP with "
                   "its engine and timing caches in the bundle; onnxruntime-cuda: the CUDA EP with IO binding")
    p.add_argument("--fp16", action="store_true",
                   help="FP16 kernels for an fp32 bundle (TensorRT 10; on TensorRT 11 build an fp16 bundle instead: "
                   "its plans are strongly typed)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 from explicit Q/DQ graphs: for a bundle written by `minireranker quantize` (which "
                   "implies it); refused for any other")
    p.add_argument("--workspace", type=positive_int, default=d["workspace_mib"], metavar="MiB",
                   help="TensorRT's workspace pool limit in MiB (default: TensorRT's own)")
    p.add_argument("--profile", action="append", default=None, metavar="NAME=MIN:OPT:MAX",
                   help=f"shape range of an axis ({', '.join(AXES)}), or GRAPH.NAME=... for one graph (repeatable; "
                   "default: every query, every image the preprocessing makes plus 512 text tokens; opt at a "
                   "1024x1024 image and a 32-token query)")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"],
                   help="largest candidates per band/tail call the engines take (default %(default)s, the runtime's)")
    p.add_argument("--keep-weights", dest="strip_weights", action="store_false", default=d["strip_weights"],
                   help="tensorrt: plans that carry their own weights (default: weight-stripped plans, refitted from "
                   "the bundle's ONNX when loaded, so each weight is stored once; TensorRT 10.0 and later)")
    p.set_defaults(func=cmd_engines)
    return p


def cmd_engines(args: argparse.Namespace) -> int:
    from ..runtime.backends import EngineBuildConfig, build_engines

    config = EngineBuildConfig(args.backend, fp16=args.fp16, int8=args.int8, workspace_mib=args.workspace,
                               profiles=tuple(args.profile or ()), batch_size=args.batch_size,
                               strip_weights=args.strip_weights)
    build_engines(args.bundle, config)
    return 0
