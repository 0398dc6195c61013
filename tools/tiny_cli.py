"""``minireranker tiny``: flags -> :func:`~minireranker.export.tiny.write_tiny_checkpoint`."""

from __future__ import annotations

import argparse

from .args import SPEC_FORMS, keyword_defaults, needs_export


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``tiny`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..export.tiny import write_tiny_checkpoint  # numpy only: torch loads when the weights are drawn

    d = keyword_defaults(write_tiny_checkpoint)
    p = subparsers.add_parser("tiny", help="write a random-weight tiny checkpoint (for tests and trials)",
                              description="Write a complete tiny Qwen3-VL, Qwen2-VL or Qwen2.5-VL checkpoint with "
                                          "random weights (the preset picks the architecture; --list shows them).")
    p.add_argument("output", nargs="?", help="directory to write")
    p.add_argument("--preset", default=d["preset"],
                   help=f"tiny preset name (--list prints them with their architectures; default {d['preset']})")
    p.add_argument("--list", action="store_true", help="print the preset names and their architectures, then exit")
    p.add_argument("--seed", type=int, default=d["seed"], help=f"weight seed (default {d['seed']})")
    p.add_argument("--spec", default=None, metavar="FILE_OR_JSON",
                   help=f"a spec to write into the checkpoint as its minireranker.json: {SPEC_FORMS}")
    needs_export(p)
    p.set_defaults(func=cmd_tiny)
    return p


def cmd_tiny(args: argparse.Namespace) -> int:
    from ..export.tiny import preset_listing, write_tiny_checkpoint
    from ..runtime.errors import MiniRerankerError
    from ..runtime.spec import read_spec

    if args.list:
        print(preset_listing())
        return 0
    if args.output is None:
        raise MiniRerankerError("minireranker tiny needs the directory to write (or --list to see the presets)")
    spec = None
    if args.spec is not None:
        given = read_spec(args.spec)  # a missing or invalid spec is a SpecError here, not a traceback
        spec = given.data if given.data is not None else given.spec.to_dict()  # a file's JSON is copied unchanged
    path = write_tiny_checkpoint(args.output, args.preset, seed=args.seed, spec=spec)
    print(f"wrote a random-weight tiny checkpoint ({args.preset}, seed {args.seed}) to {path}")
    return 0
