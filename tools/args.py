"""What several subcommands share: the document and spec arguments, defaults read from the library, and the
check that the ``export`` extra (torch) is installed before a command that needs it starts.

Every default shown here is read from the library (a dataclass field or a function's keyword default), so
the command line never writes one a second time.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import re
from typing import Any, Callable

from ..runtime.errors import DocumentError, MiniRerankerError
from ..runtime.spec import SPEC_FLAGS, RerankSpec, read_spec

DOC_HELP = ("a document: an image PATH, text:STRING, or PATH::text:STRING (image then text); directories and globs "
            "expand")
LIST_HELP = "- reads more from stdin and @FILE from FILE, one a line (blank lines skipped); "
DOCS_HELP = (f"{DOC_HELP}; {LIST_HELP}a path's id is its file's resolved absolute path, whatever the spelling "
             "(docs/cli.md)")
IDS_HELP = ("ids of documents already indexed: an existing file's PATH (or PATH::text:STRING) is looked up by its "
            "resolved absolute path, as index names it; any other id (text:STRING, ...) as written; " + LIST_HELP
            + "a listed id is read as if typed here")
SPEC_FORMS = "a minireranker.json file, an inline JSON object such as '{\"exit_layer\": 2, \"band\": [1, 2], " \
             "\"query_position\": 64}', or 'exact'"

# What the build path imports (the 'export' extra); a command marked with needs_export() checks the first
# before it starts, and a missing one found later is reported the same way (see missing_extra_message).
EXPORT_MODULES = ("torch", "transformers", "onnx", "onnxscript", "polygraphy", "peft")
EXPORT_INSTALL = 'pip install "minireranker[export]"'


def keyword_defaults(func: Callable) -> dict[str, Any]:
    """The keyword defaults of ``func`` (a function or a class, then its ``__init__``), by parameter name."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def shown(value: Any, meaning_of_none: str) -> str:
    """How --help shows a default: the value, or what None means to the library."""
    return f"default: {meaning_of_none}" if value is None else f"default {value}"


