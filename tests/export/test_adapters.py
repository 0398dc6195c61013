"""Architectures are registered adapters: each has a tiny fixture, and only its module knows its weight names.

A new architecture registered in ``export/arch/__init__.py`` without a tiny preset that builds, opens and
loads fails here; so does a Hugging Face weight name written outside ``export/arch/``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from minireranker.export.arch import ARCHITECTURES, architecture_for
from minireranker.export.tiny import PRESETS
from minireranker.runtime.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("tools", "calibration", "export", "runtime", "engines")
# pieces of the checkpoints' tensor names (Qwen3-VL's, Qwen2-VL's, Qwen2.5-VL's); a string literal holding one
# belongs in export/arch/
WEIGHT_NAME_PIECES = ("model.language_model.", "model.visual.", "lm_head.weight", "embed_tokens.weight",
                      "deepstack_merger_list", "patch_embed.proj", "post_attention_layernorm", "merger.ln_q",
                      "merger.mlp.")


def test_every_registered_architecture_has_a_tiny_preset(checkpoint_factory):
    written = {json.loads((checkpoint_factory(name) / "config.json").read_text())["model_type"] for name in PRESETS}
    missing = sorted(set(ARCHITECTURES) - written)
    assert not missing, f"registered architectures without a tiny preset in export/tiny.py: {missing}"


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_each_adapter_names_a_tiny_preset_that_builds_and_loads(model_type, checkpoint_factory):
    """The adapter's own preset writes its model_type; the checkpoint opens, loads exactly the adapter's
    tensors, and the torch model built from them maps every parameter back to one of them."""
    pytest.importorskip("torch")
    from minireranker.export.checkpoint import expected_shapes, load_state_dict, open_checkpoint
    from minireranker.export.modeling import build_model

    arch = ARCHITECTURES[model_type]
    assert arch.model_type == model_type
    assert arch.tiny_preset in PRESETS, f"{model_type}: tiny preset {arch.tiny_preset!r} is not in tiny.PRESETS"
    assert PRESETS[arch.tiny_preset].model_type == model_type
    checkpoint = open_checkpoint(checkpoint_factory(arch.tiny_preset))
    assert checkpoint.config.model_type == model_type
    tensors = load_state_dict(checkpoint)
    wanted = expected_shapes(checkpoint.config)
    shared = {name for name, _ in arch.tied}  # on disk only when untied, always loaded
    assert set(tensors) == set(wanted) | shared
    model = build_model(checkpoint.config, tensors)
    assert set(model.transformers_names.values()) == set(wanted) | shared


def test_unregistered_architecture_is_refused_with_the_registry_named():
    with pytest.raises(CheckpointError, match="not registered.*qwen3_vl.*export/arch"):
        architecture_for("llava")


def test_no_checkpoint_weight_name_is_written_outside_the_adapters():
    """String literals only: transformers' module attributes (``model.model.visual``) are code, not names."""
    found = []
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            if path.is_relative_to(ROOT / "export" / "arch"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: {piece}"
                              for piece in WEIGHT_NAME_PIECES if piece in node.value]
    assert not found, "weight names belong in export/arch/<architecture>.py:\n" + "\n".join(found)
