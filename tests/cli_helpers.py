"""Helpers shared by the command-line tests (importable because pyproject puts tests/ on pytest's path)."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess, capturing its output."""
    return subprocess.run([sys.executable, "-m", "minireranker.tools.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit status 2, nothing on stdout, exactly one ``error: ...`` line on stderr, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    missing = [p for p in parts if p not in lines[0]]
    assert not missing, f"{lines[0]!r} lacks {missing}"
    return lines[0]


# `python -c DROP_DAC PROGRAM ARGS...` runs PROGRAM with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped
# (root then obeys file modes).
DROP_DAC = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; exec then leaves them out of the effective set
            sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""
