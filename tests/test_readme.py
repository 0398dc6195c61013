"""README examples run as tests, and the README's test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    setup = blocks("bash")[:2]
    assert "minireranker demo" in setup[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = re.search(r"TEST_COMMAND='(.*)'", ci).group(1)
    assert setup[1].strip() == command


def test_readme_reference_example_runs(tmp_path):
    code = next(b for b in blocks("python") if "ReferencePipeline" in b)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"\{'red': .*'blue': .*\}", out.stdout), out.stdout


def test_readme_walkthrough_and_runtime_example_run(tmp_path):
    """The build/index/rerank/inspect commands, then the application example, with /tmp paths moved."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (96, 64), "red").save(tmp_path / "photos" / "a.png")
    Image.new("RGB", (64, 96), "blue").save(tmp_path / "photos" / "b.png")

    def moved(text: str) -> str:
        return text.replace("/tmp/", f"{tmp_path}/")

    walkthrough = next(b for b in blocks("bash") if "minireranker build" in b)
    for line in walkthrough.splitlines():
        command = moved(line.split("#")[0].strip())
        if command:
            out = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=600)
            assert out.returncode == 0, (command, out.stderr)
            assert "Traceback" not in out.stderr
    assert "a.png" in out.stdout or "fingerprint" in out.stdout  # inspect printed the bundle
    # the bench block's tiny line runs once, as tests/calibration/bench/test_bench.py's fixture (README_BENCH)
    # the profile block's estimate line (the full default sweep takes minutes: tests/runtime/profiling/test_profile.py)
    estimate = next(line for b in blocks("bash") for line in b.splitlines() if "--estimate" in line)
    out = subprocess.run(moved(estimate.split("#")[0].strip()), shell=True, capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "band" in out.stdout, out.stderr
    code = moved(next(b for b in blocks("python") if "Reranker(" in b))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\d a ", out.stdout, flags=re.M) and "[]" in out.stdout, out.stdout
    code = moved(next(b for b in blocks("python") if "Reranker.from_pretrained(" in b))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    ranked = re.findall(r"^([0-2]) (None|b) (-?\d+\.\d+) (\d\.\d+)$", out.stdout, flags=re.M)
    assert len(ranked) == 2 and float(ranked[0][2]) >= float(ranked[1][2]), out.stdout  # top_k=2, best first


def test_readme_spec_example_is_a_valid_spec():
    import json

    from minireranker.runtime.spec import RerankSpec

    example = next(b for b in blocks("json") if '"schema_version"' in b)
    spec = RerankSpec.from_dict(json.loads(example))
    assert spec.resolve(28).band == (4, 7)
