"""`minireranker verify`: the user-facing parity check on a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from minireranker.calibration.verify import verify_checkpoint  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402


def test_verify_reports_parity_within_tolerance(tiny_checkpoint):
    spec = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5, query_position=80)
    report = verify_checkpoint(tiny_checkpoint, spec, tolerance=1e-4)
    assert report["ok"] and report["pairs"] == 20
    assert 0 <= report["exact"]["max_abs_diff"] <= 1e-4 and 0 <= report["spec"]["max_abs_diff"] <= 1e-4
    assert report["spec"]["spec"]["band"] == [1, 2]


def test_verify_fails_when_the_tolerance_is_not_met(tiny_checkpoint):
    docs = [Document(text="a short text")]
    report = verify_checkpoint(tiny_checkpoint, documents=docs, queries=["q"], tolerance=-1.0)
    assert report["ok"] is False and report["exact"]["ok"] is False


def test_verify_command_line(tiny_checkpoint):
    out = subprocess.run([sys.executable, "-m", "minireranker.tools.cli", "verify", str(tiny_checkpoint),
                          "text:hello world", "--query", "hello", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["pairs"] == 1
