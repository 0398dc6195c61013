"""The base install carries no ONNX Runtime build (pyproject: the cpu and gpu extras): without one, the
runtime and the command line say in one line which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minireranker.engines.onnxrt import NO_ONNXRUNTIME

BLOCK = "import sys; sys.modules['onnxruntime'] = None; "  # `import onnxruntime` then raises ImportError


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_the_library_says_which_extra(tiny_bundle, tmp_path):
    out = _run(f"""
from minireranker.runtime.errors import MiniRerankerError
from minireranker.runtime.reranker import Reranker
try:
    Reranker({str(tiny_bundle)!r}, {str(tmp_path / 'cache')!r})
except MiniRerankerError as exc:
    print(exc)
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == NO_ONNXRUNTIME
    assert 'pip install "minireranker[cpu]"' in NO_ONNXRUNTIME and '"minireranker[gpu]"' in NO_ONNXRUNTIME


@pytest.mark.parametrize("command", ["rerank", "index"])
def test_the_command_line_says_it_in_one_line(tiny_bundle, tmp_path, command):
    args = [str(tiny_bundle), "--cache", str(tmp_path / "cache")] + (["--query", "q"] if command == "rerank" else [])
    out = _run(f"from minireranker.tools.cli import main; sys.exit(main({[command, *args, 'text:a document']!r}))")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"error: {NO_ONNXRUNTIME}"
