"""The ``minireranker`` command line: a thin layer over the library.

Each subcommand lives in its own ``tools/<name>_cli.py``, whose ``register(subparsers)`` adds it; this module
collects them and dispatches. Errors a user can cause are printed as one line (``error: ...``) with exit
status 2, never as a traceback; so is a command that needs the ``export`` extra on an install without it.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..runtime.errors import MiniRerankerError
from . import (adapt_cli, bench_cli, build_cli, calibrate_cli, demo_cli, engines_cli, eval_cli, index_cli,
               inspect_cli, profile_cli, quantize_cli, reference_cli, rerank_cli, serve_cli, tiny_cli, verify_cli)
from .args import check_needs, is_export_module, missing_extra_message

# In the order --help lists them: the build path, the runtime, measuring, serving, then the helpers.
COMMANDS = (reference_cli, build_cli, engines_cli, index_cli, rerank_cli, inspect_cli, bench_cli, eval_cli,
            calibrate_cli, adapt_cli, quantize_cli, profile_cli, serve_cli, tiny_cli, verify_cli, demo_cli)


def package_version() -> str:
    """The installed package's version (importlib.metadata), or 'unknown' when run from an uninstalled tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("minireranker")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``minireranker`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="minireranker",
        description="Deploy multimodal point-wise rerankers (Qwen3-VL, Qwen2-VL, Qwen2.5-VL) fast: vision-first "
        "prefix caching, early exit, interaction band and embedder-guided pruning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv), run the subcommand, and return its exit status."""
    import warnings

    # Pillow warns (with a source line) about images between 1x and 2x its pixel limit; the runtime
    # refuses those itself with a one-line message, so the warning is only noise on the terminal.
    warnings.filterwarnings("ignore", message=".*decompression bomb.*")
    parser = build_parser()
    # DOC arguments may follow options (`rerank B --cache C --query Q doc1 doc2`): argparse's greedy
    # positional matching leaves them over, so they are appended to the documents here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "documents") or any(x.startswith("-") and x != "-" for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.documents = list(args.documents or []) + extra
    try:
        check_needs(args)  # before the command writes anything
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away fails here, in the handler below, not at exit
        return status
    except MiniRerankerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if not is_export_module(exc):
            raise
        # a module of the extra that the check before the command does not look for (onnx, transformers...)
        print(f"error: {missing_extra_message(args.command, exc.name.split('.')[0])}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`minireranker inspect B --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
