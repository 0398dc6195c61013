"""What the Qwen-VL adapters share: transformers 5's tensor-name layout and the text decoder's weight table.

Qwen3-VL, Qwen2-VL and Qwen2.5-VL all load into ``model.visual.*`` (the tower), ``model.language_model.*``
(the decoder) and ``lm_head.weight`` in transformers 5, and their decoder layers differ only in the q/k/v
biases and the q/k norms (:class:`~minireranker.export.config.TextConfig` flags), so the decoder's table
is written once here. Torch-free, like the registry.
"""

from __future__ import annotations

from typing import Any

from ...runtime.errors import CheckpointError
from ..config import TextConfig, VisionConfig
from . import Weight

VISUAL = "model.visual."
TEXT = "model.language_model."
EMBED = TEXT + "embed_tokens.weight"
LM_HEAD = "lm_head.weight"


def linear(table: dict[str, Weight], name: str, out_dim: int, in_dim: int, bias: bool) -> None:
    table[f"{name}.weight"] = Weight((out_dim, in_dim), ("matrix", in_dim))
    if bias:
        table[f"{name}.bias"] = Weight((out_dim,), ("bias",))


def layer_norm(table: dict[str, Weight], name: str, dim: int) -> None:
    table[f"{name}.weight"] = Weight((dim,), ("norm",))
    table[f"{name}.bias"] = Weight((dim,), ("bias",))


def rms_norm(table: dict[str, Weight], name: str, dim: int) -> None:
    table[f"{name}.weight"] = Weight((dim,), ("norm",))


def patch_kernel(table: dict[str, Weight], v: VisionConfig) -> None:
    """The patch embedding's conv kernel [Dv, C, T, p, p] (read as a matrix over C*T*p*p values)."""
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size**2
    kernel = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    table[VISUAL + "patch_embed.proj.weight"] = Weight(kernel, ("matrix", patch_in))


def text_weights(t: TextConfig, tied: bool) -> dict[str, Weight]:
    """The decoder's tensors in transformers' order (embedding, layers, final norm, lm_head unless tied)."""
    table: dict[str, Weight] = {}
    h, q_dim, kv_dim = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    # tied: the same rows are read as logits weights, so a tiny checkpoint keeps them at the lm_head scale
    table[EMBED] = Weight((t.vocab_size, h), ("embed", h**-0.5))
    for i in range(t.num_layers):
        layer = f"{TEXT}layers.{i}"
        for name, out_dim in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            linear(table, f"{layer}.self_attn.{name}", out_dim, h, bias=t.attention_bias)
        linear(table, f"{layer}.self_attn.o_proj", h, q_dim, bias=False)
        if t.qk_norm:
            table[f"{layer}.self_attn.q_norm.weight"] = Weight((t.head_dim,), ("norm",))
            table[f"{layer}.self_attn.k_norm.weight"] = Weight((t.head_dim,), ("norm",))
        linear(table, f"{layer}.mlp.gate_proj", t.intermediate_size, h, bias=False)
        linear(table, f"{layer}.mlp.up_proj", t.intermediate_size, h, bias=False)
        linear(table, f"{layer}.mlp.down_proj", h, t.intermediate_size, bias=False)
        table[f"{layer}.input_layernorm.weight"] = Weight((h,), ("norm",))
        table[f"{layer}.post_attention_layernorm.weight"] = Weight((h,), ("norm",))
    table[TEXT + "norm.weight"] = Weight((h,), ("norm",))
    if not tied:
        table[LM_HEAD] = Weight((t.vocab_size, h), ("matrix", h))
    return table


def mrope_section(rope: dict[str, Any], default: tuple[int, int, int]) -> tuple[int, int, int]:
    """``mrope_section`` of a rope dict (t, h, w frequency counts), checked to have three entries."""
    section = tuple(int(x) for x in rope.get("mrope_section", default))
    if len(section) != 3:
        raise CheckpointError(f"config.json: mrope_section must have 3 entries (t, h, w), got {list(section)}")
    return section  # type: ignore[return-value]


def check_rope_type(rope: dict[str, Any], where: str) -> None:
    """Only the plain MRoPE frequencies are supported (no YaRN, no dynamic scaling)."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"config.json: {where} rope_type {rope_type!r} is not supported (only default MRoPE); "
                              "use a checkpoint without rope scaling")
