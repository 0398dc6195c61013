"""The bundle: the contract between ``minireranker build`` (export) and the runtime.

A bundle directory holds::

    bundle.json          this schema (below)
    tokenizer.json       the reranker's tokenizer
    embed_tokens.npy     the embedding table [vocab, D] in the bundle's precision (memory-mapped)
    system_k.npy, system_v.npy   K and V of the system segment, layers 0..E: [E+1, 1, Hkv, S, d] (stored once)
    instruction_hidden.npy       the instruction segment entering layer A: [1, I, D] (the doc_prefix input)
    instruction_k.npy, instruction_v.npy   its K and V of layers 0..A-1: [A, 1, Hkv, I, d] (the query head's);
                         layers A..E depend on the document and are stored in each K/V entry
    onnx/<graph>.onnx    vision, doc_prefix, band, tail, and query_head (A > 0), guide (self-guided pruning)
    embedder/            with an embedder guide: its tokenizer.json, embed_tokens.npy, system_k/v.npy,
                         onnx/vision.onnx, onnx/guide.onnx

``bundle.json`` (schema version 3)::

    schema_version    3 (1: before the graph I/O table; 2: the instruction segment ran per pair; the runtime
                      refuses both: rebuild the bundle)
    fingerprint       sha256 of the checkpoint's files, the spec, the build settings that shape the K/V
                      (precision, attention) and EXPORT_VERSION; the K/V store keys entries by it, so a new
                      bundle never reads an old entry. "weights" is not in it: int8 weights change only the
                      band and tail, so a float and an int8 bundle of one checkpoint and spec share their (equal)
                      K/V entries
    minireranker_version, export_version, created (UTC ISO 8601)
    source            {"checkpoint": path, "model_type": "qwen3_vl"}
    spec              the resolved RerankSpec (runtime/spec.py), every field explicit
    template          {"system_ids", "instruction_ids", "yes_id", "no_id", "image_pad_id", "vision_start_id",
                       "vision_end_id"}
                      (the strings are in "spec"; the ids let anyone check the tokenizer)
    model             {"hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "head_dim",
                       "intermediate_size", "vocab_size", "num_deepstack", "max_position_embeddings"
                       (int, or null where config.json has none: the document limit then falls back,
                       runtime/limits.py),
                       "vision": {"patch_size", "merge_size", "side", "head_dim", "rope_theta", "depth",
                                  "hidden_size", "num_heads", "intermediate_size"}}
                      (the shapes the runtime needs, and those `profile --estimate` counts FLOPs with)
    preprocess        PreprocessConfig.to_dict() (runtime/preprocess.py)
    precision         "fp32" | "fp16": weights, embeddings, system and stored K/V
    attention         "portable" (MatMul/Softmax, opset 17) | "fused" (ONNX Attention, opset 23)
    weights           "float" (the precision's) | "int8": the band's and tail's MatMul weights as int8
                      (MatMulInteger, export/quantize.py; fp32 bundles only, for CPUs); absent in bundles
                      built before it, which read as "float"
    opset             the ONNX opset of every graph
    graphs            {name: {"file", "parameters", "inputs": [{"name", "dtype", "shape"}], "outputs": [...]}}
                      as the exported file declares them: "file" is relative to the bundle directory (the
                      embedder's too: "embedder/onnx/guide.onnx"); "dtype" a numpy name ("float32",
                      "int64", "bool"); a shape entry is an int or the name of a dynamic axis. Names, dims
                      and dtypes follow the graph I/O table (runtime/graph_io.py), which the runtime
                      checks every graph against when it loads it.
    guide             null | {"kind": "self", "layer": g} |
                      {"kind": "embedder", "layer": g, "dir": "embedder", "system_ids", "image_pad_id",
                       "model": {...as above...}, "graphs": {...}}
    validation        {graph: {"output": name, "max_abs_diff": x, "tolerance": t}} as measured at build
    files             {relative path: size in bytes}

Weights of one graph above 2 GB go to ONNX external data beside the graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MiniRerankerError
from .graph_io import GRAPH_IO
from .preprocess import PreprocessConfig
from .spec import RerankSpec

SCHEMA_VERSION = 3
BUNDLE_FILE = "bundle.json"
GRAPHS = tuple(GRAPH_IO)


class BundleError(MiniRerankerError):
    """A bundle directory is missing, incomplete, or from an unsupported schema version."""


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated ``bundle.json`` with its directory."""

    path: Path
    data: dict[str, Any]
    spec: RerankSpec
    preprocess: PreprocessConfig

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def graphs(self) -> dict[str, dict]:
        return self.data["graphs"]

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    @property
    def template(self) -> dict[str, Any]:
        return self.data["template"]

    @property
    def guide(self) -> dict[str, Any] | None:
        return self.data.get("guide")

    def graph_path(self, graph: dict[str, Any]) -> Path:
        """Where a graph entry of ``graphs`` (the reranker's or the embedder's) lies: its ``file`` is
        relative to the bundle directory."""
        return self.path / graph["file"]


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate ``bundle.json``; every file it names must exist."""
    path = Path(path)
    meta = path / BUNDLE_FILE
    if not meta.is_file():
        raise BundleError(f"{path} is not a bundle: {BUNDLE_FILE} is missing; build one with `minireranker build`")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta} is not valid JSON ({exc}); rebuild the bundle") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, int):
        raise BundleError(f"{meta} has no schema_version; rebuild the bundle")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{meta} has schema version {version}, newer than this runtime reads ({SCHEMA_VERSION}); "
            "upgrade minireranker, or rebuild the bundle with this version"
        )
    if version < SCHEMA_VERSION:
        raise BundleError(f"{meta} has old schema version {version} (this runtime reads {SCHEMA_VERSION}); "
                          "rebuild it with `minireranker build`")
    for key in ("fingerprint", "spec", "template", "model", "preprocess", "precision", "graphs", "files"):
        if key not in data:
            raise BundleError(f"{meta} lacks '{key}'; rebuild the bundle")
    missing = [name for name in data["files"] if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is incomplete, missing: {missing[:5]}; copy the whole directory or rebuild")
    _check_graph_entries(meta, data)
    spec = RerankSpec.from_dict(data["spec"], source=str(meta))
    return Bundle(path, data, spec, PreprocessConfig.from_dict(data["preprocess"]))


def _check_graph_entries(meta: Path, data: dict[str, Any]) -> None:
    """Every graph is one of the table's, and its file one of the bundle's listed (so present) files."""
    entries = list(data["graphs"].items()) + list(((data.get("guide") or {}).get("graphs") or {}).items())
    unknown = sorted({name for name, _ in entries if name not in GRAPH_IO})
    if unknown:
        raise BundleError(f"{meta} names graphs this runtime does not know ({unknown}); rebuild the bundle")
    unlisted = [g.get("file") for _, g in entries if g.get("file") not in data["files"]]
    if unlisted:
        raise BundleError(f"{meta} names graph files it does not list under 'files' ({unlisted[:3]}); "
                          "rebuild the bundle")


def kv_bytes_per_token(bundle: Bundle) -> int:
    """Bytes of stored K/V per kept document token: (B-A+1) layers x 2 x Hkv x d x bytes."""
    a, b = bundle.spec.band
    m = bundle.model
    return (b - a + 1) * 2 * m["num_kv_heads"] * m["head_dim"] * (2 if bundle.precision == "fp16" else 4)


def kv_instruction_bytes(bundle: Bundle) -> int:
    """Bytes of the instruction segment's K/V in each entry: I tokens x (E-A+1) layers x 2 x Hkv x d x bytes."""
    a, e = bundle.spec.band[0], bundle.spec.exit_layer
    m = bundle.model
    tokens = len(bundle.template["instruction_ids"])
    return tokens * (e - a + 1) * 2 * m["num_kv_heads"] * m["head_dim"] * (2 if bundle.precision == "fp16" else 4)


