"""``minireranker serve``: flags (or their environment variables) -> ServeConfig -> ``serve``.

Every flag has an environment variable (``MINIRERANKER_`` + the flag in upper case, ``-`` -> ``_``, e.g.
``--api-key`` / ``MINIRERANKER_API_KEY``); a flag given on the command line wins over its variable.
Defaults live in ServeConfig and ServeLimits only.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from ..runtime.errors import MiniRerankerError
from .args import parse_size

ENV_PREFIX = "MINIRERANKER_"

# flag -> (type, help); the default is read from ServeConfig / ServeLimits by the field of the same name.
_FLAGS: dict[str, tuple[type, str]] = {
    "host": (str, "address to listen on; 127.0.0.1 (loopback) unless set"),
    "port": (int, "port; 0 picks a free one (printed)"),
    "api-key": (str, "require 'Authorization: Bearer KEY' (prefer the environment variable)"),
    "max-batch": (int, "pairs per band/tail engine call and per dynamic batch"),
    "batch-window-ms": (float, "how long concurrent requests are gathered into one batch"),
    "max-client-batch-size": (int, "documents per request (more: 413)"),
    "served-model-name": (str, "the 'model' reported in responses (default: the bundle folder's name)"),
    "max-body-bytes": (int, "request body size (more: 413, refused before the body is read)"),
    "max-document-tokens": (int, "tokens of one document (more: 413, or cut with \"truncate\": true; "
                                 "default: the model's own limit)"),
    "header-timeout-s": (float, "the request line and headers must arrive within this (else 408)"),
    "body-timeout-s": (float, "the whole request body must arrive within this (else 408)"),
    "keep-alive-timeout-s": (float, "an idle keep-alive connection is closed after this"),
    "max-connections": (int, "open connections at once (one more: 503)"),
    "max-requests-per-connection": (int, "answers on one keep-alive connection, then it is closed"),
    "max-header-bytes": (int, "request line + headers (more: 414 / 431)"),
    "url-timeout-s": (float, "total deadline of one image URL fetch"),
    "max-image-pixels": (int, "width*height of one image (more: 413)"),
    "max-query-tokens": (int, "query tokens, at most 512 (more: 413)"),
    "index-workers": (int, "POST /v1/documents jobs at once (reranking never waits for them)"),
    "max-cache-bytes": (parse_size, "LRU bound on the K/V cache size (bytes, or 512M, 20G, 1.5GiB)"),
    "drain-timeout-s": (float, "on SIGTERM, how long requests in flight may take to finish"),
    "backend": (str, "engines that run the graphs: onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt or tensorrt "
                     "(the GPU backends need `minireranker engines` first; docs/engines.md)"),
}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _defaults() -> dict:
    from ..runtime.serve.api import ServeLimits
    from ..runtime.serve.service import ServeConfig

    out = {f.name: f.default for f in fields(ServeLimits)}
    out.update({f.name: f.default for f in fields(ServeConfig) if f.name != "limits"})
    return out


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    defaults = _defaults()
    p = subparsers.add_parser(
        "serve", help="serve reranking over HTTP (Cohere v2 / Jina / Infinity / TEI compatible)",
        description="An HTTP rerank service on the bundle's engines: POST /v1/rerank (also /rerank, /v2/rerank), "
        "POST /v1/documents, GET|DELETE /v1/documents/{id}, GET /v1/models, /info, /health, /v1/health/live, "
        "/v1/health/ready, /openapi.json, "
        "/metrics. Each flag can also be set by its environment variable (shown in brackets); a flag wins. "
        "SIGTERM finishes requests in flight and exits 0. Needs the 'serve' extra. See docs/serve.md.")
    p.add_argument("bundle", nargs="?", default=os.environ.get(env_name("bundle")),
                   help=f"bundle directory (from minireranker build) [{env_name('bundle')}]")
    p.add_argument("--cache", default=os.environ.get(env_name("cache")), help=f"K/V cache directory [{env_name('cache')}]")
    for flag, (kind, text) in _FLAGS.items():
        name = flag.replace("-", "_")
        shown = f"; default {defaults[name]}" if defaults[name] is not None and "default" not in text else ""
        p.add_argument(f"--{flag}", type=kind, default=None, help=f"{text}{shown} [{env_name(flag)}]")
    p.add_argument("--allow-url-prefix", action="append", default=None, metavar="URL",
                   help="fetch image URLs under this prefix (repeatable; default: image URLs are refused) "
                   f"[{env_name('allow-url-prefix')}, comma-separated]")
    p.add_argument("--provider", action="append", default=None,
                   help=f"ONNX Runtime execution provider (repeatable) [{env_name('provider')}, comma-separated]")
    p.add_argument("--int8-cache", action="store_true", default=None,
                   help=f"store K/V as int8 with per-channel scales [{env_name('int8-cache')}=1]")
    p.add_argument("--read-only", action="store_true", default=None,
                   help="read the cache that another serve process (the writer) or `minireranker index` fills: "
                   "never write or evict; a document not cached fails (404) instead of being computed; POST and "
                   f"DELETE /v1/documents answer 403; default off [{env_name('read-only')}=1]")
    p.set_defaults(func=cmd_serve)
    return p


def _from_env(flag: str, kind: type):
    raw = os.environ.get(env_name(flag))
    if flag == "api-key" and raw is not None and not raw.strip():
        raise MiniRerankerError(f"{env_name(flag)} is set but empty, which would serve without authentication; "
                                f"set a key, or unset the variable (unset {env_name(flag)}) to serve without one")
    if raw is None or raw == "":
        return None
    try:
        return kind(raw)
    except (ValueError, argparse.ArgumentTypeError):
        what = "size" if kind is parse_size else kind.__name__
        raise MiniRerankerError(f"environment variable {env_name(flag)}={raw!r} is not a valid "
                                f"{what} for --{flag}") from None


def config_from_args(args: argparse.Namespace):
    """ServeConfig from parsed flags, falling back to environment variables, then to the defaults."""
    from ..runtime.serve.api import ServeLimits
    from ..runtime.serve.service import ServeConfig

    if not args.bundle or not args.cache:
        raise MiniRerankerError(f"give the BUNDLE directory and --cache DIR (or {env_name('bundle')} and "
                                f"{env_name('cache')})")
    given = {}
    for flag, (kind, _) in _FLAGS.items():
        name = flag.replace("-", "_")
        value = getattr(args, name)
        value = value if value is not None else _from_env(flag, kind)
        if value is not None:
            given[name] = value
    lists = {}
    for flag in ("allow-url-prefix", "provider"):
        value = getattr(args, flag.replace("-", "_"))
        env = os.environ.get(env_name(flag))
        lists[flag] = tuple(value) if value else tuple(x for x in (env or "").split(",") if x) or None
    limit_names = {f.name for f in fields(ServeLimits)}
    limits = ServeLimits(**{k: v for k, v in given.items() if k in limit_names},
                         allow_url_prefixes=lists["allow-url-prefix"] or ())
    return ServeConfig(bundle=args.bundle, cache=args.cache, limits=limits, providers=lists["provider"],
                       int8_cache=_switch(args, "int8-cache"), read_only=_switch(args, "read-only"),
                       **{k: v for k, v in given.items() if k not in limit_names})


def _switch(args: argparse.Namespace, flag: str) -> bool:
    """An on/off flag: given on the command line, or its variable set to 1 or true."""
    value = getattr(args, flag.replace("-", "_"))
    return bool(value) if value is not None else os.environ.get(env_name(flag)) in ("1", "true")


def _require_serve_extra() -> None:
    """One line, not a traceback, on an install without the ``serve`` extra."""
    import importlib

    missing = []
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MiniRerankerError(f"minireranker serve needs the 'serve' extra ({', '.join(missing)} not installed): "
                                "pip install 'minireranker[serve]'")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..runtime.bundle import load_bundle

    _require_serve_extra()
    from ..runtime.serve.server import serve

    config = config_from_args(args)
    load_bundle(config.bundle)  # a wrong path fails here, in one line, before the port is bound
    return serve(config)
