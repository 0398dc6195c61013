"""Each weight once in a bundle: the graphs' initializers moved into shared weight files, deduplicated.

The engine segments overlap: ``doc_prefix`` runs layers 0..B, ``query_head`` 0..A-1, ``band`` A..B and the
self guide 0..g, so exported one by one they carried layers 0..A-1 three times (a 2B bundle: 4.7 GB for
about 3 GB of distinct weights). After every graph passed validation, :func:`share_weights` rewrites them
so that each distinct tensor (same type, shape and bytes) is stored once:

* ``onnx/weights.bin`` holds the tensors of the document-side graphs (vision, doc_prefix, guide): what a
  K/V entry depends on, so it is part of the cache namespace (runtime/bundle.py);
* ``onnx/weights.query.bin`` holds the per-query graphs' (query_head, band, tail) tensors that no
  document-side graph has, e.g. the tail's layers and the int8 weights of ``--weights int8``; a per-query
  graph points into ``weights.bin`` for every tensor it shares with the document side. So an int8 and a
  float bundle of one checkpoint keep the same ``weights.bin`` and share K/V entries, as before.

Each graph's ``.onnx`` then holds only its structure, its initializers ONNX external data
(``location``/``offset``/``length``) into those files; any ONNX reader (ONNX Runtime, TensorRT's parser,
polygraphy) opens it as it is. Tensors of 64 KiB and more start on a 4096-byte boundary, so ONNX Runtime
may map them instead of reading them. bundle.json records, per graph, where each of its initializers lies
(``"initializers"``: name -> [file, offset, dtype, shape]); the runtime maps each file once and hands ONNX
Runtime views of it (engines/onnxrt.py), so a layer used by three graphs is also in memory once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from ..runtime.bundle import PER_QUERY_GRAPHS as PER_QUERY, QUERY_WEIGHTS_FILE as QUERY_FILE
from .onnx_files import make_inline, point_to, raw_bytes, stored_bytes

DOCUMENT_FILE = "weights.bin"
MIN_BYTES = 1024       # smaller initializers stay inline in the graph (shapes, scales, norms' eps)
PAGE, PAGE_FROM = 4096, 65536
ALIGN = 64

# ONNX TensorProto data types -> numpy dtype names (those an exported graph's initializers use)
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 16: "bfloat16"}


class _Sink:
    """One weights file being written: distinct tensors appended once, aligned."""

    def __init__(self, path: Path) -> None:
        self.path, self.name = path, path.name
        self.file: BinaryIO = open(path, "wb")
        self.size = 0

    def append(self, raw: bytes) -> int:
        align = PAGE if len(raw) >= PAGE_FROM else ALIGN
        pad = -self.size % align
        self.file.write(b"\0" * pad + raw)
        offset = self.size + pad
        self.size = offset + len(raw)
        return offset

    def close(self) -> None:
        self.file.close()


def _raw(tensor, base: Path) -> bytes | None:
    """The tensor's bytes as stored (inline or its external data under ``base``), or None for a tensor in
    typed fields or too small to move."""
    if tensor.data_type not in ONNX_DTYPES or stored_bytes(tensor, base) < MIN_BYTES:
        return None
    return raw_bytes(tensor, base)


def share_weights(onnx_dir: Path, graph_files: dict[str, Path], log=lambda message: None) -> dict:
    """Rewrite ``graph_files`` (graph name -> .onnx in ``onnx_dir``) over shared weight files; returns the
    record bundle.json keeps (module docstring): files, distinct and referenced bytes, and per graph the
    place of each initializer. Document-side graphs are written first, so per-query ones find their tensors.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    order = sorted(graph_files, key=lambda name: name in PER_QUERY)  # stable: document side first
    sinks = {False: _Sink(onnx_dir / DOCUMENT_FILE)}
    seen: dict[tuple, tuple[str, int]] = {}  # (type, dims, sha256) -> (file name, offset)
    graphs: dict[str, dict[str, list]] = {}
    referenced = 0
    try:
        for name in order:
            path = graph_files[name]
            # the structure only: each tensor's bytes are read from <graph>.onnx.data when it is moved, so a
            # 5.6 GB graph is never in memory (export/onnx_files.py)
            model = onnx.load(str(path), load_external_data=False)
            per_query = name in PER_QUERY
            places: dict[str, list] = {}
            for tensor in model.graph.initializer:
                raw = _raw(tensor, path.parent)
                if raw is None:
                    if uses_external_data(tensor):  # a small one in the graph's data file, which goes: inline
                        make_inline(tensor, raw_bytes(tensor, path.parent))
                    continue
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest())
                if key not in seen:
                    if per_query and True not in sinks:
                        sinks[True] = _Sink(onnx_dir / QUERY_FILE)
                    sink = sinks[per_query]
                    seen[key] = (sink.name, sink.append(raw))
                file, offset = seen[key]
                referenced += len(raw)
                point_to(tensor, file, offset, len(raw))
                places[tensor.name] = [file, offset, ONNX_DTYPES[tensor.data_type], list(tensor.dims)]
            for old in path.parent.glob(path.name + ".data*"):
                old.unlink()
            onnx.save_model(model, str(path))
            del model
            graphs[name] = places
            log(f"shared the weights of {name} ({len(places)} tensors)")
    finally:
        for sink in sinks.values():
            sink.close()
    sizes = {sink.name: sink.size for sink in sinks.values()}
    return {"files": sizes, "bytes": sum(sizes.values()), "referenced_bytes": referenced, "graphs": graphs}
