"""`minireranker demo`, the README's first command, on the embedded default."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end_and_says_what_it_is(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minireranker.tools.cli", "demo", "--output", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "random-weight tiny Qwen3-VL" in text          # honest about the interim checkpoint
    assert text.count("query: ") == 3 and "stages (ms): query_head" in text
    assert "x faster, same run" in text
    assert (tmp_path / "d" / "bundle" / "bundle.json").is_file()
    assert "Traceback" not in out.stderr