# -- value types ----------------------------------------------------------------------------------
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """A byte count written as plain bytes (``1048576``) or with a unit: ``512M``, ``20G``, ``1.5GiB``, ``64kb``.

    K, M, G, T, P (with or without a trailing ``B``) and KiB, MiB, ... are all powers of 1024, as a cache
    bound is usually meant. The result is a positive whole number of bytes (a fraction is rounded down).
    For argparse ``type=``: a bad value raises ArgumentTypeError, which names the flag.
    """
    match = _SIZE_RE.fullmatch(str(text))
    if not match or (match[3] and not match[2]):  # "5iB" is not a size
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write bytes (1048576) or a number with a unit "
                                         "(512M, 20G, 1.5GiB)")
    value = math.floor(float(match[1]) * 1024 ** _SIZE_POWERS[match[2].lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size; give at least 1 byte")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``: a bad value raises ArgumentTypeError, which names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1; give an integer >= 1")
    return value


# -- the export extra -----------------------------------------------------------------------------
def needs_export(parser: argparse.ArgumentParser) -> None:
    """Mark a subcommand as needing torch (the 'export' extra): main checks it before the command runs."""
    parser.set_defaults(needs=EXPORT_MODULES[:1])


def missing_extra_message(command: str, module: str) -> str:
    """The one line a command prints when a module of the 'export' extra is not installed."""
    return f"minireranker {command} needs {module}, which is not installed: install the 'export' extra " \
           f"({EXPORT_INSTALL})"


def check_needs(args: argparse.Namespace) -> None:
    """Raise a one-line MiniRerankerError when a module the command needs cannot be imported."""
    for module in getattr(args, "needs", ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-removed install counts as missing
            found = False
        if not found:
            raise MiniRerankerError(missing_extra_message(args.command, module))


def is_export_module(exc: ModuleNotFoundError) -> bool:
    """True when ``exc`` is a module of the 'export' extra that is missing (not a bug in this package)."""
    return (exc.name or "").split(".")[0] in EXPORT_MODULES


# -- the spec -------------------------------------------------------------------------------------
def add_spec_arguments(parser: argparse.ArgumentParser, default_help: str, flags: bool = True) -> None:
    """``--spec`` (a file, inline JSON or 'exact') and, with ``flags``, ``--exact`` and the individual flags."""
    parser.add_argument("--spec", default=None, metavar="FILE_OR_JSON", help=f"the spec: {SPEC_FORMS}; {default_help}")
    if not flags:
        return
    parser.add_argument("--exact", action="store_true", help="the exact spec (A=0, B=E=L-1, keep 1)")
    parser.add_argument("--exit-layer", type=int, default=None, help="E: score at the output of this layer")
    parser.add_argument("--band", default=None, metavar="A:B", help="layers where the query sees the document")
    parser.add_argument("--keep-ratio", type=float, default=None, help="fraction of visual tokens kept (0 < r <= 1)")
    parser.add_argument("--guide", default=None, help="pruning guide: self or embedder:DIR")
    parser.add_argument("--query-position", type=int, default=None,
                        help="fixed query position (required when A > 0)")


def spec_from_args(args: argparse.Namespace) -> RerankSpec | None:
    """The spec of the arguments added by :func:`add_spec_arguments` (None: the checkpoint's own)."""
    flags = {name: getattr(args, name, None) for name in SPEC_FLAGS}
    given = read_spec(args.spec, exact=getattr(args, "exact", False), flags=flags)
    return None if given is None else given.spec


# -- the runtime ----------------------------------------------------------------------------------
def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """BUNDLE, --cache and the Reranker options of ``index`` and ``rerank`` (defaults: Reranker's own)."""
    from ..runtime.reranker import Reranker

    d = keyword_defaults(Reranker)
    parser.add_argument("bundle", help="bundle directory (from minireranker build)")
    parser.add_argument("--cache", required=True, help="K/V cache directory")
    parser.add_argument("--provider", action="append", default=d["providers"],
                        help="ONNX Runtime execution provider (repeatable); "
                        + shown(d["providers"], "TensorRT, CUDA, CPU where present"))
    add_backend_argument(parser, d["backend"])
    parser.add_argument("--max-cache-bytes", type=parse_size, default=d["max_cache_bytes"], metavar="SIZE",
                        help="LRU bound on the cache size: bytes, or with a unit (512M, 20G, 1.5GiB; powers of "
                        f"1024) ({shown(d['max_cache_bytes'], 'no bound')})")
    parser.add_argument("--max-document-tokens", type=positive_int, default=d["max_document_tokens"], metavar="N",
                        help="refuse a document longer than N tokens (template, image and text tokens), per "
                        f"document, before any engine runs ({shown(d['max_document_tokens'], 'the model positions')})")
    parser.add_argument("--int8-cache", action="store_true", default=d["int8_cache"],
                        help="store K/V as int8 with per-channel scales")


def add_backend_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--backend``: which engines run the graphs (runtime/backends.py)."""
    from ..runtime.backends import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help=f"engines that run the graphs (default {default}); the GPU backends need "
                        "`minireranker engines BUNDLE --backend NAME` first (docs/engines.md)")


def reranker_options(args: argparse.Namespace) -> dict:
    """The Reranker keyword options of the arguments added by :func:`add_runtime_arguments`."""
    return {"providers": args.provider, "backend": args.backend, "max_cache_bytes": args.max_cache_bytes,
            "int8_cache": args.int8_cache, "max_document_tokens": args.max_document_tokens}


def with_ids(docs: list) -> list:
    """On the command line a document's id is its command-line id (runtime/documents.py: a path's is the file's
    resolved absolute path, a text's text:...), so that `rerank --ids X` finds what `index X` cached however
    X is spelt; a changed file under the same path is re-indexed."""
    import dataclasses

    from ..runtime.documents import command_line_id

    return [d if d.id is not None else dataclasses.replace(d, id=command_line_id(d)) for d in docs]


def read_stdin_once(**lists: list[str] | str | None) -> None:
    """Refuse ``-`` (stdin) in more than one place among the named arguments: stdin is read once."""
    places = [name for name, value in lists.items() for v in ([value] if isinstance(value, str) else value or [])
              if v == "-"]
    if len(places) > 1:
        raise DocumentError(f"'-' (stdin) is given {len(places)} times ({', '.join(places)}); stdin can be read "
                            "once: put the other list in a file and pass @FILE")


def documents_from_args(args: list[str]) -> list:
    """The documents of DOC arguments (``-`` and ``@FILE`` lists expanded, then directories and globs), each
    with its command-line id."""
    from ..runtime.documents import expand_document_args, expand_list_args

    return with_ids(expand_document_args(expand_list_args(args)))
