"""The stage packages import one way: tools -> calibration -> export -> runtime -> engines.

Checked on the source with ``ast`` (so imports inside functions count too, and nothing has to be
importable): every import of a ``minireranker`` module, absolute or relative, is resolved to its stage
package, and a package may import only itself and the packages to its right.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["tools", "calibration", "export", "runtime", "engines"]


def module_name(path: Path) -> list[str]:
    """``runtime/serve/api.py`` -> ['minireranker', 'runtime', 'serve', 'api']."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ["minireranker", *parts]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every ``minireranker`` import in the file, at any depth."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "minireranker" or name.startswith("minireranker.")]


def stage_sources() -> dict[str, list[Path]]:
    return {stage: sorted((ROOT / stage).rglob("*.py")) for stage in ORDER}


def test_every_stage_package_has_sources():
    sources = stage_sources()
    for stage in ["tools", "calibration", "export", "runtime", "engines"]:
        assert sources[stage], f"no Python files under {stage}/"


def test_stage_packages_import_only_to_their_right():
    violations = []
    for stage, files in stage_sources().items():
        allowed = set(ORDER[ORDER.index(stage):])
        for path in files:
            for line, name in imported_modules(path):
                parts = name.split(".")
                target = parts[1] if len(parts) > 1 else "minireranker"
                if target not in allowed:
                    violations.append(f"{path.relative_to(ROOT)}:{line} ({stage}) imports {name}")
    assert not violations, "imports against tools -> calibration -> export -> runtime -> engines:\n" + \
        "\n".join(violations)


def test_checker_sees_relative_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself: a relative import inside a function resolves to the package it names."""
    fake = ROOT / "runtime" / "serve" / "api.py"
    source = "def f():\n    from ...calibration.metrics import summarize\n    from . import batcher\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else "")
    assert imported_modules(fake) == [(2, "minireranker.calibration.metrics"), (3, "minireranker.runtime.serve")]
