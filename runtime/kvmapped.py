"""An entry file kept memory-mapped between reads (the K/V store's warm path), and the file version it maps.

:class:`~minireranker.runtime.kvstore.KVStore` keeps its most recently read entries mapped; a read reuses
a mapping only while the path's :data:`Identity` (device, inode, size, mtime) is the one mapped.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import numpy as np

from .kvformat import KVEntry, dequantize_int8

Identity = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns): one version of a file


def identity_of(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class MappedEntry:
    """One entry file kept mapped: the version it maps and the entry's parsed header and array views.

    While the mapping lives, its inode cannot be freed, so no other file can take its inode number and
    look like the same version.
    """

    __slots__ = ("identity", "mm", "header", "payload_start", "arrays")

    def __init__(self, identity: Identity, mm: mmap.mmap, header: dict, payload_start: int,
                 arrays: dict[str, np.ndarray]) -> None:
        self.identity, self.mm, self.header, self.payload_start, self.arrays = (
            identity, mm, header, payload_start, arrays)

    def entry(self, arrays: dict[str, np.ndarray]) -> KVEntry:
        """A new KVEntry over ``arrays``, taken from this mapping (int8: dequantized afresh); ``meta`` is a
        shallow copy."""
        a, header = arrays, self.header
        if header["storage"] == "int8":
            k, v = dequantize_int8(a["k"], a["k_scale"]), dequantize_int8(a["v"], a["v_scale"])
        else:
            k, v = a["k"], a["v"]
        return KVEntry(k=k, v=v, positions=a["positions"], query_start=header["query_start"],
                       meta=dict(header["meta"]), instruction_k=a.get("instruction_k"),
                       instruction_v=a.get("instruction_v"))

    def release(self) -> None:
        """Unmap now, unless a caller (or a get in progress) still holds arrays: then it goes when they do."""
        self.arrays = {}
        close_quietly(self.mm)


def stat_or_none(path: Path) -> os.stat_result | None:
    """``os.stat(path)``, or None when nothing readable is there (gone, or a loop of symbolic links)."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def close_quietly(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # a view still exists; the mapping goes when it does
        pass


