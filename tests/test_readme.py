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


def test_readme_python_example_runs(tmp_path):
    (code,) = blocks("python")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"\{'red': .*'blue': .*\}", out.stdout), out.stdout


def test_readme_spec_example_is_a_valid_spec():
    import json

    from minireranker.runtime.spec import RerankSpec

    example = next(b for b in blocks("json") if '"schema_version"' in b)
    spec = RerankSpec.from_dict(json.loads(example))
    assert spec.resolve(28).band == (4, 7)
