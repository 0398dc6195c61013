"""A process's memory as Linux accounts it: what ``/metrics`` reports and benchmarks/serve_readers.py reads.

::

    rss      resident bytes: private pages and every shared page the process maps, each counted in full
    pss      proportional set size: each resident page divided by the number of processes that map it, so
             the PSS of N readers of one store sums to the memory they take together
    shared   resident bytes that other processes map too (Shared_Clean + Shared_Dirty)
    private  resident bytes that no other process maps (Private_Clean + Private_Dirty)

``process_memory`` reads ``/proc/PID/smaps_rollup`` (Linux 4.14 and later). Elsewhere only ``rss`` is
known, and it is the peak resident size (``resource.getrusage``, this process only), not the current one;
``pss``, ``shared`` and ``private`` are then None.

``mapped_memory`` gives ``rss`` and ``pss`` of the mappings of files under one directory (the K/V entry
files of a store's namespace) and how many such files are mapped, from ``/proc/PID/smaps``; a file
unlinked since it was mapped (evicted, replaced) still counts. Off Linux it is None.
"""

from __future__ import annotations

import os
import re
import sys

# a mapping's first line in smaps: "start-end perms offset dev inode [path]"
_MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ \S+ [0-9a-f]+ (\S+) (\d+)\s*(.*)")
_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def _kib_fields(lines) -> dict[str, int]:
    """``{"Rss": bytes, ...}`` of smaps lines such as ``Rss:     20 kB``."""
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in _FIELDS:
            out[name] = int(rest.split()[0]) * 1024
    return out


def process_memory(pid: int | str = "self") -> dict[str, int | None]:
    """``{"rss", "pss", "shared", "private"}`` in bytes of process ``pid`` (see the module docstring)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            got = _kib_fields(f)
    except OSError:
        got = {}
    if "Rss" not in got:
        return {"rss": _peak_rss() if pid in ("self", os.getpid()) else None, "pss": None, "shared": None,
                "private": None}
    return {"rss": got["Rss"], "pss": got.get("Pss"),
            "shared": got.get("Shared_Clean", 0) + got.get("Shared_Dirty", 0),
            "private": got.get("Private_Clean", 0) + got.get("Private_Dirty", 0)}


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def mapped_memory(directory: str | os.PathLike, pid: int | str = "self") -> dict[str, int] | None:
    """``{"rss", "pss", "files"}`` of process ``pid``'s mappings of files under ``directory`` (None off Linux)."""
    prefix = os.path.realpath(directory) + os.sep  # /proc shows resolved absolute paths
    try:
        f = open(f"/proc/{pid}/smaps", encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    sizes = {"Rss": 0, "Pss": 0}
    files: set[tuple[str, str]] = set()
    with f:
        inside = False
        for line in f:
            match = _MAPPING.match(line)
            if match:
                inside = match[3].startswith(prefix)
                if inside:
                    files.add((match[1], match[2]))  # (device, inode): an unlinked file keeps its mapping
                continue
            name, _, rest = line.partition(":")
            if inside and name in sizes:
                sizes[name] += int(rest.split()[0]) * 1024
    return {"rss": sizes["Rss"], "pss": sizes["Pss"], "files": len(files)}
