"""The demo models' tokenizer and checkpoints: a fresh model from a preset, saved in Hugging Face layout."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from ...runtime.errors import CheckpointError
from ...export.config import parse_model_config
from ...export.tiny import TinyPreset, build_config, build_preprocessor_config, build_preset_state_dict, padded_vocab_size, \
    write_safetensors
from ...export.tokenizer_factory import QWEN_SPECIAL_TOKENS, build_tokenizer, write_tokenizer
from . import data
from .trainable import TrainableQwen3VL


def _initial_state(preset: TinyPreset, seed: int, vocab_size: int) -> dict[str, Tensor]:
    """tiny.py's seeded weights, with residual output projections scaled by 1/sqrt(2L) (GPT-2 style) so the
    residual stream starts at the same scale whatever the depth."""
    state = build_preset_state_dict(preset, seed, vocab_size)
    scale = (2 * preset.num_hidden_layers) ** -0.5
    for name in state:
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            state[name] = state[name] * scale
    return state


def demo_tokenizer():
    """The demo models' tokenizer: tokenizer_factory's BPE, trained with the demo's words added."""
    return build_tokenizer(data.vocabulary_lines())


def new_model(preset: TinyPreset, tokenizer, seed: int, answers: bool) -> TrainableQwen3VL:
    """A freshly initialised model; ``answers`` adds the trainable yes/no rows (the reranker)."""
    vocab = padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True))
    token_ids = {t: tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    config = parse_model_config(build_config(preset, token_ids, vocab))
    answer_ids = (tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")) if answers else None
    return TrainableQwen3VL(config, _initial_state(preset, seed, vocab), answer_ids)


def save_checkpoint(model: TrainableQwen3VL, preset: TinyPreset, tokenizer, directory: Path) -> Path:
    """Write the model in Hugging Face layout, as tiny.py writes its checkpoints (float32, one file)."""
    from ...export.tiny import parameter_specs

    state = model.transformers_state_dict()
    vocab = model.core.config.text.vocab_size
    expected = set(parameter_specs(preset, vocab))
    if set(state) != expected:
        raise CheckpointError(f"trained weights do not map onto transformers' names: missing "
                              f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    directory.mkdir(parents=True, exist_ok=True)
    write_tokenizer(directory, tokenizer)
    token_ids = {t: tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    write_json(directory / "config.json", build_config(preset, token_ids, vocab))
    write_json(directory / "preprocessor_config.json", build_preprocessor_config(preset))
    write_safetensors(directory, state, 1)
    return directory


def to_bfloat16(directory: Path) -> Path:
    """Round a saved checkpoint's float weights to bfloat16 once (the query-first demo reranker ships so, as
    Qwen3-VL-Reranker does): model.safetensors rewritten, config.json's dtype set to match."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    state = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in load_file(path).items()}
    save_file(state, str(path), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    for part in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        for key in ("torch_dtype", "dtype"):
            if key in part:
                part[key] = "bfloat16"
    write_json(directory / "config.json", config)
    return directory


def write_json(path: Path, value: dict) -> None:
    """``value`` as indented JSON with a final newline (config files, the training report)."""
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
