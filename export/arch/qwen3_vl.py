"""Qwen3-VL (``model_type`` "qwen3_vl"): the only place that knows its config.json and its weight names.

* config.json -> :class:`ModelConfig`: the released rotary form (``rope_scaling`` + ``rope_theta`` in
  ``text_config``) and transformers 5's ``rope_parameters`` are both accepted; MRoPE is always interleaved
  (as transformers computes it).
* Weights, in ``Qwen3VLForConditionalGeneration``'s state-dict order::

      model.visual.patch_embed.proj.{weight,bias}, model.visual.pos_embed.weight
      model.visual.blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.linear_fc1,mlp.linear_fc2}.*
      model.visual.merger.*, model.visual.deepstack_merger_list.{j}.*   (norm, linear_fc1, linear_fc2)
      model.language_model.embed_tokens.weight
      model.language_model.layers.{i}.{self_attn.{q,k,v,o}_proj,self_attn.{q,k}_norm,mlp.{gate,up,down}_proj,
                                       input_layernorm,post_attention_layernorm}.weight
      model.language_model.norm.weight, lm_head.weight (absent when tie_word_embeddings)

* The torch modules are :mod:`.qwen3_vl_torch` (loaded only by :meth:`Qwen3VL.build_model`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...runtime.errors import CheckpointError
from ..config import ModelConfig, TextConfig, VisionConfig, config_field
from . import Architecture, Weight
from .common import EMBED, LM_HEAD, VISUAL, check_rope_type, layer_norm, linear, mrope_section, \
    patch_kernel, text_weights

if TYPE_CHECKING:
    from torch import Tensor

    from ..modeling import TorchModel
    from ..tiny import TinyPreset


def _text_rope(tc: dict[str, Any]) -> tuple[float, tuple[int, int, int]]:
    rope = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
    check_rope_type(rope, "text")
    theta = rope.get("rope_theta", tc.get("rope_theta", 500000.0))
    return float(theta), mrope_section(rope, (24, 20, 20))


def _text_config(tc: dict[str, Any]) -> TextConfig:
    num_heads = int(config_field(tc, "num_attention_heads", "text_config"))
    hidden = int(config_field(tc, "hidden_size", "text_config"))
    theta, section = _text_rope(tc)
    text = TextConfig(
        vocab_size=int(config_field(tc, "vocab_size", "text_config")),
        hidden_size=hidden,
        intermediate_size=int(config_field(tc, "intermediate_size", "text_config")),
        num_layers=int(config_field(tc, "num_hidden_layers", "text_config")),
        num_heads=num_heads,
        num_kv_heads=int(config_field(tc, "num_key_value_heads", "text_config", num_heads)),
        head_dim=int(config_field(tc, "head_dim", "text_config", hidden // num_heads)),
        rms_norm_eps=float(config_field(tc, "rms_norm_eps", "text_config", 1e-6)),
        rope_theta=theta,
        mrope_section=section,
        max_position_embeddings=int(tc["max_position_embeddings"]) if tc.get("max_position_embeddings") else None,
    )
    for key, expected in (("hidden_act", "silu"), ("attention_bias", False)):
        if tc.get(key, expected) != expected:
            raise CheckpointError(f"config.json: text_config {key}={tc[key]!r} is not supported (need {expected!r})")
    return text


def _vision_config(vc: dict[str, Any]) -> VisionConfig:
    if vc.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise CheckpointError(f"config.json: vision hidden_act={vc['hidden_act']!r} is not supported")
    vrope = vc.get("rope_parameters") or {}
    if int(config_field(vc, "num_position_embeddings", "vision_config")) < 1:
        raise CheckpointError("config.json: Qwen3-VL's vision_config num_position_embeddings must be a positive "
                              "square (its learned position table); restore the model's config.json")
    return VisionConfig(
        depth=int(config_field(vc, "depth", "vision_config")),
        hidden_size=int(config_field(vc, "hidden_size", "vision_config")),
        intermediate_size=int(config_field(vc, "intermediate_size", "vision_config")),
        num_heads=int(config_field(vc, "num_heads", "vision_config")),
        patch_size=int(config_field(vc, "patch_size", "vision_config", 16)),
        temporal_patch_size=int(config_field(vc, "temporal_patch_size", "vision_config", 2)),
        spatial_merge_size=int(config_field(vc, "spatial_merge_size", "vision_config", 2)),
        out_hidden_size=int(config_field(vc, "out_hidden_size", "vision_config")),
        num_position_embeddings=int(config_field(vc, "num_position_embeddings", "vision_config")),
        deepstack_indexes=tuple(int(i) for i in config_field(vc, "deepstack_visual_indexes", "vision_config", ())),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        in_channels=int(vc.get("in_channels", 3)),
    )


def _vision_weights(v: VisionConfig) -> dict[str, Weight]:
    table: dict[str, Weight] = {}
    vh, merged = v.hidden_size, v.hidden_size * v.spatial_merge_size**2  # merge x merge patches -> one token
    patch_kernel(table, v)
    table[VISUAL + "patch_embed.proj.bias"] = Weight((vh,), ("bias",))
    table[VISUAL + "pos_embed.weight"] = Weight((v.num_position_embeddings, vh), ("embed", 0.5))
    for i in range(v.depth):
        block = f"{VISUAL}blocks.{i}"
        layer_norm(table, f"{block}.norm1", vh)
        layer_norm(table, f"{block}.norm2", vh)
        linear(table, f"{block}.attn.qkv", 3 * vh, vh, bias=True)
        linear(table, f"{block}.attn.proj", vh, vh, bias=True)
        linear(table, f"{block}.mlp.linear_fc1", v.intermediate_size, vh, bias=True)
        linear(table, f"{block}.mlp.linear_fc2", vh, v.intermediate_size, bias=True)
    # the main merger normalizes each patch before the shuffle; DeepStack mergers normalize the concatenation
    mergers = [("merger", vh)] + [(f"deepstack_merger_list.{j}", merged) for j in range(len(v.deepstack_indexes))]
    for merger, norm_dim in mergers:
        layer_norm(table, f"{VISUAL}{merger}.norm", norm_dim)
        linear(table, f"{VISUAL}{merger}.linear_fc1", merged, merged, bias=True)
        linear(table, f"{VISUAL}{merger}.linear_fc2", v.out_hidden_size, merged, bias=True)
    return table


def _rope_fields(p: "TinyPreset") -> dict[str, Any]:
    if p.rope_style == "rope_scaling":  # as in the released Qwen3-VL config.json files
        return {
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": list(p.mrope_section),
                             "rope_type": "default"},
            "rope_theta": p.rope_theta,
        }
    return {  # transformers 5 form
        "rope_parameters": {"rope_type": "default", "rope_theta": p.rope_theta,
                            "mrope_section": list(p.mrope_section), "mrope_interleaved": True},
    }


class Qwen3VL(Architecture):
    """Qwen3-VL: DeepStack vision features, interleaved MRoPE, q/k RMS norms, no attention bias."""

    model_type = "qwen3_vl"
    hf_architectures = ("Qwen3VLForConditionalGeneration",)
    transformers_class = "Qwen3VLForConditionalGeneration"
    tiny_preset = "tiny"
    tied = ((LM_HEAD, EMBED),)

    def parse_config(self, raw: dict[str, Any]) -> ModelConfig:
        """config.json -> :class:`ModelConfig` (module docstring: the accepted rotary forms)."""
        tc = config_field(raw, "text_config", "the top level")
        vc = config_field(raw, "vision_config", "the top level")
        text = _text_config(tc)
        vision = _vision_config(vc)
        return ModelConfig(
            model_type=self.model_type,
            text=text,
            vision=vision,
            image_token_id=int(config_field(raw, "image_token_id", "the top level", 151655)),
            vision_start_token_id=int(config_field(raw, "vision_start_token_id", "the top level", 151652)),
            vision_end_token_id=int(config_field(raw, "vision_end_token_id", "the top level", 151653)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))),
        )

    def weights(self, config: ModelConfig) -> dict[str, Weight]:
        """Name -> :class:`Weight` of every tensor, in transformers' state-dict order (module docstring)."""
        return {**_vision_weights(config.vision), **text_weights(config.text, config.tie_word_embeddings)}

    def tiny_config(self, preset: "TinyPreset", token_ids: dict[str, int], vocab_size: int) -> dict[str, Any]:
        """A ``Qwen3VLForConditionalGeneration`` config.json for a tiny preset."""
        p = preset
        text_config = {
            "model_type": "qwen3_vl_text", "vocab_size": vocab_size, "hidden_size": p.hidden_size,
            "intermediate_size": p.intermediate_size, "num_hidden_layers": p.num_hidden_layers,
            "num_attention_heads": p.num_attention_heads, "num_key_value_heads": p.num_key_value_heads,
            "head_dim": p.head_dim, "hidden_act": "silu", "max_position_embeddings": p.max_position_embeddings,
            "rms_norm_eps": p.rms_norm_eps, "attention_bias": False, "attention_dropout": 0.0,
            "initializer_range": 0.02, "use_cache": True, "tie_word_embeddings": p.tie_word_embeddings,
            "bos_token_id": token_ids["<|endoftext|>"], "eos_token_id": token_ids["<|im_end|>"],
            "dtype": "float32", **_rope_fields(p),
        }
        vision_config = {
            "model_type": "qwen3_vl", "depth": p.vision_depth, "hidden_size": p.vision_hidden_size,
            "intermediate_size": p.vision_intermediate_size, "num_heads": p.vision_num_heads,
            "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": p.patch_size,
            "spatial_merge_size": p.spatial_merge_size, "temporal_patch_size": p.temporal_patch_size,
            "out_hidden_size": p.vision_out_hidden_size, "num_position_embeddings": p.num_position_embeddings,
            "deepstack_visual_indexes": list(p.deepstack_visual_indexes), "initializer_range": 0.02,
        }
        return {
            "architectures": list(self.hf_architectures), "model_type": self.model_type,
            "image_token_id": token_ids["<|image_pad|>"], "video_token_id": token_ids["<|video_pad|>"],
            "vision_start_token_id": token_ids["<|vision_start|>"],
            "vision_end_token_id": token_ids["<|vision_end|>"],
            "tie_word_embeddings": p.tie_word_embeddings, "dtype": "float32",
            "text_config": text_config, "vision_config": vision_config,
        }

    def build_model(self, config: ModelConfig, state_dict: dict[str, "Tensor"]) -> "TorchModel":
        """:class:`.qwen3_vl_torch.Qwen3VLTorch` over ``state_dict`` (transformers' names)."""
        from .qwen3_vl_torch import Qwen3VLTorch

        return Qwen3VLTorch(config, state_dict)
