"""``minireranker bench``: flags -> :class:`~minireranker.calibration.bench.presets.BenchConfig` -> ``run_bench``.

Defaults live in ``BenchConfig`` only: a flag left out is not passed on, and the help text reads them there.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from .args import needs_export


def _defaults() -> dict:
    from ..calibration.bench.presets import BenchConfig

    return {f.name: f.default for f in fields(BenchConfig) if f.init}


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..calibration.bench.presets import BENCH_PRESETS, SYSTEMS  # numpy, Pillow: only when the parser is built

    defaults = _defaults()
    presets = "; ".join(f"{name}: {p.description}" for name, p in BENCH_PRESETS.items())
    p = subparsers.add_parser(
        "bench", help="time dense transformers, dense ONNX Runtime, prefix reuse and miniReranker side by side",
        description="One query over N candidates indexed beforehand, in one run: (a) dense transformers pair by "
        "pair (query-first), (a2) dense transformers in padded batches (the best of --dense-batch-sizes), "
        "(b) dense ONNX Runtime batched without reuse, (c) vision-first prefix reuse (exact "
        "spec, warm cache), (d) miniReranker with the preset's spec and any --spec. Systems alternate over "
        "--repeats; then the marginal cost per candidate through `minireranker rerank` (--marginal); every "
        "ratio against (a) and the best dense baseline; writes results.json, results.md and results.png to --out "
        "and prints the tables. "
        f"Presets (random weights): {presets}.")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and results.png")
    p.add_argument("--preset", choices=sorted(BENCH_PRESETS), help=f"model preset (default {defaults['preset']})")
    p.add_argument("-n", "--candidates", type=int, help=f"candidates per query (default {defaults['candidates']})")
    p.add_argument("--repeats", type=int,
                   help=f"queries per system, alternating systems (default {defaults['repeats']})")
    p.add_argument("--spec", action="append", dest="spec_files", metavar="FILE",
                   help="another miniReranker spec (minireranker.json) to time besides the preset's (repeatable)")
    p.add_argument("--systems", type=lambda v: tuple(v.split(",")),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    p.add_argument("--dense-pairs", type=int, metavar="K",
                   help="time (a) and (a2) on K pairs and scale to N (linear in N); default: all N pairs")
    p.add_argument("--dense-batch-sizes", dest="dense_batch_sizes", metavar="B,B,...",
                   type=lambda v: tuple(int(x) for x in v.split(",")),
                   help="batch sizes (a2) tries, each capped at the pairs it times (default "
                   f"{','.join(map(str, defaults['dense_batch_sizes']))})")
    p.add_argument("--marginal", type=int, metavar="N",
                   help="time `minireranker rerank` on N cached candidates against 1 (capped at --candidates; "
                   f"0: skip) (default {defaults['marginal']})")
    p.add_argument("--batch-size", type=int, help=f"candidates per band batch (default {defaults['batch_size']})")
    p.add_argument("--precision", choices=["fp32", "fp16"], help=f"bundle precision (default {defaults['precision']})")
    p.add_argument("--no-validate", dest="validate", action="store_false", default=None,
                   help="build the bundles without comparing them to the torch reference")
    p.add_argument("--seed", type=int, help=f"weights, pages and queries (default {defaults['seed']})")
    p.add_argument("--work", help="folder for the checkpoint, bundles, pages and caches (default: OUT/work)")
    needs_export(p)
    p.set_defaults(func=cmd_bench)
    return p


def config_of(args: argparse.Namespace):
    """The BenchConfig of parsed ``bench`` arguments (a flag not given keeps BenchConfig's default)."""
    from ..calibration.bench.presets import BenchConfig

    given = {name: getattr(args, name) for name in _defaults() if getattr(args, name, None) is not None}
    return BenchConfig(**{**given, "spec_files": tuple(given.get("spec_files", ()))})


def cmd_bench(args: argparse.Namespace) -> int:
    from ..calibration.bench.harness import run_bench

    run_bench(config_of(args))
    return 0
