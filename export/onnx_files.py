"""ONNX graph files whose weights are moved one tensor at a time, never all read into memory at once.

A 2B graph's initializers are gigabytes (the exact spec's ``doc_prefix``: 5.6 GB of fp32). ``onnx.load``
reads them all into the Python protobuf, and saving them again serializes a second copy; while the torch
reference holds the whole model, that is what pushed a 2B build to twice the weight bytes. These helpers
read a graph's structure only (``load_external_data=False``) and copy each initializer's bytes from where it
is stored (inline ``raw_data`` or ONNX external data: ``location``, ``offset``, ``length``) to where it goes,
one tensor at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def stored_bytes(tensor, base: Path) -> int:
    """Bytes of an initializer's data wherever it lies (inline, or external data under ``base``), unread."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if uses_external_data(tensor):
        info = ExternalDataInfo(tensor)
        if info.length:
            return int(info.length)
        return os.path.getsize(Path(base) / info.location) - int(info.offset or 0)  # to the file's end
    return len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()


def raw_bytes(tensor, base: Path) -> bytes | None:
    """The initializer's bytes as stored raw (inline ``raw_data``, or its external data read from ``base``);
    None for a tensor kept in typed fields (``float_data`` and the like)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if uses_external_data(tensor):
        info = ExternalDataInfo(tensor)
        with open(Path(base) / info.location, "rb") as f:
            f.seek(int(info.offset or 0))
            return f.read(int(info.length)) if info.length else f.read()
    return tensor.raw_data if tensor.HasField("raw_data") else None


def point_to(tensor, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` ONNX external data at ``location`` (relative to its graph), ``offset``, ``length``."""
    import onnx

    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def make_inline(tensor, raw: bytes) -> None:
    """Store ``raw`` in ``tensor`` itself (its external data record removed)."""
    import onnx

    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = raw


def stream_to_one_file(model, base: Path, data: Path, min_bytes: int) -> int:
    """Write every initializer of at least ``min_bytes`` into ``data`` (one file beside the graph; the graph
    is saved by the caller), one tensor at a time, and point the tensors at it; smaller ones stay or become
    inline. Reads from ``base`` (the folder the graph was loaded from); writes to a temporary name first, so
    ``data`` may be the very file the tensors are read from. Returns the bytes written."""
    tmp = data.with_name(data.name + ".part")
    size = 0
    with open(tmp, "wb") as out:
        for tensor in model.graph.initializer:
            raw = raw_bytes(tensor, base)
            if raw is None:
                continue
            if len(raw) < min_bytes:
                make_inline(tensor, raw)
                continue
            size += append_tensor(out, size, raw, tensor, data.name)
    os.replace(tmp, data)
    return size


def append_tensor(out: BinaryIO, size: int, raw: bytes | memoryview, tensor, location: str) -> int:
    """Write ``raw`` to ``out`` (``size`` bytes written so far) on a 64-byte boundary and point ``tensor`` at
    it in ``location``; returns the bytes written, padding included."""
    pad = -size % 64  # each tensor on a 64-byte boundary
    out.write(b"\0" * pad)
    out.write(raw)
    point_to(tensor, location, size + pad, len(raw))
    return pad + len(raw)
