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

``bundle.json`` (schema version 4)::

    schema_version    4 (1: before the graph I/O table; 2: the instruction segment ran per pair; the runtime
                      refuses both: rebuild the bundle. 3: before "sha256" and "meta_sha256": read with a
                      warning, its files checked by size only; rebuild it to have them checked)
    fingerprint       sha256 of the checkpoint's files, the spec, the build settings that shape the K/V
                      (precision, attention) and EXPORT_VERSION: what the build made the bundle from. "weights"
                      is not in it: int8 weights change only the band and tail. The K/V store's namespace is
                      derived from it at load time (see "Integrity" below), never used alone
    minireranker_version, export_version, created (UTC ISO 8601)
    source            {"checkpoint": path, "model_type": "qwen3_vl"}
    spec              the resolved RerankSpec (runtime/spec.py), every field explicit
    template          {"format" (the spec's template), "system_ids", "instruction_ids", "score_ids" (appended
                       after each query), "head" (its kind), "yes_id", "no_id" (null for a classifier head),
                       "image_pad_id", "vision_start_id", "vision_end_id"}
                      (the strings and the head's settings are in "spec"; the ids let anyone check the
                      tokenizer; schema 4 bundles without "format"/"score_ids" are vision-first, none)
    model             {"hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "head_dim",
                       "intermediate_size", "vocab_size", "num_deepstack", "max_position_embeddings"
                       (int, or null where config.json has none: the document limit then falls back,
                       runtime/limits.py),
                       "vision": {"patch_size", "merge_size", "side", "head_dim", "rope_theta", "depth",
                                  "hidden_size", "num_heads", "intermediate_size", and "window_size" only for a
                                  tower with window attention}}
                      ("side": of the learned position table, 0 when the tower has none (Qwen2-VL,
                      Qwen2.5-VL); "window_size": the attention window in pixels (Qwen2.5-VL), from which
                      the runtime computes the vision graph's window_id input; absent: no windows)
                      (the shapes the runtime needs, and those `profile --estimate` counts FLOPs with)
    preprocess        PreprocessConfig.to_dict() (runtime/preprocess.py)
    precision         "fp32" | "fp16": weights, embeddings, system and stored K/V
    attention         "portable" (MatMul/Softmax, opset 17) | "fused" (ONNX Attention, opset 23) | "plugin"
                      (portable, the band's attention one minireranker.BandAttention node per layer: the
                      TensorRT plugin of engines/band_plugin.py; only the tensorrt backend runs it)
    weights           "float" (the precision's) | "int8": the band's and tail's MatMul weights as int8
                      (MatMulInteger, export/quantize.py; fp32 bundles only, for CPUs); absent in bundles
                      built before it, which read as "float" | "int8-qdq": the band and tail with explicit
                      Q/DQ nodes (``minireranker quantize``, calibration/qdq.py), then also
    quantization      {"format": "qdq", "graphs": {graph: QuantizeLinear nodes}, "method", "data",
                       "calibration_queries", "source_bundle"} (Q/DQ bundles only)
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
    files             {relative path: size in bytes}: every file of the bundle but bundle.json
    sha256            {relative path: hex sha256 of the file}: the same paths as "files"
    meta_sha256       hex sha256 of this JSON less "meta_sha256" and "validation" (the build's report, which
                      it writes last), as :func:`meta_checksum` serializes it (sorted keys, no spaces)

Integrity (docs/security.md, "Bundle integrity"). A bundle that changed after its build is refused in one
line (:class:`BundleIntegrityError`) naming the file and saying to rebuild it, before any engine opens:

* bundle.json: ``meta_sha256`` must match its content, so an edited spec (``query_position``,
  ``exit_layer``, ``band``), template or model is refused; the spec must also fit the model and the stored
  arrays (checked for schema 3 bundles too, which have no ``meta_sha256``);
* every file of ``files``: present, and of its recorded size, on every load (a stat each);
* every file's sha256, whenever it may have changed since it was last verified. A stamp records, per file,
  the (size, mtime_ns, ctime_ns, inode) it had when its checksum last matched; a file whose stat still
  equals its stamp is not read again, so a warm start costs one stat per file. The stamp is
  ``<bundle>/.minireranker-verified.json``; where the bundle folder cannot be written it is
  ``$XDG_CACHE_HOME/minireranker/bundles/<sha256 of the bundle's absolute path>.json`` (``~/.cache`` without
  XDG_CACHE_HOME); where neither can be written, every load hashes every file (logged once). A file
  changed less than :data:`RACY_NS` before it was hashed is not stamped (file times can be coarser than the
  write that follows the check), so it is hashed again next time. The stamp is a cache of checks, not a
  seal: whoever can write the bundle folder can also rewrite bundle.json.

The K/V store's namespace (:attr:`Bundle.namespace`) is the sha256 of the fingerprint, the spec as loaded,
the template, model, preprocess, precision, attention and guide, and the verified checksums of every file
the entries are computed from (all but the per-query graphs query_head, band and tail, so a float and an
int8 bundle of one build share their equal entries). An edited or damaged bundle is refused; and were a
bundle edited consistently (bundle.json rewritten to match), any change that shapes the K/V changes the
namespace, so it cannot read entries written under the original. A schema 3 bundle has only sizes: its
namespace uses them in place of checksums, and a same-size change to its files goes unseen (the warning
says so).

Weights of one graph above 2 GB go to ONNX external data beside the graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engines.manifest import sha256_file
from .errors import MiniRerankerError, SpecError
from .graph_io import GRAPH_IO
from .preprocess import PreprocessConfig
from .spec import RerankSpec

SCHEMA_VERSION = 4  # 4: "sha256" and "meta_sha256"
LEGACY_SCHEMA_VERSION = 3  # read with a warning: sizes only
BUNDLE_FILE = "bundle.json"
GRAPHS = tuple(GRAPH_IO)
STAMP_FILE = ".minireranker-verified.json"
STAMP_VERSION = 1
RACY_NS = 2_000_000_000  # 2 s: above the coarsest file time step in use (FAT's); see "Integrity" above
PER_QUERY_GRAPHS = ("query_head", "band", "tail")  # the K/V entries do not depend on them
QUERY_WEIGHTS_FILE = "weights.query.bin"  # their shared weights no document-side graph has (export/shared_weights.py)
REBUILD = "rebuild the bundle with `minireranker build`"

log = logging.getLogger("minireranker.runtime")
_said_once: set[str] = set()


class BundleError(MiniRerankerError):
    """A bundle directory is missing, incomplete, or from an unsupported schema version."""


class BundleIntegrityError(BundleError):
    """A bundle's file (or bundle.json itself) differs from what its build recorded: damaged or edited."""


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated ``bundle.json`` with its directory.

    ``namespace`` keys the K/V store (see the module docstring); ``integrity`` says what the load checked:
    {"checked": "sha256" | "size", "files": n, "hashed": files hashed by this load, "stamp": path or None}.
    """

    path: Path
    data: dict[str, Any]
    spec: RerankSpec
    preprocess: PreprocessConfig
    namespace: str
    integrity: dict[str, Any]

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
    """Read and validate ``bundle.json``; check every file it names (see "Integrity" above)."""
    path = Path(path)
    meta = path / BUNDLE_FILE
    if not meta.is_file():
        raise BundleError(f"{path} is not a bundle: {BUNDLE_FILE} is missing; build one with `minireranker build`")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta} is not valid JSON ({exc}); {REBUILD}") from None
    version = _schema_version(meta, data)
    required = ["fingerprint", "spec", "template", "model", "preprocess", "precision", "graphs", "files"]
    for key in required + (["sha256", "meta_sha256"] if version >= 4 else []):
        if key not in data:
            raise BundleError(f"{meta} lacks '{key}'; {REBUILD}")
    if version >= 4 and data["meta_sha256"] != meta_checksum(data):
        raise BundleIntegrityError(f"{meta} was edited after the build: its content no longer matches its "
                                   f"meta_sha256; {REBUILD}")
    sizes = _file_records(meta, data)
    missing = [name for name in sizes if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is incomplete, missing: {missing[:5]}; copy the whole "
                          f"directory, or {REBUILD}")
    for name, size in sizes.items():
        actual = (path / name).stat().st_size
        if actual != size:
            raise BundleIntegrityError(f"bundle file {path / name} is damaged: {actual} bytes, bundle.json records "
                                       f"{size} (truncated or replaced); {REBUILD}")
    _check_graph_entries(meta, data)
    spec = _bundle_spec(meta, data)
    if version >= 4:
        checksums = data["sha256"]
        integrity = {"checked": "sha256", "files": len(sizes), **verify_checksums(path, checksums)}
    else:
        checksums = {name: f"size:{size}" for name, size in sizes.items()}
        integrity = {"checked": "size", "files": len(sizes), "hashed": 0, "stamp": None}
        _say_once(f"legacy:{path.resolve()}", f"bundle {path} has schema version {version}, from before checksums: "
                  f"its files are checked by size only, so a same-size change goes unseen; {REBUILD}")
    _check_arrays(path, data, spec)  # after the checksums: a damaged header is then reported as damage
    namespace = cache_namespace(data, spec, checksums)
    return Bundle(path, data, spec, PreprocessConfig.from_dict(data["preprocess"]), namespace, integrity)


def _schema_version(meta: Path, data: Any) -> int:
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{meta} has no schema_version; {REBUILD}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{meta} has schema version {version}, newer than this runtime reads ({SCHEMA_VERSION}); "
            "upgrade minireranker, or rebuild the bundle with this version"
        )
    if version < LEGACY_SCHEMA_VERSION:
        raise BundleError(f"{meta} has old schema version {version} (this runtime reads {SCHEMA_VERSION}); "
                          "rebuild it with `minireranker build`")
    return version


def _file_records(meta: Path, data: dict[str, Any]) -> dict[str, int]:
    """``files`` ({path: size}), checked to be well formed, and (schema 4) to match ``sha256``'s paths."""
    files = data["files"]
    if not isinstance(files, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in files.values()):
        raise BundleError(f"{meta}: 'files' is not a map of paths to sizes; {REBUILD}")
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{meta}: 'files' names {name!r}, outside the bundle; {REBUILD}")
    checksums = data.get("sha256") if data["schema_version"] >= 4 else None
    if checksums is not None and (not isinstance(checksums, dict) or set(checksums) != set(files)):
        raise BundleError(f"{meta}: 'sha256' does not name the same files as 'files'; {REBUILD}")
    return files


def _bundle_spec(meta: Path, data: dict[str, Any]) -> RerankSpec:
    """The bundle's spec, valid and within its model's layers."""
    try:
        spec = RerankSpec.from_dict(data["spec"], source=str(meta))
        num_layers = data["model"]["num_layers"]
        if not isinstance(num_layers, int) or spec.exit_layer is None or spec.band is None:
            raise SpecError(f"{meta}: the spec is not resolved against the model (exit_layer, band, num_layers)")
        spec.resolve(num_layers)
    except SpecError as exc:
        message = str(exc) if str(exc).startswith(str(meta)) else f"{meta}: {exc}"
        raise BundleError(f"{message}; {REBUILD}") from None
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{meta}: 'model' is malformed ({exc!r}); {REBUILD}") from None
    return spec


def _check_arrays(path: Path, data: dict[str, Any], spec: RerankSpec) -> None:
    """The stored segments have the spec's layers: system K/V E+1, the instruction's K/V A, and the
    instruction's tokens the template's (what a spec edited in bundle.json would contradict)."""
    import numpy as np

    a, e = spec.band[0], spec.exit_layer
    tokens = len(data["template"].get("instruction_ids") or [])
    expected = {"system_k.npy": (0, e + 1), "system_v.npy": (0, e + 1), "instruction_k.npy": (0, a),
                "instruction_v.npy": (0, a), "instruction_hidden.npy": (1, tokens)}
    for name, (axis, size) in expected.items():
        if name not in data["files"]:
            continue
        try:
            shape = np.load(path / name, mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            raise BundleIntegrityError(f"bundle file {path / name} is not a readable .npy ({exc}); {REBUILD}") from None
        if len(shape) <= axis or shape[axis] != size:
            raise BundleIntegrityError(
                f"bundle file {path / name} has shape {list(shape)}, but the spec in bundle.json (exit layer {e}, "
                f"band {list(spec.band)}) needs {size} along axis {axis}: bundle.json was edited; {REBUILD}")


def _check_graph_entries(meta: Path, data: dict[str, Any]) -> None:
    """Every graph is one of the table's, and its file one of the bundle's listed (so present) files."""
    entries = list(data["graphs"].items()) + list(((data.get("guide") or {}).get("graphs") or {}).items())
    unknown = sorted({name for name, _ in entries if name not in GRAPH_IO})
    if unknown:
        raise BundleError(f"{meta} names graphs this runtime does not know ({unknown}); {REBUILD}")
    unlisted = [g.get("file") for _, g in entries if g.get("file") not in data["files"]]
    if unlisted:
        raise BundleError(f"{meta} names graph files it does not list under 'files' ({unlisted[:3]}); {REBUILD}")


# -- checksums -------------------------------------------------------------------------------------
def meta_checksum(data: dict[str, Any]) -> str:
    """bundle.json's ``meta_sha256``: sha256 of its canonical JSON less ``meta_sha256`` and ``validation``."""
    body = {k: v for k, v in data.items() if k not in ("meta_sha256", "validation")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_namespace(data: dict[str, Any], spec: RerankSpec, checksums: dict[str, str]) -> str:
    """The K/V store namespace of a loaded bundle: see the module docstring."""
    per_query = {g["file"] for name, g in data["graphs"].items() if name in PER_QUERY_GRAPHS}
    # the per-query graphs' own shared weights (export/shared_weights.py); the document side's are in weights.bin
    per_query |= {f for folder in (data.get("shared_weights") or {}).values() for f in folder.get("files", {})
                  if Path(f).name == QUERY_WEIGHTS_FILE}
    entry_files = {n: c for n, c in checksums.items()
                   if n not in per_query and not any(n.startswith(f + ".data") for f in per_query)}
    body = {"fingerprint": data["fingerprint"], "spec": spec.to_dict(), "template": data["template"],
            "model": data["model"], "preprocess": data["preprocess"], "precision": data["precision"],
            "attention": data.get("attention"), "guide": data.get("guide"), "files": entry_files}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_checksums(path: Path, checksums: dict[str, str]) -> dict[str, Any]:
    """Hash every file whose stat differs from its stamp; raise on a mismatch; update the stamp.

    Returns {"hashed": files hashed, "stamp": where the stamp now is (None: nowhere writable)}."""
    places = stamp_places(path)
    stamps = [_read_stamp(place, path) for place in places]
    verified: dict[str, dict] = {}
    hashed = 0
    for name in sorted(checksums):
        st = os.stat(path / name)
        record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
                  "sha256": checksums[name]}
        if any(stamp.get(name) == record for stamp in stamps):
            verified[name] = record
            continue
        started = time.time_ns()
        hashed += 1
        if sha256_file(path / name) != checksums[name]:
            raise BundleIntegrityError(f"bundle file {path / name} is damaged: its sha256 differs from the one "
                                       f"bundle.json records (it changed after the build); {REBUILD}")
        if started - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_NS:
            verified[name] = record
    current = next((place for place, stamp in zip(places, stamps) if stamp == verified), None)
    if hashed == 0 and current is not None:
        return {"hashed": 0, "stamp": str(current)}
    where = _write_stamp(places, path, verified)
    if where is None:
        _say_once(f"stamp:{path.resolve()}", f"cannot record the verified checksums of bundle {path} (none of "
                  f"{', '.join(map(str, places))} can be written): every load hashes its files again")
    return {"hashed": hashed, "stamp": None if where is None else str(where)}


def stamp_places(path: Path) -> tuple[Path, ...]:
    """Where a bundle's stamp may be: in its folder, else in the user's cache folder (by absolute path)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # unset, or relative (which the XDG spec says to ignore)
        try:
            base = os.path.join(Path.home(), ".cache")
        except RuntimeError:  # no home directory: the bundle folder only
            return (path / STAMP_FILE,)
    if not os.path.isabs(base):
        return (path / STAMP_FILE,)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    return path / STAMP_FILE, Path(base) / "minireranker" / "bundles" / f"{key}.json"


def _read_stamp(place: Path, path: Path) -> dict[str, dict]:
    try:
        stamp = json.loads(place.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ok = (isinstance(stamp, dict) and stamp.get("stamp_version") == STAMP_VERSION
          and stamp.get("bundle") == str(path.resolve()) and isinstance(stamp.get("files"), dict))
    return stamp["files"] if ok else {}


def _write_stamp(places: tuple[Path, ...], path: Path, verified: dict[str, dict]) -> Path | None:
    """Write the stamp to the first place that takes it (atomically: temp file, then rename)."""
    text = json.dumps({"stamp_version": STAMP_VERSION, "bundle": str(path.resolve()), "files": verified})
    for place in places:
        tmp = place.with_name(f".{place.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, place)
            return place
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
    return None


def _say_once(key: str, message: str) -> None:
    if key not in _said_once:
        _said_once.add(key)
        log.warning("%s", message)


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
        "integrity": {"schema_version": bundle.data["schema_version"], **bundle.integrity},
        "namespace": bundle.namespace,
        "files": bundle.data["files"],
        "engines": engine_sets(bundle),
    }


def engine_sets(bundle: Bundle) -> list[dict[str, Any]]:
    """The GPU engine sets ``minireranker engines`` wrote into the bundle (engines/manifest.py), each with
    whether it was built for this bundle; a set that cannot be read is listed with its error."""
    from ..engines.errors import EngineError
    from ..engines.manifest import BACKENDS, ENGINES_FILE, engines_folder, read_manifest

    out = []
    for backend in BACKENDS:
        if not (engines_folder(bundle.path, backend) / ENGINES_FILE).is_file():
            continue
        try:
            m = read_manifest(bundle.path, backend)
        except EngineError as exc:
            out.append({"backend": backend, "error": str(exc)})
            continue
        out.append({"backend": backend, "device": m.get("device"), "versions": m.get("versions"),
                    "precision": m.get("precision"), "created": m.get("created"), "axes": m.get("axes"),
                    "graphs": sorted(m.get("graphs", {})),
                    "for_this_bundle": m.get("bundle_fingerprint") == bundle.fingerprint})
    return out
