"""The K/V store's directory layout: the marker, one namespace per bundle fingerprint, entry file names,
temp files of puts in progress, and the lock evictors take. :mod:`minireranker.runtime.kvstore` reads and
writes entries inside it; :mod:`minireranker.runtime.kvformat` encodes one entry file.

Layout on disk (format version 1)::

    <directory>/
      minireranker-kvstore.json          marker: {"format": "minireranker-kvstore", "version": 1}
      <fingerprint>/                     one namespace per bundle fingerprint: a new bundle never
        .lock                              reads an old entry; flock'ed while evicting
        <blake2b-160(key) hex>.kv        one entry; the key is hashed, never used as a path
        .tmp-<pid>-<random>.kv           a put in progress (flock'ed by its writer); stale ones are
                                           removed when a store opens
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Iterator

from .errors import CacheError
from .kvformat import _PREFIX, FORMAT_VERSION

try:  # POSIX only; without it stale temp files are removed by age instead of by lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

MARKER_NAME = "minireranker-kvstore.json"
ENTRY_SUFFIX = ".kv"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600  # only where flock is missing: a temp file this old has no live writer

_ENTRY_NAME_RE = re.compile(r"[0-9a-f]{40}\.kv")
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOATIME = getattr(os, "O_NOATIME", 0)


def entry_file_stem(key: str) -> str:
    """The file stem of ``key``'s entry: blake2b-160 of its UTF-8 bytes, in hex."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def open_namespace(directory: Path, fingerprint: str) -> Path:
    """Create or check the store directory and its marker; return the fingerprint's namespace folder."""
    if directory.exists() and not directory.is_dir():
        raise CacheError(f"K/V cache directory {directory} is a file, not a directory; "
                         "pass a directory for the store (it is created if missing)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create the K/V cache directory {directory} ({e.strerror or e}); "
                         "choose a writable location or fix its permissions") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CacheError(f"K/V cache directory {directory} is not writable; "
                         "choose a writable location or fix its permissions")
    marker = directory / MARKER_NAME
    if not marker.exists():
        others = [n for n in os.listdir(directory) if not n.startswith(TEMP_PREFIX) and n != MARKER_NAME]
        if others and not marker.exists():  # a store opening at the same time writes its marker first
            raise CacheError(f"{directory} is not a miniReranker K/V store: it holds other files "
                             f"({', '.join(sorted(others)[:3])}) and no {MARKER_NAME}; use an empty or dedicated "
                             "directory for the cache")
        write_marker(directory)
    try:
        content = json.loads(marker.read_text())
        ok = content.get("format") == "minireranker-kvstore" and isinstance(content.get("version"), int)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise CacheError(f"{marker} is not a miniReranker K/V store marker; remove {directory} or choose "
                         "another cache directory")
    if content["version"] > FORMAT_VERSION:
        raise CacheError(f"the K/V store at {directory} has format version {content['version']}, newer than "
                         f"this miniReranker's {FORMAT_VERSION}; upgrade or choose another cache directory")
    namespace = directory / fingerprint
    try:
        namespace.mkdir(exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create {namespace} in the K/V cache directory ({e.strerror or e}); "
                         "choose a writable location or fix its permissions") from None
    if not os.access(namespace, os.W_OK | os.X_OK):
        raise CacheError(f"K/V cache directory {namespace} is not writable; fix its permissions")
    return namespace


def write_marker(directory: Path) -> None:
    tmp = directory / f"{TEMP_PREFIX}marker-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps({"format": "minireranker-kvstore", "version": FORMAT_VERSION}) + "\n")
    try:
        os.link(tmp, directory / MARKER_NAME)  # atomic and never clobbers a marker written meanwhile
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        os.replace(tmp, directory / MARKER_NAME)
    finally:
        unlink_quietly(tmp)


def remove_stale_temps(namespace: Path) -> None:
    """Delete temp files left by writers that died (kill -9, power loss). Live writers hold a flock."""
    for item in os.scandir(namespace):
        if not item.name.startswith(TEMP_PREFIX):
            continue
        try:
            fd = os.open(item.path, os.O_RDONLY | O_CLOEXEC)
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its writer is alive
            elif time.time() - os.fstat(fd).st_mtime < STALE_TEMP_SECONDS:
                continue
            unlink_quietly(Path(item.path))
        finally:
            os.close(fd)


def scan_entries(namespace: Path) -> list[tuple[int, str, int]]:
    """(access time ns, file name, size) of every entry file in the namespace."""
    found = []
    for item in os.scandir(namespace):
        if _ENTRY_NAME_RE.fullmatch(item.name):
            try:
                st = item.stat()
            except FileNotFoundError:
                continue
            found.append((st.st_atime_ns, item.name, st.st_size))
    return found


def stored_keys(namespace: Path) -> list[str]:
    """The keys of the namespace's entries, sorted, read from their headers (access times untouched)."""
    found = []
    for _, name, _ in scan_entries(namespace):
        try:
            with open_noatime(namespace / name) as f:
                _, _, header_len, header_crc, _, _ = _PREFIX.unpack(f.read(_PREFIX.size))
                header_bytes = f.read(header_len)
            if zlib.crc32(header_bytes) == header_crc:
                found.append(json.loads(header_bytes)["key"])
        except (OSError, struct.error, ValueError, KeyError, TypeError):
            continue  # vanished or corrupted: KVStore.get reports and removes it
    return sorted(found)


@contextlib.contextmanager
def namespace_lock(namespace: Path) -> Iterator[None]:
    """An exclusive flock on ``<namespace>/.lock``: one evictor at a time across processes."""
    if fcntl is None:
        yield
        return
    fd = os.open(namespace / ".lock", os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_noatime(path: Path):
    """Open for reading without bumping the access time (our LRU clock) where the OS allows it."""
    try:
        return open(os.open(path, os.O_RDONLY | O_CLOEXEC | O_NOATIME), "rb")
    except PermissionError:  # O_NOATIME needs file ownership
        return open(path, "rb")


def fsync_directory(directory: Path) -> None:
    """Make a rename durable across power loss (kill -9 alone never loses it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
