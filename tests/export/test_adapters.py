"""Every registered architecture has a tiny fixture (a preset writing that model_type), or this fails."""

from __future__ import annotations

import json

from minireranker.export.config import ADAPTERS
from minireranker.export.tiny import PRESETS


def test_every_registered_architecture_has_a_tiny_preset(checkpoint_factory):
    written = {json.loads((checkpoint_factory(name) / "config.json").read_text())["model_type"] for name in PRESETS}
    missing = sorted(set(ADAPTERS) - written)
    assert not missing, f"registered architectures without a tiny preset in export/tiny.py: {missing}"
