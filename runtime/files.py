"""Opening files that the runtime did not write: regular files only, with a size cap.

A FIFO, a device (``/dev/zero``), a socket or a directory where a document or a cache file should be
must never hang a command or be read without bound. :func:`open_regular` opens with ``O_NONBLOCK`` (so
opening a FIFO does not wait for a writer), checks with ``fstat`` on the opened descriptor (so the file
checked is the file read, whatever the path points to afterwards) that it is a regular file no larger than
the cap, and only then hands back a file object. Symbolic links are followed: the kind checked is that
of the file they lead to.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFileError(OSError):
    """The path names something other than a regular file (a FIFO, a device, a socket, a directory)."""


class FileTooLargeError(OSError):
    """A regular file is larger than the cap its reader sets."""


def file_kind(mode: int) -> str:
    """What ``st_mode`` describes, in words ("a regular file", "a FIFO (named pipe)", ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """The regular file at ``path`` opened for binary reading, never blocking on a FIFO.

    Raises FileNotFoundError, PermissionError and the like as ``os.open`` does; IsADirectoryError for a
    directory; :class:`NotRegularFileError` for any other kind that is not a regular file;
    :class:`FileTooLargeError` when the file is over ``max_bytes``. Their ``strerror`` says what was found.
    """
    fd = os.open(path, os.O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a regular file", os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"is {file_kind(st.st_mode)}, not a regular file", os.fspath(path))
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLargeError(errno.EFBIG, f"is {st.st_size:,} bytes, over the cap of {max_bytes:,} bytes",
                                    os.fspath(path))
        if O_NONBLOCK:  # a regular file ignores it, but whoever reads the object should not see it set
            os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """All bytes of the regular file at ``path`` (see :func:`open_regular`), at most ``max_bytes``: a file
    that grows past the cap while it is read raises :class:`FileTooLargeError` too."""
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(errno.EFBIG, f"grew past the cap of {max_bytes:,} bytes while it was read",
                                os.fspath(Path(path)))
    return data
