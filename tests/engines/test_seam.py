"""engines/ is the only place that makes backend sessions (checked on the source with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["tools", "calibration", "export", "runtime", "engines", "benchmarks"]


def session_makers(path: Path) -> list[int]:
    """Lines of ``InferenceSession`` uses (``ort.InferenceSession``, ``from onnxruntime import InferenceSession``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "InferenceSession":
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "InferenceSession":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and any(a.name == "InferenceSession" for a in node.names):
            lines.append(node.lineno)
    return lines


def test_onnx_runtime_sessions_are_made_in_engines_only():
    found = {str(p.relative_to(ROOT)): session_makers(p) for folder in SOURCES for p in (ROOT / folder).rglob("*.py")}
    outside = {p: lines for p, lines in found.items() if lines and not p.startswith("engines/")}
    assert not outside, f"ONNX Runtime sessions made outside engines/ (use engines.open_runner): {outside}"
    assert found["engines/onnxrt.py"], "the checker no longer sees the ONNX Runtime runner's session"
