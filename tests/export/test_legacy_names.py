"""Checkpoints in transformers < 4.52's layout (``visual.*``, ``model.layers.N...``) load like current ones.

A tiny checkpoint is rewritten with the old names (the rule transformers 5 itself applies to a
Qwen2VLForConditionalGeneration checkpoint, written out here by hand so that the test does not share the
code it checks); load_state_dict must give exactly the same tensors, and read_tensors must find a tensor
outside the adapter's table (a score head's).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from minireranker.export.arch import ARCHITECTURES  # noqa: E402
from minireranker.export.checkpoint import (  # noqa: E402
    current_weight_name,
    load_state_dict,
    open_checkpoint,
    read_tensors,
)
from minireranker.export.tiny import write_tiny_checkpoint  # noqa: E402
from legacy_names_helpers import rewrite_with_old_names  # noqa: E402
from minireranker.runtime.errors import CheckpointError  # noqa: E402


# untied single file; tied (no lm_head on disk) in two shards with an index; every architecture's own preset
PRESETS = sorted({"tiny", "gqa3_odd_head"} | {arch.tiny_preset for arch in ARCHITECTURES.values()})


@pytest.fixture(scope="module")
def current(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("current")
    return {p: write_tiny_checkpoint(root / p, p, seed=3) for p in PRESETS}


@pytest.mark.parametrize("name, expected", [
    ("visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight"),
    ("visual.merger.linear_fc1.bias", "model.visual.merger.linear_fc1.bias"),
    ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
    ("model.layers.3.self_attn.q_proj.weight", "model.language_model.layers.3.self_attn.q_proj.weight"),
    ("model.norm.weight", "model.language_model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("score.0.weight", "score.0.weight"),
    # already current: unchanged, so the rule can be applied to either layout (and twice)
    ("model.visual.blocks.0.norm1.weight", "model.visual.blocks.0.norm1.weight"),
    ("model.language_model.norm.weight", "model.language_model.norm.weight"),
])
def test_current_weight_name(name, expected):
    assert current_weight_name(name) == expected
    assert current_weight_name(expected) == expected


@pytest.mark.parametrize("preset", PRESETS)
def test_old_names_load_exactly_the_same_tensors(current, tmp_path, preset):
    old = Path(shutil.copytree(current[preset], tmp_path / preset))
    rewrite_with_old_names(old, extra={"model.rotary_emb.inv_freq": torch.ones(4)})  # an unknown extra: ignored
    on_disk = set()
    for file in old.glob("*.safetensors"):
        on_disk |= set(safetensors_torch.load_file(str(file)))
    assert not any(n.startswith(("model.visual.", "model.language_model.")) for n in on_disk)  # really renamed

    expected = load_state_dict(open_checkpoint(current[preset]))
    loaded = load_state_dict(open_checkpoint(old))
    assert list(loaded) == list(expected)  # same names, same (table) order
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name  # exact: renamed, not recomputed


def test_current_name_wins_over_an_old_duplicate(current, tmp_path):
    directory = Path(shutil.copytree(current["tiny"], tmp_path / "tiny"))
    tensors = safetensors_torch.load_file(str(directory / "model.safetensors"))
    norm = "model.language_model.norm.weight"
    tensors["model.norm.weight"] = torch.zeros_like(tensors[norm])  # a stale copy under the old name
    safetensors_torch.save_file(tensors, str(directory / "model.safetensors"))
    assert torch.equal(load_state_dict(open_checkpoint(directory))[norm], tensors[norm])


def test_read_tensors_finds_a_score_head_in_an_old_layout_checkpoint(current, tmp_path):
    directory = Path(shutil.copytree(current["gqa3_odd_head"], tmp_path / "old"))
    head = {"score.0.weight": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
            "score.0.bias": torch.tensor([0.5, -1.0, 2.0])}
    rewrite_with_old_names(directory, extra=head)
    checkpoint = open_checkpoint(directory)
    norm = "model.language_model.norm.weight"
    got = read_tensors(checkpoint, ["score.0.weight", "score.0.bias", norm])
    assert list(got) == ["score.0.weight", "score.0.bias", norm]
    assert all(t.dtype == torch.float32 for t in got.values())
    assert torch.equal(got["score.0.weight"], head["score.0.weight"].float())  # bf16 -> fp32 is exact
    assert torch.equal(got["score.0.bias"], head["score.0.bias"])
    assert torch.equal(got[norm], load_state_dict(checkpoint)[norm])
    assert "score.0.weight" not in load_state_dict(checkpoint)  # outside the adapter's table: not loaded


def test_read_tensors_names_what_is_missing(current):
    checkpoint = open_checkpoint(current["tiny"])
    with pytest.raises(CheckpointError) as info:
        read_tensors(checkpoint, ["score.0.weight", "model.language_model.norm.weight", "score.2.bias"])
    message = str(info.value)
    assert str(current["tiny"]) in message and "score.0.weight" in message and "score.2.bias" in message
    assert "model.language_model.norm.weight" not in message
    assert "\n" not in message
