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

Only regular files are ours. Anything else in a namespace (a FIFO or a device named like a temp file or an
entry, a directory, a symbolic link) is foreign: scans skip it and log it once (logger
``minireranker.kvstore``), and every open here uses ``O_NONBLOCK`` and ``O_NOFOLLOW`` and checks the kind
with ``fstat`` before reading, so no foreign file can block a store or be read without bound.

A store whose directory (or namespace) the process cannot write is opened read-only when it already is a
store (its marker is readable): entries are read, nothing is written, removed or touched (see
:mod:`minireranker.runtime.kvstore`). A directory that is not yet a store and cannot be written is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Iterator

from .errors import CacheError
from .files import file_kind, read_regular
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
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_SAFE_READ = os.O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW  # never blocks on a FIFO, never follows a link
MARKER_MAX_BYTES = 1 << 16

logger = logging.getLogger("minireranker.kvstore")
_reported: set[str] = set()  # foreign files already logged (bounded below)
_reported_lock = threading.Lock()


def report_foreign(path: str | os.PathLike, kind: str) -> None:
    """Log, once per path, a file in the store that is not one of ours (it is skipped, never read)."""
    path = os.fspath(path)
    with _reported_lock:
        if path in _reported:
            return
        if len(_reported) >= 4096:
            _reported.clear()
        _reported.add(path)
    logger.warning("skipping %s in the K/V cache: it is %s, not a file this store wrote; remove it", path, kind)


def is_regular(item: os.DirEntry) -> bool:
    """Whether a scanned name is a regular file itself (not a link, FIFO, device or directory); logs others."""
    try:
        st = item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        return True
    report_foreign(item.path, "a symbolic link" if stat.S_ISLNK(st.st_mode) else file_kind(st.st_mode))
    return False


def open_regular_fd(path: str | os.PathLike, flags: int = O_SAFE_READ) -> int | None:
    """A descriptor of the regular file ``path`` (opened with ``flags``; never blocking, never following a
    link), or None when it is something else (logged once). Raises FileNotFoundError if it is gone."""
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP: a symbolic link under O_NOFOLLOW; EISDIR, ENXIO (a FIFO opened to write), ...
        report_foreign(path, f"not openable as a regular file ({e.strerror or e})")
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        report_foreign(path, file_kind(st.st_mode))
        return None
    return fd


def entry_file_stem(key: str) -> str:
    """The file stem of ``key``'s entry: blake2b-160 of its UTF-8 bytes, in hex."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def open_namespace(directory: Path, fingerprint: str, read_only: bool = False) -> tuple[Path, bool]:
    """Create or check the store directory and its marker; return the fingerprint's namespace folder and
    whether the store is read-only (asked for, or not writable by this process; see the module docstring)."""
    if directory.exists() and not directory.is_dir():
        raise CacheError(f"K/V cache directory {directory} is a file, not a directory; "
                         "pass a directory for the store (it is created if missing)")
    if not directory.is_dir():
        if read_only:
            raise CacheError(f"K/V cache directory {directory} does not exist; a read-only store must exist already")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create the K/V cache directory {directory} ({e.strerror or e}); "
                             "choose a writable location or fix its permissions") from None
    marker = directory / MARKER_NAME
    read_only = read_only or not os.access(directory, os.W_OK | os.X_OK)
    if read_only and not os.path.lexists(marker):
        raise CacheError(f"K/V cache directory {directory} is not writable; "
                         "choose a writable location or fix its permissions")
    if not os.path.lexists(marker):
        others = [n for n in os.listdir(directory) if not n.startswith(TEMP_PREFIX) and n != MARKER_NAME]
        if others and not marker.exists():  # a store opening at the same time writes its marker first
            raise CacheError(f"{directory} is not a miniReranker K/V store: it holds other files "
                             f"({', '.join(sorted(others)[:3])}) and no {MARKER_NAME}; use an empty or dedicated "
                             "directory for the cache")
        write_marker(directory)
    try:  # a regular file only: a FIFO planted as the marker must not block the open
        content = json.loads(read_regular(marker, MARKER_MAX_BYTES))
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
    if os.path.lexists(namespace) and not namespace.is_dir():  # a link to a directory is fine; a FIFO is not
        raise CacheError(f"{namespace} in the K/V cache directory is not a directory; remove it, or choose "
                         "another cache directory")
    if not namespace.is_dir() and not read_only:
        try:
            namespace.mkdir(exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create {namespace} in the K/V cache directory ({e.strerror or e}); "
                             "choose a writable location or fix its permissions") from None
    if namespace.is_dir() and not os.access(namespace, os.R_OK | os.X_OK):
        raise CacheError(f"K/V cache directory {namespace} is not readable; fix its permissions")
    return namespace, read_only or not (namespace.is_dir() and os.access(namespace, os.W_OK | os.X_OK))


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


def _scan(namespace: Path) -> list[os.DirEntry]:
    """The names in ``namespace`` (none when a read-only store has no namespace for this bundle yet)."""
    try:
        with os.scandir(namespace) as items:
            return list(items)
    except FileNotFoundError:
        return []


def remove_stale_temps(namespace: Path) -> None:
    """Delete temp files left by writers that died (kill -9, power loss). Live writers hold a flock.
    Only regular files are temp files: a FIFO or anything else named like one is skipped and logged."""
    for item in _scan(namespace):
        if not item.name.startswith(TEMP_PREFIX) or not is_regular(item):
            continue
        try:
            fd = open_regular_fd(item.path)
        except OSError:
            continue
        if fd is None:
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
    for item in _scan(namespace):
        if _ENTRY_NAME_RE.fullmatch(item.name) and is_regular(item):
            try:
                st = item.stat(follow_symlinks=False)
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
    lock = namespace / ".lock"
    try:
        fd = open_regular_fd(lock, os.O_RDWR | os.O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW)
    except OSError as e:
        raise CacheError(f"cannot open the eviction lock {lock} ({e.strerror or e}); fix its permissions") from None
    if fd is None:
        raise CacheError(f"the eviction lock {lock} is not a regular file; remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_noatime(path: Path):
    """Open for reading without bumping the access time (our LRU clock) where the OS allows it."""
    try:
        fd = open_regular_fd(path, O_SAFE_READ | O_NOATIME)
    except PermissionError:  # O_NOATIME needs file ownership
        fd = open_regular_fd(path)
    if fd is None:
        raise OSError(f"{path} is not a regular file")
    return open(fd, "rb")


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
