"""``minireranker profile``: flags only; the work is :func:`minireranker.runtime.profiling.profile.run_profile`.

``register(subparsers)`` adds the subcommand to the ``minireranker`` parser.
"""

from __future__ import annotations

import argparse
import json

from ..runtime.profiling.estimate import DEVICE_NAMES
from ..runtime.profiling.profile import COLD_MODES, ProfileConfig
from .args import DOCS_HELP, IDS_HELP, add_backend_argument, add_spec_arguments, documents_from_args, read_stdin_once, spec_from_args

_DEFAULTS = ProfileConfig()  # every default is defined once, in ProfileConfig

DESCRIPTION = f"""\
Measure the runtime on this machine: latency distributions (n, mean, p50, p95, p99) per stage (query_head,
kv_lookup, index, kv_read, band, tail) and in total, warm and cold, over candidate counts and query lengths,
on the bundle's execution providers. Synthetic page images of --image-size are used unless DOC arguments
or --ids are given. Writes profile.json, profile.txt (the table) and profile.png (p50 latency vs
candidates per stage, log-log) to --out, and samples tegrastats (Jetson) or NVML (desktop NVIDIA GPU)
when present.

cold means: 'unindexed' = the candidates are not in the K/V store, so each is indexed (preprocess, vision,
pruning guide, document prefix, store write) inside the rerank; 'page-cache' = they are cached but their
files are evicted from the OS page cache (posix_fadvise DONTNEED) before each call, so K/V comes from disk.
Engine sessions are loaded and warm in both: neither is a process start.

--estimate DEVICE predicts per-stage latencies on a device you have not got:
  {', '.join(DEVICE_NAMES[:5])},
  {', '.join(DEVICE_NAMES[5:])},
from the bundle's FLOPs and bytes per stage (or Qwen3-VL-2B's shapes without a BUNDLE) and the device's
published peak compute (for the bundle's precision) and memory bandwidth:
  stage time = max(FLOPs / (peak x compute_eff), bytes / (bandwidth x memory_eff))     (roofline)
             + PCIe bytes / link (discrete GPUs) + host copy bytes / host copy rate
             + graph calls x layers x 40 nodes x per-node launch cost + per-candidate lookup/copy cost
  FLOPs = 2 x parameters x tokens + 4 x query tokens x keys x attention width x layers
  bytes = weights (once per batch) + K/V read + activations
Efficiency factors: Jetson 0.4 compute / 0.6 memory, desktop GPUs 0.5 / 0.7, this CPU 0.7 / 0.8.
'this-cpu' micro-measures this CPU (numpy matmul GFLOP/s, memcpy GB/s), profiles the bundle on
CPUExecutionProvider in the same run and prints measured / predicted per stage. See docs/profile.md.
"""


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1024x1024, got {value!r}") from None
    return w, h


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {value!r}") from None


def _config(args: argparse.Namespace) -> ProfileConfig:
    chains = tuple(tuple(p for p in c.split(",") if p) for c in args.provider) if args.provider else None
    fields = {"candidates": args.candidates, "query_tokens": args.query_tokens, "repeats": args.repeats,
              "warmup": args.warmup, "cold_repeats": args.cold_repeats, "cold_candidates": args.cold_candidates,
              "image_size": args.image_size, "doc_text_words": args.doc_text_words, "providers": chains,
              "batch_size": args.batch_size, "backend": args.backend, "telemetry": args.telemetry, "seed": args.seed,
              "cold": () if args.no_cold else (tuple(args.cold) if args.cold else None)}
    return ProfileConfig(**{k: v for k, v in fields.items() if v is not None})


def cmd_profile(args: argparse.Namespace) -> int:
    from ..runtime.documents import Document, expand_list_args, resolve_id
    from ..runtime.profiling.profile import run_profile

    read_stdin_once(DOC=args.documents, **{"--ids": args.ids})  # ids as `index` and `rerank` make them
    docs = documents_from_args(args.documents) + [Document(id=resolve_id(i)) for i in expand_list_args(args.ids or [])]
    spec = spec_from_args(args)
    report = run_profile(args.bundle, args.cache, _config(args), documents=docs or None, estimate_device=args.estimate,
                         out_dir=args.out, progress=not args.quiet, spec=spec)
    print(json.dumps(report.data, indent=2) if args.json else report.table)
    if not args.json and report.files:
        print("wrote " + ", ".join(str(f) for f in report.files))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``profile`` to the ``minireranker`` subcommands; returns its parser."""
    d = _DEFAULTS
    p = subparsers.add_parser("profile", help="latency per stage on this machine, or an estimate for another device",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", default=None, help="bundle directory (optional with --estimate only)")
    p.add_argument("documents", nargs="*", metavar="DOC",
                   help="documents to profile with instead of synthetic ones (repeated to fill the candidate "
                   f"counts): {DOCS_HELP}")
    p.add_argument("--cache", default=None, help="K/V cache directory (required to profile; synthetic documents "
                   "are kept there under 'profile/...' ids, so a second run starts warm)")
    p.add_argument("--ids", nargs="+", default=None, help=IDS_HELP)
    p.add_argument("--candidates", type=_ints, default=None,
                   help=f"candidate counts, e.g. 10,100,1000 (default {','.join(map(str, d.candidates))})")
    p.add_argument("--query-tokens", type=_ints, default=None,
                   help=f"query lengths in tokens (default {','.join(map(str, d.query_tokens))}); "
                        "cold runs use the middle one")
    p.add_argument("--repeats", type=int, default=None, help=f"timed reranks per warm point (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed reranks before each warm point (default {d.warmup})")
    p.add_argument("--cold", action="append", choices=COLD_MODES, default=None,
                   help="cold mode to run (repeatable; default both)")
    p.add_argument("--no-cold", action="store_true", help="warm cache only")
    p.add_argument("--cold-repeats", type=int, default=None,
                   help=f"timed reranks per cold point (default {d.cold_repeats})")
    p.add_argument("--cold-candidates", type=_ints, default=None,
                   help="candidate counts for cold runs (default: --candidates)")
    p.add_argument("--image-size", type=_size, default=None,
                   help=f"synthetic image WIDTHxHEIGHT (default {d.image_size[0]}x{d.image_size[1]}; the bundle's "
                        "preprocessing resizes it as it would a real one)")
    p.add_argument("--doc-text-words", type=int, default=None,
                   help=f"words of text after each synthetic image (default {d.doc_text_words})")
    p.add_argument("--provider", action="append", default=None,
                   help="execution provider chain to profile, e.g. CUDAExecutionProvider; repeat the flag to "
                        "profile several one after another; a comma-separated list is one chain "
                        "(default: the runtime's choice)")
    add_backend_argument(p, d.backend)
    p.add_argument("--batch-size", type=int, default=None, help=f"candidates per band call (default {d.batch_size})")
    p.add_argument("--telemetry", choices=["auto", "off", "tegrastats", "nvml"], default=None,
                   help=f"hardware sampling (default {d.telemetry}; auto: tegrastats on a Jetson, NVML with a desktop "
                   "NVIDIA GPU)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the synthetic documents (default {d.seed})")
    p.add_argument("--estimate", default=None, metavar="DEVICE", help=f"predict for DEVICE: {', '.join(DEVICE_NAMES)}")
    add_spec_arguments(p, "used with --estimate and no BUNDLE (default: exact)", flags=False)
    p.add_argument("--out", default="minireranker-profile",  # run_profile has none: it writes only when given
                   help="folder for profile.json, profile.txt, profile.png (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_profile)
    return p