def inspect_bundle(path: str | Path) -> dict[str, Any]:
    """What ``minireranker inspect`` prints: spec, graphs, parameters per query, K/V bytes, files."""
    bundle = load_bundle(path)
    graphs = bundle.graphs
    per_query = [g for g in ("query_head", "band", "tail") if g in graphs]
    active = sum(graphs[g].get("parameters", 0) for g in per_query)
    per_token = kv_bytes_per_token(bundle)
    v = bundle.model["vision"]
    side = v["patch_size"] * v["merge_size"]
    return {
        "path": str(bundle.path), "fingerprint": bundle.fingerprint, "precision": bundle.precision,
        "attention": bundle.data.get("attention"), "weights": bundle.data.get("weights", "float"),
        "opset": bundle.data.get("opset"),
        "spec": bundle.data["spec"], "guide": bundle.guide,
        "graphs": {name: {"file": g["file"], "parameters": g.get("parameters"), "inputs": g["inputs"],
                          "outputs": g["outputs"]} for name, g in graphs.items()},
        "parameters_per_query": active,
        "kv_bytes_per_token": per_token,
        "kv_instruction_bytes": kv_instruction_bytes(bundle),
        "kv_bytes_example": {
            "image_1024x1024_keep": {"tokens": int((1024 // side) ** 2 * bundle.spec.keep_ratio),
                                     "bytes": int((1024 // side) ** 2 * bundle.spec.keep_ratio) * per_token}},
        "validation": bundle.data.get("validation"),
        "files": bundle.data["files"],
    }
