"""The K/V store's entry file format: one entry's arrays, their encoding, and their checks.

The format itself is documented in :mod:`minireranker.runtime.kvstore` (the schema of record); this
module holds the code that writes and reads it, so that the store module keeps the directory logic.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import CacheError

FORMAT_VERSION = 2  # 2: entries carry the instruction segment's K/V (a version-1 entry is never read)
_MAGIC = b"MRKVSTOR"
_PREFIX = struct.Struct("<8sIIIIQ")  # magic, version, header_len, header_crc, payload_crc, payload_len
_ALIGN = 64
_STORED_DTYPES = {"<f2", "<f4", "<i8", "|i1"}
_INSTRUCTION = {"instruction_k", "instruction_v"}  # optional, both or neither

@dataclass
class KVEntry:
    """One document's cached K/V (band layers only; the shared system segment is not part of it), and the
    K/V of the instruction segment that follows it (the reranker always stores one; the store allows none)."""

    k: np.ndarray  # [n_layers, kv_heads, T, head_dim] float16 | float32
    v: np.ndarray  # [n_layers, kv_heads, T, head_dim] same dtype as k
    positions: np.ndarray  # [3, T] int64: the kept tokens' MRoPE (t, h, w) positions
    query_start: int  # position of the first token after the document (the instruction's)
    meta: dict = field(default_factory=dict)  # JSON-able: label, kept visual token indices, ...
    instruction_k: np.ndarray | None = None  # [E-A+1, kv_heads, I, head_dim] same dtype as k: layers A..E
    instruction_v: np.ndarray | None = None  # [E-A+1, kv_heads, I, head_dim]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (not of the file, which adds a header and alignment)."""
        extra = sum(int(a.nbytes) for a in (self.instruction_k, self.instruction_v) if a is not None)
        return int(self.k.nbytes + self.v.nbytes + self.positions.nbytes) + extra


def quantize_per_channel_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one float32 scale per (layer, head, channel), taken over the tokens.

    ``|x - dequantize_int8(*quantize_per_channel_int8(x))| <= scale / 2`` (up to float32 rounding).
    """
    xf = np.array(x, dtype=np.float32)  # [L, H, T, D], a copy the steps below overwrite
    amax = np.maximum(xf.max(axis=2, keepdims=True), -xf.min(axis=2, keepdims=True))
    scale = (amax / np.float32(127)).astype(np.float32)  # [L, H, 1, D]
    np.divide(xf, np.where(scale > 0, scale, np.float32(1)), out=xf)
    np.rint(xf, out=xf)
    np.clip(xf, -127, 127, out=xf)
    return xf.astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q`` [L, H, T, D] int8, ``scale`` [L, H, 1, D] float32 -> float32 [L, H, T, D] (a new array)."""
    out = q.astype(np.float32)
    out *= scale
    return out


class Corrupt(Exception):
    """An entry file failed a check; the message says which."""




def entry_arrays(entry: KVEntry, quantize: bool) -> tuple[str, dict[str, np.ndarray]]:
    """Validate ``entry``; return its storage kind and the arrays to write (contiguous, little-endian)."""
    if not isinstance(entry, KVEntry):
        raise CacheError(f"put needs a KVEntry, got {type(entry).__name__}")
    for name in ("k", "v", "positions"):
        if not isinstance(getattr(entry, name), np.ndarray):
            raise CacheError(f"KVEntry.{name} must be a numpy array, got {type(getattr(entry, name)).__name__}")
    k, v, positions = entry.k, entry.v, entry.positions
    if k.ndim != 4 or k.shape != v.shape or k.shape[2] < 1:
        raise CacheError(f"KVEntry.k and .v must share a shape [n_layers, kv_heads, T>=1, head_dim], "
                         f"got {k.shape} and {v.shape}")
    if k.dtype != v.dtype or k.dtype.kind != "f" or k.dtype.itemsize not in (2, 4):
        raise CacheError(f"KVEntry.k and .v must both be float16 or float32, got {k.dtype} and {v.dtype}")
    if positions.dtype.kind not in "iu" or positions.shape != (3, k.shape[2]):
        raise CacheError(f"KVEntry.positions must be integers of shape (3, {k.shape[2]}), "
                         f"got {positions.dtype} {positions.shape}")
    if not isinstance(entry.query_start, (int, np.integer)) or isinstance(entry.query_start, bool) \
            or entry.query_start < 0:
        raise CacheError(f"KVEntry.query_start must be a non-negative integer, got {entry.query_start!r}")
    if not isinstance(entry.meta, dict):
        raise CacheError(f"KVEntry.meta must be a dict, got {type(entry.meta).__name__}")
    try:
        json.dumps(entry.meta)
    except (TypeError, ValueError) as e:
        raise CacheError(f"KVEntry.meta must be JSON-serializable: {e}") from None
    positions = np.ascontiguousarray(positions, dtype="<i8")
    instruction = _instruction_arrays(entry)
    if not quantize:
        little = k.dtype.newbyteorder("<")
        return "float", {"k": np.ascontiguousarray(k, dtype=little), "v": np.ascontiguousarray(v, dtype=little),
                         "positions": positions, **instruction}
    if not (np.isfinite(k).all() and np.isfinite(v).all()):
        raise CacheError("int8 storage needs finite K/V values; this entry has inf or NaN")
    kq, ks = quantize_per_channel_int8(k)
    vq, vs = quantize_per_channel_int8(v)
    return "int8", {"k": kq, "k_scale": ks.astype("<f4"), "v": vq, "v_scale": vs.astype("<f4"),
                    "positions": positions, **instruction}


