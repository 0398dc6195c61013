"""Qwen2-VL and Qwen2.5-VL config.json -> ModelConfig as transformers 5 reads it: both layouts (text fields
in ``text_config`` or at the top level, as released), the released models' own config.json files (their
tensor names and shapes equal those of transformers' model built on the meta device, in order), clear
errors for what is not supported, and the released files' tensor-name prefixes."""

from __future__ import annotations

import copy
import json

import pytest

from minireranker.export.arch import ARCHITECTURES
from minireranker.export.checkpoint import LEGACY_PREFIXES, expected_shapes
from minireranker.export.config import parse_model_config
from minireranker.export.tiny import build_config, padded_vocab_size
from minireranker.export.tokenizer_factory import QWEN_SPECIAL_TOKENS
from minireranker.runtime.errors import CheckpointError

IDS = {token: 600 + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)}
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
             "rope_scaling", "use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout",
             "bos_token_id", "eos_token_id", "initializer_range", "use_cache")
TOKENS = {"bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
          "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
          "video_token_id": 151656}
# Qwen/Qwen2-VL-2B-Instruct's config.json (transformers 4.41 era: the flat layout)
QWEN2_VL_2B = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", **TOKENS,
    "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
    "intermediate_size": 8960, "max_position_embeddings": 32768, "max_window_layers": 28,
    "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
# Qwen/Qwen2.5-VL-3B-Instruct's config.json
QWEN2_5_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", **TOKENS,
    "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 128000, "max_window_layers": 70,
    "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
RELEASED = {"qwen2_vl": QWEN2_VL_2B, "qwen2_5_vl": QWEN2_5_VL_3B}


def nested(flat: dict) -> dict:
    """The flat layout rewritten as transformers 5 writes it: text fields in text_config, rope_parameters."""
    raw = {k: v for k, v in flat.items() if k not in TEXT_KEYS}
    text = {k: flat[k] for k in TEXT_KEYS if k in flat and k not in ("rope_scaling", "rope_theta")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": flat["rope_theta"],
                               "mrope_section": flat["rope_scaling"]["mrope_section"]}
    return {**raw, "text_config": text}


@pytest.mark.parametrize("preset", ["qwen2_vl_tiny", "qwen2_5_vl_tiny"])
def test_both_layouts_read_the_same(preset):
    written = build_config(preset, IDS, padded_vocab_size(700))
    text = {k: v for k, v in written.get("text_config", {}).items() if k != "model_type"}
    flat = {**{k: v for k, v in written.items() if k != "text_config"}, **text}
    if "rope_parameters" in flat:  # back to the released rotary form
        rope = flat.pop("rope_parameters")
        flat.update(rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]},
                    rope_theta=rope["rope_theta"])
    assert parse_model_config(flat) == parse_model_config(nested(flat))


def test_released_qwen2_vl_config():
    config = parse_model_config(QWEN2_VL_2B)
    t, v = config.text, config.vision
    assert (t.head_dim, t.num_kv_heads, t.mrope_section, t.rope_theta) == (128, 2, (16, 24, 24), 1e6)
    assert (t.attention_bias, t.qk_norm, t.mrope_interleaved, config.tie_word_embeddings) == (True, False, False, True)
    assert (v.hidden_size, v.intermediate_size, v.out_hidden_size, v.num_heads) == (1280, 5120, 1536, 16)
    assert (v.mlp, v.norm, v.window_size, v.num_position_embeddings, v.deepstack_indexes) == (
        "quick_gelu", "layer_norm", 0, 0, ())
    assert parse_model_config(nested(QWEN2_VL_2B)) == config


def test_released_qwen2_5_vl_config():
    config = parse_model_config(QWEN2_5_VL_3B)
    v = config.vision
    assert (config.text.head_dim, v.hidden_size, v.intermediate_size, v.out_hidden_size) == (128, 1280, 3420, 2048)
    assert (v.mlp, v.norm, v.window_size, v.window_tokens, v.fullatt_block_indexes) == (
        "silu_gated", "rms_norm", 112, 4, (7, 15, 23, 31))


