"""``engines.json``: what ``minireranker engines`` built for a bundle, and the check before it is run.

``BUNDLE/engines/<backend>/engines.json`` (schema version 1)::

    schema_version      1
    backend             "tensorrt" | "onnxruntime-tensorrt" | "onnxruntime-cuda"
    bundle_fingerprint  bundle.json's "fingerprint" the engines were built for
    created             UTC ISO 8601
    versions            {"tensorrt", "polygraphy", "onnxruntime", "minireranker"}: those present at build
    device              {"name", "compute_capability", "index"} (engines/device.py)
    precision           {"bundle": "fp32" | "fp16", "fp16_flag": the FP16 builder flag (an fp32 bundle built
                         with --fp16), "int8_flag": the INT8 flag (a Q/DQ bundle on a weakly typed build),
                         "qdq": the bundle has Q/DQ graphs, "strongly_typed": native plans of an fp16 bundle
                         or of TensorRT 11}
    workspace_mib       the builder's workspace pool limit, or null (TensorRT's default)
    batch_size          the largest batch the profiles take (the reranker's batch size)
    axes                {graph: {axis: [min, opt, max]}} (engines/profiles.py)
    graphs              {graph key ("band", "embedder/vision"): {"onnx": bundle-relative path,
                         "onnx_sha256": that file's checksum in bundle.json, "file": the plan relative to
                         this folder (tensorrt only), "sha256": the plan's, "profile": {input: {"min", "opt",
                         "max"}}}}

A set built for another bundle, TensorRT version or GPU cannot run (a plan is tied to all three): the
runtime refuses it in one line saying to rebuild (:func:`check_manifest`), before any plan is deserialized.
A plan is native code for the GPU; its checksum is verified at every load, like a bundle's files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import EngineError

ENGINES_DIR = "engines"
ENGINES_FILE = "engines.json"
MANIFEST_VERSION = 1
BACKENDS = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda")


def engines_folder(bundle_dir: str | Path, backend: str) -> Path:
    return Path(bundle_dir) / ENGINES_DIR / backend


def rebuild_hint(bundle_dir: str | Path, backend: str) -> str:
    return f"rebuild them with `minireranker engines {bundle_dir} --backend {backend}`"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (a plan's here; runtime/bundle.py checks a bundle's files with it too)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, data: dict[str, Any]) -> Path:
    """Write engines.json atomically (a temporary file renamed into place)."""
    path = folder / ENGINES_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"schema_version": MANIFEST_VERSION, **data}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(bundle_dir: str | Path, backend: str) -> dict[str, Any]:
    """engines.json of ``backend``, or one line saying to build it."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown engine backend {backend!r}; choose one of {list(BACKENDS)}")
    path = engines_folder(bundle_dir, backend) / ENGINES_FILE
    if not path.is_file():
        raise EngineError(f"{bundle_dir} has no {backend} engines; build them with "
                          f"`minireranker engines {bundle_dir} --backend {backend}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path} cannot be read ({exc}); {rebuild_hint(bundle_dir, backend)}") from None
    if not isinstance(data, dict) or data.get("schema_version") != MANIFEST_VERSION or data.get("backend") != backend:
        raise EngineError(f"{path} is not a version {MANIFEST_VERSION} {backend} engines.json; "
                          f"{rebuild_hint(bundle_dir, backend)}")
    return data


def check_manifest(manifest: dict[str, Any], bundle_dir: str | Path, fingerprint: str,
                   onnx_sha256: dict[str, str], versions: dict[str, str | None], device: dict | None) -> None:
    """Refuse, in one line, engines built for another bundle, library version or GPU."""
    backend = manifest["backend"]
    hint = rebuild_hint(bundle_dir, backend)
    if manifest.get("bundle_fingerprint") != fingerprint:
        raise EngineError(f"the {backend} engines of {bundle_dir} were built for another bundle "
                          f"(fingerprint {str(manifest.get('bundle_fingerprint'))[:12]}, this one {fingerprint[:12]}); "
                          f"{hint}")
    for key, graph in manifest.get("graphs", {}).items():
        if onnx_sha256.get(graph.get("onnx")) != graph.get("onnx_sha256"):
            raise EngineError(f"the {backend} engine of graph '{key}' was built from another {graph.get('onnx')}; "
                              f"{hint}")
    for library, built in manifest.get("versions", {}).items():
        if library in versions and built is not None and versions[library] != built:
            raise EngineError(f"the {backend} engines of {bundle_dir} were built with {library} {built}, this "
                              f"machine has {versions[library] or 'none'}; {hint}")
    built_on = manifest.get("device")
    if built_on is not None:
        if device is None:
            raise EngineError(f"the {backend} engines of {bundle_dir} need an NVIDIA GPU ({built_on['name']}), "
                              "and no CUDA driver or device was found here")
        if (device["name"], device["compute_capability"]) != (built_on["name"], built_on["compute_capability"]):
            raise EngineError(f"the {backend} engines of {bundle_dir} were built on {built_on['name']} (compute "
                              f"capability {built_on['compute_capability']}), this is {device['name']} "
                              f"({device['compute_capability']}); {hint}")


def check_plan(folder: Path, key: str, graph: dict[str, Any], bundle_dir: str | Path, backend: str) -> Path:
    """The plan file of graph ``key``, present and with its recorded checksum."""
    path = folder / graph["file"]
    if not path.is_file() or sha256_file(path) != graph.get("sha256"):
        raise EngineError(f"the {backend} plan of graph '{key}' ({path}) is missing or changed since it was built; "
                          f"{rebuild_hint(bundle_dir, backend)}")
    return path
