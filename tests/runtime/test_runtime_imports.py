"""The runtime must import without torch or transformers: prove it in a subprocess where importing them fails."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import minireranker.runtime as runtime

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(f'{name} must not be imported by the runtime')
        return None
sys.meta_path.insert(0, Block())
"""


def test_every_runtime_module_imports_without_torch_or_transformers():
    modules = sorted(f"minireranker.runtime.{m.name}" for m in pkgutil.iter_modules(runtime.__path__))
    assert "minireranker.runtime.template" in modules and "minireranker.runtime.preprocess" in modules
    code = BLOCKER + "".join(f"import {m}\n" for m in modules) + (
        "assert not any(k.split('.')[0] in ('torch', 'transformers') for k in sys.modules)\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_blocker_really_blocks():
    out = subprocess.run([sys.executable, "-c", BLOCKER + "import torch\n"], capture_output=True, text=True)
    assert out.returncode != 0 and "must not be imported" in out.stderr