@pytest.mark.parametrize("model_type", sorted(RELEASED))
def test_released_tensor_names_and_shapes_are_transformers(model_type):
    """transformers' model of the released config.json, built on the meta device (no memory): its state dict
    (tied lm_head left out) is exactly the adapter's table, names, shapes and order."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = ARCHITECTURES[model_type]
    config_class = getattr(transformers, arch.transformers_class.replace("ForConditionalGeneration", "Config"))
    raw = copy.deepcopy(RELEASED[model_type])
    with torch.device("meta"):
        model = getattr(transformers, arch.transformers_class)(config_class(**raw))
    theirs = {name: tuple(t.shape) for name, t in model.state_dict().items() if name != "lm_head.weight"}
    ours = expected_shapes(parse_model_config(RELEASED[model_type]))
    assert list(ours.items()) == list(theirs.items())
    assert model.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]


def edited(model_type: str, edit) -> dict:
    raw = copy.deepcopy(RELEASED[model_type])
    edit(raw)
    return raw


@pytest.mark.parametrize("model_type, edit, words", [
    ("qwen2_vl", lambda c: c.update(head_dim=64), ["head_dim=64", "hidden_size=1536"]),
    ("qwen2_vl", lambda c: c.update(use_sliding_window=True), ["use_sliding_window"]),
    ("qwen2_vl", lambda c: c["rope_scaling"].update(type="yarn"), ["rope_type", "yarn"]),
    ("qwen2_vl", lambda c: c["vision_config"].update(in_chans=4), ["in_chans=4", "in_channels"]),
    ("qwen2_vl", lambda c: c["vision_config"].update(hidden_size=1024), ["vision_config", "hidden_size", "1536"]),
    ("qwen2_vl", lambda c: c["vision_config"].update(hidden_act="gelu"), ["hidden_act", "quick_gelu"]),
    ("qwen2_vl", lambda c: c["vision_config"].pop("embed_dim"), ["vision_config", "embed_dim"]),
    ("qwen2_vl", lambda c: c.pop("hidden_size"), ["the top level", "hidden_size"]),
    ("qwen2_5_vl", lambda c: c["vision_config"].update(window_size=14), ["window_size=14", "28"]),
    ("qwen2_5_vl", lambda c: c["vision_config"].update(fullatt_block_indexes=[7, 40]), ["fullatt_block_indexes"]),
    ("qwen2_5_vl", lambda c: c["vision_config"].update(out_hidden_size=1280), ["out_hidden_size"]),
    ("qwen2_5_vl", lambda c: c.update(text_config={"hidden_size": 2048}), ["text_config", "num_attention_heads"]),
])
def test_unsupported_configs_are_refused_clearly(model_type, edit, words):
    with pytest.raises(CheckpointError) as info:
        parse_model_config(edited(model_type, edit))
    for word in ["config.json", *words]:
        assert word in str(info.value), (word, str(info.value))


def test_qwen3_vl_still_needs_its_position_table():
    raw = build_config("tiny", IDS, padded_vocab_size(700))
    raw["vision_config"]["num_position_embeddings"] = 0
    with pytest.raises(CheckpointError, match="num_position_embeddings"):
        parse_model_config(raw)


@pytest.mark.parametrize("preset", ["qwen2_vl_tiny"])
def test_legacy_prefixes_are_the_released_layout(preset, checkpoint_factory, tmp_path):
    """A checkpoint stored under the released names (``visual.*``, ``model.*``) loads in transformers with
    nothing missing: the prefixes our loader renames (checkpoint.LEGACY_PREFIXES) are those transformers renames."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    source = checkpoint_factory(preset)
    arch = ARCHITECTURES[json.loads((source / "config.json").read_text())["model_type"]]
    for path in source.iterdir():
        if path.suffix != ".safetensors":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    tensors = load_file(str(source / "model.safetensors"))

    def legacy(name: str) -> str:
        for old, new in LEGACY_PREFIXES:
            if name.startswith(new):
                return old + name[len(new):]
        return name

    save_file({legacy(n): t for n, t in tensors.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    model, info = getattr(transformers, arch.transformers_class).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in tensors.items())
