"""The disk-backed K/V store: one memory-mapped file per (bundle namespace, document key).

An entry holds what a rerank reads for one document: the K and V of the band layers ``A..B`` for the
document's kept tokens, their MRoPE positions, the query start position and a small JSON ``meta`` dict.
The system segment's K/V is the same for every document; the bundle keeps it once, so no entry has it.
Reads are zero-copy (numpy views over a read-only ``mmap``), except in the int8 mode, where ``get``
returns freshly dequantized float32 arrays. docs/kvstore.md compares this design with LMDB and
safetensors, with measured figures. The entry encoding and its checks live in
:mod:`minireranker.runtime.kvformat`, the directory layout (marker, one namespace per fingerprint, entry
file names, temp files, the eviction lock) in :mod:`minireranker.runtime.kvlayout`, a kept mapping in
:mod:`minireranker.runtime.kvmapped`; this module keeps writing, reading, recency and eviction.

One entry file::

    prefix  32 bytes  "<8sIIIIQ": magic b"MRKVSTOR", format version, header length,
                      crc32(header), crc32(payload), payload length
    header  JSON      {"key", "fingerprint", "storage": "float" | "int8", "query_start", "meta",
                       "arrays": {name: {"dtype", "shape", "offset"}}}   offsets relative to the payload
    payload           starts at the first 64-byte boundary after the header; arrays 64-byte aligned,
                      zero padding between them; little-endian, C order
      storage "float": k, v  [n_layers, kv_heads, T, head_dim]  float16 | float32 (as given)
      storage "int8":  k, v  int8, same shape; k_scale, v_scale [n_layers, kv_heads, 1, head_dim] float32
      both:            positions [3, T] int64; optionally (both or neither, always float, k's dtype)
                       instruction_k, instruction_v [E-A+1, kv_heads, I, head_dim]: the instruction
                       segment's K/V after this document (format version 2; the reranker always writes them)

Crash safety: a put writes a temp file in the namespace, fsyncs it, then ``os.replace``s it onto the
entry's name (atomic) and fsyncs the directory, so a reader sees the old entry, the new one, or none.

Integrity: the header and the payload each carry a CRC-32 (``zlib.crc32``, ~3 GB/s here). ``get``
checks the header when it maps a file and the payload on the first read of each file version (device,
inode, size, mtime) by this store object, or both on every read with ``verify_every_read``. A corrupted
entry is logged (logger ``minireranker.kvstore``), removed and reported as a miss, so the caller
recomputes it.

Warm reads: the store keeps the mappings of its ``mapped_entries`` most recently read files open. A get
``stat``s the entry's path and reuses the mapping only while the file version is the one it mapped;
a replaced, evicted, deleted or rewritten file is a new version (or a miss), so it is mapped afresh and
checked. A hit then costs a ``stat`` and a ``utime``: no open, mmap or header parse.

Hostile files: only regular files are read (see :mod:`minireranker.runtime.kvlayout`): a FIFO, a device,
a directory or a symbolic link where an entry should be is a miss (logged once), never blocks and is never
mapped; a put replaces a FIFO, a link or a device at the entry's name, and refuses a directory there
(CacheError naming it).

Read-only stores: a store whose directory the process cannot write (or ``StoreConfig(read_only=True)``)
opens for reads: ``get`` works on the entries there, ``put`` stores nothing and returns 0, recency is
not updated, corrupted entries are reported but not removed, nothing is evicted; one warning says so
(asked for, it is the reader of "many readers, one store", docs/serve.md: its directory must already hold
a store, and it logs at info level only).

A full disk: a put that fails with ENOSPC or EDQUOT raises :class:`~minireranker.runtime.errors.CacheFullError`
(a CacheError), after removing its temp file.

LRU: recency is the entry file's access time, set explicitly by ``put`` and ``get`` (``os.utime``;
mtime is left alone, so it still dates the content). It lives in the file system, so it survives
reopening and is shared by every process. With ``max_bytes``, ``put`` evicts least recently used
entries of its namespace until the sum of entry file sizes is within the bound.
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import stat
import re
from collections import OrderedDict
import sys
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CacheError, CacheFullError
from .kvformat import (  # noqa: F401  (KVEntry and the int8 helpers are part of this module's API)
    _MAGIC,
    _PREFIX,
    FORMAT_VERSION,
    Corrupt,
    KVEntry,
    align,
    array_views,
    dequantize_int8,
    entry_arrays,
    quantize_per_channel_int8,
    read_header,
)
from .kvlayout import (  # noqa: F401  (MARKER_NAME, TEMP_PREFIX and entry_file_stem are part of this API)
    ENTRY_SUFFIX,
    MARKER_NAME,
    O_CLOEXEC,
    TEMP_PREFIX,
    entry_file_stem,
    fcntl,
    fsync_directory,
    namespace_lock,
    open_namespace,
    open_regular_fd,
    remove_stale_temps,
    report_foreign,
    scan_entries,
    stored_keys,
    unlink_quietly,
)
from .kvmapped import Identity, MappedEntry, close_quietly, identity_of, stat_or_none

logger = logging.getLogger("minireranker.kvstore")

_FINGERPRINT_RE = re.compile(r"[0-9a-f]{8,128}")
_MAX_VERIFIED = 1 << 16
# CPython < 3.13 keeps a duplicate descriptor per mapping: each entry alive holds one fd until freed.
_MMAP_OPTIONS: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


@dataclass(frozen=True)
class StoreConfig:
    """Where the store lives and how it behaves. ``fingerprint`` names the namespace (hex, 8-128 digits): the
    runtime passes ``Bundle.namespace``, which derives from the bundle's fingerprint, its spec as loaded and
    the checksums of the files the entries are computed from (runtime/bundle.py)."""

    directory: Path
    fingerprint: str
    max_bytes: int | None = None  # LRU bound on the sum of entry file sizes of this fingerprint
    quantize_int8: bool = False  # store K/V as int8 + per-channel float32 scales; get returns float32
    verify_every_read: bool = False  # CRC the payload on every get, not once per file version
    mapped_entries: int = 256  # files kept mapped for later gets (0: map on every get); < 3.13 one fd each
    read_only: bool = False  # read entries only (also chosen when the directory is not writable)

    def __post_init__(self) -> None:
        if not isinstance(self.directory, (str, os.PathLike)):
            raise CacheError(f"store directory must be a path, got {type(self.directory).__name__}")
        object.__setattr__(self, "directory", Path(self.directory).expanduser())
        if not isinstance(self.fingerprint, str) or not _FINGERPRINT_RE.fullmatch(self.fingerprint.lower()):
            raise CacheError(
                f"store fingerprint must be 8-128 hex digits (the bundle's fingerprint), got {self.fingerprint!r}"
            )
        object.__setattr__(self, "fingerprint", self.fingerprint.lower())
        if self.max_bytes is not None and (
            not isinstance(self.max_bytes, int) or isinstance(self.max_bytes, bool) or self.max_bytes <= 0
        ):
            raise CacheError(f"max_bytes must be a positive integer or None, got {self.max_bytes!r}")
        if not isinstance(self.mapped_entries, int) or isinstance(self.mapped_entries, bool) \
                or self.mapped_entries < 0:
            raise CacheError(f"mapped_entries must be a non-negative integer, got {self.mapped_entries!r}")
        for name in ("quantize_int8", "verify_every_read", "read_only"):
            if not isinstance(getattr(self, name), bool):
                raise CacheError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def tiny(cls, directory: str | os.PathLike, **overrides: Any) -> "StoreConfig":
        """A small store for tests: a fixed fingerprint and a 1 MiB bound."""
        return cls(**{"directory": Path(directory), "fingerprint": "00000000feedf00d", "max_bytes": 1 << 20,
                      **overrides})


class _CorruptFile(Corrupt):
    """A failed check of the file version ``identity`` (the one to remove, if still in place)."""

    def __init__(self, identity: Identity, reason: str) -> None:
        super().__init__(reason)
        self.identity = identity


class KVStore:
    """A disk-backed, memory-mapped K/V store; a context manager, thread-safe and process-safe."""

    def __init__(self, config: StoreConfig) -> None:
        if not isinstance(config, StoreConfig):
            raise CacheError(f"KVStore needs a StoreConfig, got {type(config).__name__}")
        self.config = config
        directory = config.directory
        if config.read_only and (not directory.exists()  # a file there: open_namespace says so
                                 or directory.is_dir() and not os.path.lexists(directory / MARKER_NAME)):
            raise CacheError(f"{directory} holds no K/V store yet, and a read-only store only reads what a "
                             "writer stored: start the writer (minireranker serve without --read-only, or "
                             "minireranker index) on this cache directory first")
        self.namespace, self.read_only = open_namespace(config.directory, config.fingerprint, config.read_only)
        if config.read_only:
            logger.info("the K/V cache at %s is opened read-only: reading the entries a writer stores, storing, "
                        "evicting and removing none", self.namespace)
        elif self.read_only:
            logger.warning("the K/V cache at %s is read-only: reading its entries, storing none (new documents "
                           "are computed on every use); make it writable to cache them", self.namespace)
        else:
            remove_stale_temps(self.namespace)
        self._lock = threading.Lock()
        self._verified: set[Identity] = set()
        self._mapped: OrderedDict[str, MappedEntry] = OrderedDict()  # entry file name -> mapping, oldest first
        self._counts = {"hits": 0, "misses": 0, "puts": 0, "evictions": 0, "corrupted": 0}
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    # ---- writing -----------------------------------------------------------------------------------

    def put(self, key: str, entry: KVEntry) -> int:
        """Store ``entry`` under ``key`` (replacing any old one); returns the bytes written.

        An entry larger than ``max_bytes`` is not stored (a warning is logged) and 0 is returned; so is every
        entry of a read-only store. A full disk raises CacheFullError.
        """
        self._check_open()
        path = self._path(key)
        if self.read_only:
            return 0
        if path.is_dir() and not path.is_symlink():
            raise CacheError(f"{path} (where the K/V entry of {key!r} belongs) is a directory; remove it")
        storage, arrays = entry_arrays(entry, self.config.quantize_int8)
        header = {"key": key, "fingerprint": self.config.fingerprint, "storage": storage,
                  "query_start": int(entry.query_start), "meta": entry.meta, "arrays": {}}
        offset = 0
        for name, arr in arrays.items():  # offsets are relative to the payload start
            offset = align(offset)
            header["arrays"][name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
            offset += arr.nbytes
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        payload_start = align(_PREFIX.size + len(header_bytes))
        if self.config.max_bytes is not None and payload_start + offset > self.config.max_bytes:
            logger.warning("K/V entry for key %r (%d bytes) exceeds max_bytes=%d of %s; not stored",
                           key, payload_start + offset, self.config.max_bytes, self.namespace)
            return 0
        for attempt in (0, 1):  # a store opening elsewhere may take a temp file whose lock it won first
            try:
                written = self._write_atomically(path, header_bytes, payload_start, arrays, offset)
                break
            except FileNotFoundError:
                if attempt:
                    raise CacheError(f"could not write a K/V entry into {self.namespace}: its temp file vanished "
                                     "twice; is another program cleaning the directory?") from None
            except OSError as e:
                if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                    raise CacheFullError(f"could not write a K/V entry into {self.namespace}: the disk is full "
                                         f"({e.strerror or e}); free disk space, lower max_bytes or choose another "
                                         "cache directory") from e
                raise CacheError(f"could not write a K/V entry into {self.namespace} ({e.strerror or e}); "
                                 "free disk space, lower max_bytes or choose another cache directory") from e
        self._forget(path.name)  # the old version's inode is no longer pinned by this store
        with self._lock:
            self._counts["puts"] += 1
        self._evict(keep=path.name)
        return written

    def _write_atomically(self, path: Path, header_bytes: bytes, payload_start: int,
                          arrays: dict[str, np.ndarray], payload_len: int) -> int:
        tmp = self.namespace / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{ENTRY_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # tells a store opening meanwhile that this writer is alive
            with open(fd, "wb", closefd=False) as f:
                f.write(bytes(_PREFIX.size))  # the prefix is written last, once the payload CRC is known
                f.write(header_bytes)
                f.write(bytes(payload_start - _PREFIX.size - len(header_bytes)))
                crc, pos = 0, 0
                for name, arr in arrays.items():
                    pad = bytes(align(pos) - pos)
                    data = memoryview(arr.reshape(-1).view(np.uint8))
                    f.write(pad)
                    f.write(data)
                    crc = zlib.crc32(data, zlib.crc32(pad, crc))
                    pos = align(pos) + arr.nbytes
            prefix = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(header_bytes), zlib.crc32(header_bytes), crc,
                                  payload_len)
            os.pwrite(fd, prefix, 0)
            os.fsync(fd)
            os.utime(fd, ns=(time.time_ns(), os.fstat(fd).st_mtime_ns))  # recency: just used
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)
        fsync_directory(self.namespace)
        return payload_start + payload_len

    def delete(self, key: str) -> bool:
        """Remove the entry of ``key``; returns whether there was one."""
        self._check_open()
        path = self._path(key)
        if self.read_only:
            raise CacheError(f"the K/V store at {self.namespace} is read-only; cannot delete {key!r}")
        self._forget(path.name)
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def _evict(self, keep: str) -> None:
        """Remove least recently used entries (never ``keep``) until the namespace fits ``max_bytes``."""
        if self.config.max_bytes is None or self.read_only:
            return
        with namespace_lock(self.namespace):
            entries = sorted(scan_entries(self.namespace))  # (atime_ns, name, size): oldest first
            total = sum(size for _, _, size in entries)
            evicted = 0
            for _, name, size in entries:
                if total <= self.config.max_bytes:
                    break
                if name == keep:
                    continue
                unlink_quietly(self.namespace / name)
                self._forget(name)
                total -= size
                evicted += 1
        with self._lock:
            self._counts["evictions"] += evicted

    # ---- reading -----------------------------------------------------------------------------------

    def get(self, key: str) -> KVEntry | None:
        """The entry of ``key`` as read-only views of its memory-mapped file, or None (miss or corrupted).

        With int8 storage, k and v are dequantized to new float32 arrays (not zero-copy). Treat ``meta``'s
        values as read-only too: they are shared with later reads of the same file version.
        """
        self._check_open()
        path = self._path(key)
        return self._get_at(key, path, stat_or_none(path))

    def get_many(self, keys: list[str]) -> list[KVEntry | None]:
        """``[get(key) for key in keys]``. Entries whose payload CRC is still to be checked are read by a
        few threads (zlib releases the GIL); the others sequentially, which is faster for them.
        """
        self._check_open()
        paths = [self._path(key) for key in keys]
        stats = [stat_or_none(path) for path in paths]
        workers = min(4, os.cpu_count() or 1)
        unverified = [i for i, st in enumerate(stats) if st is not None and (
            self.config.verify_every_read or identity_of(st) not in self._verified)] if workers > 1 else []
        results: list[KVEntry | None] = [None] * len(keys)
        if len(unverified) > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kvstore")
                pool = self._pool
            for i, entry in zip(unverified, pool.map(lambda i: self._get_at(keys[i], paths[i], stats[i]),
                                                     unverified)):
                results[i] = entry
        done = set(unverified) if len(unverified) > 1 else set()
        for i, key in enumerate(keys):
            if i not in done:
                results[i] = self._get_at(key, paths[i], stats[i])
        return results

    def _get_at(self, key: str, path: Path, st: os.stat_result | None) -> KVEntry | None:
        """``get`` once the path is stat'ed: reuse the mapping of this very file version, or map it."""
        if st is None:
            self._forget(path.name)
            return self._count_miss()
        if not stat.S_ISREG(st.st_mode):  # a FIFO, a device or a directory where the entry belongs
            self._forget(path.name)
            report_foreign(path, "not a regular file")
            return self._count_miss()
        with self._lock:
            mapped = self._mapped.get(path.name)
            if mapped is not None and mapped.identity == identity_of(st):
                self._mapped.move_to_end(path.name)
                arrays = mapped.arrays  # ours even if another thread releases the mapping meanwhile
            else:
                mapped = None
        try:
            if mapped is None:
                mapped = self._map(key, path)
                if mapped is None:  # gone since the stat, or stored in the other storage mode: recompute
                    return self._count_miss()
                arrays = mapped.arrays
            elif self.config.verify_every_read:  # the mapped bytes are checked again, header and payload
                try:
                    self._check(key, mapped.mm, mapped.identity)
                except Corrupt as e:
                    raise _CorruptFile(mapped.identity, str(e)) from None
        except _CorruptFile as e:
            self._forget(path.name)
            self._drop_corrupted(key, path, e.identity, str(e))
            return None
        try:  # by path: the file is not open. A writer replacing it in between gets our atime, harmlessly
            if not self.read_only:
                os.utime(path, ns=(time.time_ns(), mapped.identity[3]), follow_symlinks=False)  # LRU; mtime kept
        except FileNotFoundError:
            pass  # deleted since: this read still returns the version it mapped, the next one misses
        except OSError as e:  # e.g. a store shared read-only: LRU order degrades, reads still work
            logger.debug("could not update the recency of %s: %s", path, e)
        with self._lock:
            self._counts["hits"] += 1
        return mapped.entry(arrays)

    def _map(self, key: str, path: Path) -> MappedEntry | None:
        """Open, map and check the file now at ``path`` and keep the mapping (bounded); None: a miss (the
        file is gone, or holds the other storage mode). Raises _CorruptFile."""
        try:  # never blocks (a FIFO) nor follows a link; a kind other than a regular file is a miss
            fd = open_regular_fd(path)
        except FileNotFoundError:
            return None
        if fd is None:
            return None
        try:
            identity = identity_of(os.fstat(fd))  # the version actually mapped, even if the path moved on
            if identity[2] < _PREFIX.size:
                raise _CorruptFile(identity, f"file is {identity[2]} bytes, shorter than the {_PREFIX.size}-byte "
                                   "prefix")
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ, **_MMAP_OPTIONS)
        finally:
            os.close(fd)  # the mmap keeps its own descriptor (< 3.13) or none
        try:
            header, payload_start, arrays = self._check(key, mm, identity)
        except Corrupt as e:
            close_quietly(mm)
            raise _CorruptFile(identity, str(e)) from None
        if header is None:
            close_quietly(mm)
            return None
        mapped = MappedEntry(identity, mm, header, payload_start, arrays)
        if self.config.mapped_entries:
            with self._lock:
                old = self._mapped.pop(path.name, None)
                self._mapped[path.name] = mapped
                dropped = [self._mapped.popitem(last=False)[1]
                           for _ in range(len(self._mapped) - self.config.mapped_entries)]
            for m in ([old] if old is not None else []) + dropped:
                m.release()
        return mapped

    def _check(self, key: str, mm: mmap.mmap, identity: Identity) -> tuple[dict | None, int, dict[str, np.ndarray]]:
        """Header, array table and (per the CRC policy) payload of a mapped file; header None: other storage."""
        size = identity[2]
        header, payload_start = read_header(mm, size)
        if header["key"] != key or header["fingerprint"] != self.config.fingerprint:
            raise Corrupt("header names another key or fingerprint")
        if header["storage"] != ("int8" if self.config.quantize_int8 else "float"):
            return None, payload_start, {}
        if self.config.verify_every_read or identity not in self._verified:
            with memoryview(mm) as whole, whole[payload_start:] as payload:
                crc = zlib.crc32(payload)
            if crc != _PREFIX.unpack_from(mm, 0)[4]:
                raise Corrupt("payload checksum mismatch")
            with self._lock:
                if len(self._verified) >= _MAX_VERIFIED:
                    self._verified.clear()
                self._verified.add(identity)
        return header, payload_start, array_views(mm, payload_start, size - payload_start, header)

    def _forget(self, name: str) -> None:
        """Drop the mapping of entry file ``name``, if this store keeps one."""
        with self._lock:
            mapped = self._mapped.pop(name, None)
        if mapped is not None:
            mapped.release()

    def _drop_corrupted(self, key: str, path: Path, identity: Identity, reason: str) -> None:
        if self.read_only:
            logger.warning("K/V entry for key %r (%s) is corrupted: %s; the store is read-only, so it stays; the "
                           "caller recomputes it", key, path, reason)
            with self._lock:
                self._counts["corrupted"] += 1
                self._counts["misses"] += 1
            return
        logger.warning("K/V entry for key %r (%s) is corrupted: %s; removed it, the caller recomputes it",
                       key, path, reason)
        try:  # only the file we read: a writer may have just replaced it with a good one
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == identity[:2]:
                os.unlink(path)
        except FileNotFoundError:
            pass
        with self._lock:
            self._counts["corrupted"] += 1
            self._counts["misses"] += 1

    # ---- inspecting --------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        """Whether an entry file (a regular file) exists for ``key`` (not verified; recency untouched)."""
        self._check_open()
        if not (isinstance(key, str) and key):
            return False
        try:
            return stat.S_ISREG(os.lstat(self._path(key)).st_mode)
        except FileNotFoundError:
            return False

    def keys(self) -> list[str]:
        """The keys of this fingerprint's entries, read from their headers (recency untouched)."""
        self._check_open()
        return stored_keys(self.namespace)

    def stats(self) -> dict[str, int | None]:
        """Entries and bytes on disk for this fingerprint; hits, misses, puts, evictions, corrupted so far;
        ``mapped``: entry files this store keeps mapped now."""
        self._check_open()
        sizes = [size for _, _, size in scan_entries(self.namespace)]
        with self._lock:
            counts = dict(self._counts)
            counts["mapped"] = len(self._mapped)
        return {"entries": len(sizes), "bytes": sum(sizes), "max_bytes": self.config.max_bytes, **counts}

    # ---- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the thread pool and unmap the kept entry files. Arrays returned by ``get`` stay valid:
        a mapping a caller still holds arrays of goes when they do."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            mapped, self._mapped = list(self._mapped.values()), OrderedDict()
        for m in mapped:
            m.release()

    def __enter__(self) -> "KVStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"the K/V store at {self.namespace} is closed; open a new KVStore")

    def _count_miss(self) -> None:
        with self._lock:
            self._counts["misses"] += 1
        return None

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not key:
            raise CacheError(f"a K/V store key must be a non-empty string, got {key!r}")
        return self.namespace / (entry_file_stem(key) + ENTRY_SUFFIX)