def _instruction_arrays(entry: KVEntry) -> dict[str, np.ndarray]:
    """The instruction K/V to write, checked: both or neither, 4-D, k's dtype and head layout.

    They stay in float under int8 storage too: ~20 tokens are a few percent of an entry, and every
    query token attends to them in every layer from A to E."""
    ik, iv = entry.instruction_k, entry.instruction_v
    if ik is None and iv is None:
        return {}
    k = entry.k
    if not (isinstance(ik, np.ndarray) and isinstance(iv, np.ndarray)) or ik.shape != iv.shape or ik.ndim != 4 \
            or ik.dtype != k.dtype or iv.dtype != k.dtype or (ik.shape[1], ik.shape[3]) != (k.shape[1], k.shape[3]):
        raise CacheError(f"KVEntry.instruction_k and .instruction_v must both be None or arrays of k's dtype "
                         f"({k.dtype}) shaped [layers, {k.shape[1]}, I, {k.shape[3]}], got "
                         f"{getattr(ik, 'dtype', ik)} {getattr(ik, 'shape', '')} and "
                         f"{getattr(iv, 'dtype', iv)} {getattr(iv, 'shape', '')}")
    little = k.dtype.newbyteorder("<")
    return {"instruction_k": np.ascontiguousarray(ik, dtype=little),
            "instruction_v": np.ascontiguousarray(iv, dtype=little)}


def read_header(mm: mmap.mmap, size: int) -> tuple[dict, int]:
    """Check the prefix and header of a mapped entry; returns (header, payload start offset)."""
    magic, version, header_len, header_crc, _, payload_len = _PREFIX.unpack_from(mm, 0)
    if magic != _MAGIC:
        raise Corrupt("not a K/V entry (bad magic)")
    if version != FORMAT_VERSION:
        raise Corrupt(f"format version {version}, this reader knows {FORMAT_VERSION}")
    payload_start = align(_PREFIX.size + header_len)
    if payload_start + payload_len != size:
        raise Corrupt(f"file is {size} bytes, its prefix says {payload_start + payload_len}")
    header_bytes = mm[_PREFIX.size:_PREFIX.size + header_len]
    if zlib.crc32(header_bytes) != header_crc:
        raise Corrupt("header checksum mismatch")
    try:
        header = json.loads(header_bytes)
        if not (isinstance(header, dict) and isinstance(header["key"], str) and isinstance(header["meta"], dict)
                and header["storage"] in ("float", "int8") and isinstance(header["query_start"], int)):
            raise ValueError("header fields")
    except (ValueError, KeyError, TypeError) as e:
        raise Corrupt(f"unreadable header ({e})") from None
    return header, payload_start


def array_views(mm: mmap.mmap, payload_start: int, payload_len: int, header: dict) -> dict[str, np.ndarray]:
    """Read-only numpy views of the header's arrays over the mapping, shapes cross-checked."""
    expected = {"float": {"k", "v", "positions"}, "int8": {"k", "k_scale", "v", "v_scale", "positions"}}
    try:
        specs = header["arrays"]
        if set(specs) - _INSTRUCTION != expected[header["storage"]] or len(set(specs) & _INSTRUCTION) == 1:
            raise ValueError(f"arrays {sorted(specs)}")
        arrays = {}
        for name, spec in specs.items():
            dtype, shape, offset = str(spec["dtype"]), tuple(int(n) for n in spec["shape"]), int(spec["offset"])
            count = math.prod(shape)
            if dtype not in _STORED_DTYPES or min(shape, default=0) < 0 or offset < 0 or offset % _ALIGN \
                    or offset + count * np.dtype(dtype).itemsize > payload_len:
                raise ValueError(f"array {name}")
            arrays[name] = np.frombuffer(mm, dtype, count, payload_start + offset).reshape(shape)
        k, v, positions = arrays["k"], arrays["v"], arrays["positions"]
        if k.ndim != 4 or k.shape != v.shape or positions.shape != (3, k.shape[2]) or positions.dtype != "<i8":
            raise ValueError("shapes")
        if header["storage"] == "int8" and not (
                k.dtype == v.dtype == np.int8 and arrays["k_scale"].shape == arrays["v_scale"].shape
                == k.shape[:2] + (1, k.shape[3])):
            raise ValueError("int8 arrays")
        if header["storage"] == "float" and (k.dtype != v.dtype or k.dtype.kind != "f"):
            raise ValueError("float arrays")
        if "instruction_k" in arrays:
            ik, iv = arrays["instruction_k"], arrays["instruction_v"]
            if ik.ndim != 4 or ik.shape != iv.shape or ik.dtype != iv.dtype or ik.dtype.kind != "f" \
                    or (ik.shape[1], ik.shape[3]) != (k.shape[1], k.shape[3]):
                raise ValueError("instruction arrays")
    except (ValueError, KeyError, TypeError) as e:
        raise Corrupt(f"inconsistent array table ({e})") from None
    return arrays


def align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
