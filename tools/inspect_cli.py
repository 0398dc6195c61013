"""``minireranker inspect``: a bundle -> :func:`~minireranker.runtime.bundle.inspect_bundle`, printed."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("inspect", help="describe a bundle",
                              description="Check a bundle's files against their recorded sizes and checksums "
                              "(a damaged or edited bundle is an error), then print its spec, graphs, parameters "
                              "per query, K/V bytes, integrity and files.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)
    return p


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..runtime.bundle import inspect_bundle

    info = inspect_bundle(args.bundle)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    spec = info["spec"]
    weights = {"int8": ", int8 band and tail weights", "int8-qdq": ", int8 Q/DQ band and tail"}.get(info["weights"], "")
    print(f"bundle {info['path']}  fingerprint {info['fingerprint'][:16]}  {info['precision']}{weights}, "
          f"{info['attention']} attention, opset {info['opset']}")
    print(f"spec: exit layer {spec['exit_layer']}, band {spec['band']}, keep {spec['keep_ratio']}, "
          f"guide {spec['guide']}, query position {spec['query_position']}")
    print("graphs:")
    for name, g in info["graphs"].items():
        ins = ", ".join(f"{i['name']}{i['shape']}" for i in g["inputs"])
        outs = ", ".join(f"{o['name']}{o['shape']}" for o in g["outputs"])
        print(f"  {name:<11} {g['parameters'] or 0:>12,} params  ({ins}) -> ({outs})")
    print(f"parameters active per query (query_head + band + tail): {info['parameters_per_query']:,}")
    ex = info["kv_bytes_example"]["image_1024x1024_keep"]
    print(f"K/V bytes per kept document token: {info['kv_bytes_per_token']:,}; "
          f"a 1024x1024 image keeps {ex['tokens']} tokens = {ex['bytes'] / 1e6:.2f} MB")
    print(integrity_line(info["integrity"]))
    for e in info["engines"]:
        print(engines_line(e))
    print("files:")
    for name, size in info["files"].items():
        print(f"  {name:<32} {size:>14,} bytes")
    return 0


def engines_line(e: dict) -> str:
    """One line per GPU engine set in the bundle (minireranker engines)."""
    if "error" in e:
        return f"engines {e['backend']}: unreadable: {e['error']}"
    device = e["device"] or {}
    stale = "" if e["for_this_bundle"] else "  BUILT FOR ANOTHER BUNDLE: rebuild with `minireranker engines`"
    libs = ", ".join(f"{k} {v}" for k, v in (e["versions"] or {}).items() if k != "minireranker")
    return (f"engines {e['backend']}: {len(e['graphs'])} graphs on {device.get('name')} (compute capability "
            f"{device.get('compute_capability')}), built {e['created']} with {libs}{stale}")


def integrity_line(integrity: dict) -> str:
    """One line on what loading the bundle checked (a damaged bundle never gets here: it fails to load)."""
    if integrity["checked"] == "size":
        return (f"integrity: schema {integrity['schema_version']} bundle without checksums: {integrity['files']} files "
                "checked by size only; rebuild it with `minireranker build` to have them checked")
    hashed = integrity["hashed"]
    fresh = f"{hashed} hashed now" if hashed else "none changed since last verified, none hashed"
    stamp = integrity["stamp"] or "none writable: every load hashes"
    return f"integrity: sha256 of {integrity['files']} files verified ({fresh}; stamp {stamp})"
