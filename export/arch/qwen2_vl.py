"""Qwen2-VL (``model_type`` "qwen2_vl"): the only place that knows its config.json and its weight names.

* config.json -> :class:`ModelConfig`, as transformers 5's ``Qwen2VLConfig`` reads it: the text fields in
  ``text_config`` (transformers 5) or at the top level (the released files, whose ``rope_scaling`` is
  ``{"type": "mrope", "mrope_section": [16, 24, 24]}`` beside a top-level ``rope_theta``); ``rope_scaling``
  wins over ``rope_parameters``; the head size is always hidden_size / num_attention_heads. The vision
  config names the tower's width ``embed_dim``, its MLP ``mlp_ratio`` x that, and the merger's output
  (the LM width) ``hidden_size``; the channels ``in_channels`` (the released files' ``in_chans``, which
  transformers 5 ignores, must agree with it).
* Weights, in ``Qwen2VLForConditionalGeneration``'s state-dict order (transformers 5 names; the released
  files store ``visual.*`` and ``model.*``, renamed on reading by ``checkpoint.current_weight_name``)::

      model.visual.patch_embed.proj.weight                          (a convolution without bias)
      model.visual.blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.*   (LayerNorms)
      model.visual.merger.{ln_q,mlp.0,mlp.2}.*
      model.language_model.embed_tokens.weight
      model.language_model.layers.{i}.{self_attn.{q,k,v}_proj.{weight,bias},self_attn.o_proj.weight,
                                       mlp.{gate,up,down}_proj.weight,input_layernorm,post_attention_layernorm}
      model.language_model.norm.weight, lm_head.weight (absent when tie_word_embeddings)

* Rope index: an image's tokens take (t, h, w) = (s, s + row, s + col) after the text before it, and the
  text after it starts at s + max(rows, cols), as Qwen3-VL's (``runtime/template.py`` document_positions).
* The torch modules are :mod:`.qwen2_vl_torch` (loaded only by :meth:`Qwen2VL.build_model`). Qwen2.5-VL's
  adapter (:mod:`.qwen2_5_vl`) subclasses this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...runtime.errors import CheckpointError
from ..config import ModelConfig, TextConfig, VisionConfig, config_field
from . import Architecture, Weight
from .common import EMBED, LM_HEAD, VISUAL, check_rope_type, layer_norm, linear, mrope_section, \
    patch_kernel, rms_norm, text_weights

if TYPE_CHECKING:
    from torch import Tensor

    from ..modeling import TorchModel
    from ..tiny import TinyPreset

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalization, Qwen2-VL's and Qwen2.5-VL's
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def text_section(raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The dict holding the text fields and its name in messages: ``text_config``, else the top level
    (transformers 5 reads the top level only when ``text_config`` is absent)."""
    tc = raw.get("text_config")
    if tc is None:
        return raw, "the top level"
    if not isinstance(tc, dict):
        raise CheckpointError("config.json: text_config must be an object; restore the model's config.json")
    return tc, "text_config"


def parse_text_config(tc: dict[str, Any], where: str) -> TextConfig:
    """Qwen2-VL's and Qwen2.5-VL's decoder: q/k/v biases, no q/k norm, MRoPE in sections."""
    num_heads = int(config_field(tc, "num_attention_heads", where))
    hidden = int(config_field(tc, "hidden_size", where))
    if hidden % num_heads or tc.get("head_dim", hidden // num_heads) != hidden // num_heads:
        raise CheckpointError(
            f"config.json: {where} hidden_size={hidden} / num_attention_heads={num_heads} must be the head size"
            f"{'' if tc.get('head_dim') is None else ' (head_dim=' + str(tc['head_dim']) + ' differs)'}: "
            "Qwen2-VL's attention always splits hidden_size evenly; fix the config"
        )
    rope = tc.get("rope_scaling") or tc.get("rope_parameters") or {}
    check_rope_type(rope, where)
    for key, expected in (("hidden_act", "silu"), ("use_sliding_window", False)):
        if tc.get(key, expected) != expected:
            raise CheckpointError(f"config.json: {where} {key}={tc[key]!r} is not supported (need {expected!r})")
    if any(kind != "full_attention" for kind in tc.get("layer_types") or ()):
        raise CheckpointError(f"config.json: {where} layer_types has sliding-window layers, which are not "
                              "supported; use the model's config with every layer \"full_attention\"")
    return TextConfig(
        vocab_size=int(config_field(tc, "vocab_size", where)),
        hidden_size=hidden,
        intermediate_size=int(config_field(tc, "intermediate_size", where)),
        num_layers=int(config_field(tc, "num_hidden_layers", where)),
        num_heads=num_heads,
        num_kv_heads=int(config_field(tc, "num_key_value_heads", where, num_heads)),
        head_dim=hidden // num_heads,
        rms_norm_eps=float(config_field(tc, "rms_norm_eps", where, 1e-5)),
        rope_theta=float(rope.get("rope_theta", tc.get("rope_theta", 1_000_000.0))),
        mrope_section=mrope_section(rope, (16, 24, 24)),
        max_position_embeddings=int(tc["max_position_embeddings"]) if tc.get("max_position_embeddings") else None,
        attention_bias=True, qk_norm=False, mrope_interleaved=False,
    )


def vision_geometry(vc: dict[str, Any]) -> dict[str, Any]:
    """The VisionConfig fields both towers read alike (patching, merging, heads, channels, rotary)."""
    vrope = vc.get("rope_parameters") or {}
    channels = int(vc.get("in_channels", 3))
    if int(vc.get("in_chans", channels)) != channels:
        raise CheckpointError(f"config.json: vision_config in_chans={vc['in_chans']} but transformers 5 builds the "
                              f"patch convolution from in_channels={channels}; set in_channels to the same value")
    return dict(
        depth=int(config_field(vc, "depth", "vision_config")),
        num_heads=int(config_field(vc, "num_heads", "vision_config")),
        patch_size=int(config_field(vc, "patch_size", "vision_config", 14)),
        temporal_patch_size=int(config_field(vc, "temporal_patch_size", "vision_config", 2)),
        spatial_merge_size=int(config_field(vc, "spatial_merge_size", "vision_config", 2)),
        in_channels=channels,
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        num_position_embeddings=0, deepstack_indexes=(),
    )


def check_vision_act(vc: dict[str, Any], expected: str) -> None:
    if vc.get("hidden_act", expected) != expected:
        raise CheckpointError(f"config.json: vision_config hidden_act={vc['hidden_act']!r} is not supported "
                              f"(this architecture's tower uses {expected!r})")


def vision_weights(v: VisionConfig) -> dict[str, Weight]:
    """Both towers' tensors: patch kernel, blocks (norms per ``v.norm``, MLP per ``v.mlp``), merger."""
    table: dict[str, Weight] = {}
    vh, merged = v.hidden_size, v.hidden_size * v.spatial_merge_size**2  # merge x merge patches -> one token
    patch_kernel(table, v)
    norm = rms_norm if v.norm == "rms_norm" else layer_norm
    mlp = ([("gate_proj", v.intermediate_size, vh), ("up_proj", v.intermediate_size, vh),
            ("down_proj", vh, v.intermediate_size)] if v.mlp == "silu_gated" else
           [("fc1", v.intermediate_size, vh), ("fc2", vh, v.intermediate_size)])
    for i in range(v.depth):
        block = f"{VISUAL}blocks.{i}"
        norm(table, f"{block}.norm1", vh)
        norm(table, f"{block}.norm2", vh)
        linear(table, f"{block}.attn.qkv", 3 * vh, vh, bias=True)
        linear(table, f"{block}.attn.proj", vh, vh, bias=True)
        for name, out_dim, in_dim in mlp:
            linear(table, f"{block}.mlp.{name}", out_dim, in_dim, bias=True)
    norm(table, VISUAL + "merger.ln_q", vh)
    linear(table, VISUAL + "merger.mlp.0", merged, merged, bias=True)
    linear(table, VISUAL + "merger.mlp.2", v.out_hidden_size, merged, bias=True)
    return table


def tiny_text_fields(p: "TinyPreset", token_ids: dict[str, int], vocab_size: int) -> dict[str, Any]:
    """The decoder's config.json fields of a tiny preset (without the rotary ones)."""
    if p.head_dim * p.num_attention_heads != p.hidden_size:
        raise CheckpointError(f"invalid TinyPreset for Qwen2-VL/2.5-VL: head_dim {p.head_dim} x heads "
                              f"{p.num_attention_heads} must equal hidden_size {p.hidden_size}")
    return {
        "vocab_size": vocab_size, "hidden_size": p.hidden_size, "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers, "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads, "hidden_act": "silu",
        "max_position_embeddings": p.max_position_embeddings, "rms_norm_eps": p.rms_norm_eps,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "use_sliding_window": False,
        "tie_word_embeddings": p.tie_word_embeddings,
        "bos_token_id": token_ids["<|endoftext|>"], "eos_token_id": token_ids["<|im_end|>"], "dtype": "float32",
    }


class Qwen2VL(Architecture):
    """Qwen2-VL: LayerNorm / QuickGELU tower without position table, q/k/v biases, MRoPE in sections."""

    model_type = "qwen2_vl"
    # jina-reranker-m0's class wraps this model and replaces its LM head (export/heads_registry.py)
    hf_architectures = ("Qwen2VLForConditionalGeneration", "JinaVLForRanking")
    transformers_class = "Qwen2VLForConditionalGeneration"
    tiny_preset = "qwen2_vl_tiny"
    tied = ((LM_HEAD, EMBED),)
    image_mean, image_std = CLIP_MEAN, CLIP_STD
    text_model_type = "qwen2_vl_text"       # text_config's model_type in transformers 5's layout
    merger_width_field = "hidden_size"      # the vision_config key of the merger's output width

    def parse_config(self, raw: dict[str, Any]) -> ModelConfig:
        """config.json -> :class:`ModelConfig` (module docstring: the accepted layouts)."""
        tc, where = text_section(raw)
        vc = config_field(raw, "vision_config", "the top level")
        text, vision = parse_text_config(tc, where), self.vision_config(vc)
        if vision.out_hidden_size != text.hidden_size:
            raise CheckpointError(
                f"config.json: the vision merger writes {vision.out_hidden_size} values per token, the decoder is "
                f"{text.hidden_size} wide ({where} hidden_size); fix vision_config "
                f"({self.merger_width_field} = the text hidden_size)")
        return ModelConfig(
            model_type=self.model_type, text=text, vision=vision,
            image_token_id=int(config_field(raw, "image_token_id", "the top level", 151655)),
            vision_start_token_id=int(config_field(raw, "vision_start_token_id", "the top level", 151652)),
            vision_end_token_id=int(config_field(raw, "vision_end_token_id", "the top level", 151653)),
            # transformers 5 ties when either the top level or (pre-v5 files) text_config says so
            tie_word_embeddings=bool(raw.get("tie_word_embeddings")) or bool(tc.get("tie_word_embeddings")),
        )

    def vision_config(self, vc: dict[str, Any]) -> VisionConfig:
        """Qwen2-VL's vision_config: width ``embed_dim``, MLP ``mlp_ratio`` x width, merger out ``hidden_size``."""
        check_vision_act(vc, "quick_gelu")
        width = int(config_field(vc, "embed_dim", "vision_config"))
        return VisionConfig(
            hidden_size=width,
            intermediate_size=int(width * config_field(vc, "mlp_ratio", "vision_config", 4)),
            out_hidden_size=int(config_field(vc, "hidden_size", "vision_config")),
            mlp="quick_gelu", norm="layer_norm", **vision_geometry(vc),
        )

    def weights(self, config: ModelConfig) -> dict[str, Weight]:
        """Name -> :class:`Weight` of every tensor, in transformers' state-dict order (module docstring)."""
        return {**vision_weights(config.vision), **text_weights(config.text, config.tie_word_embeddings)}

    def tiny_vision_config(self, p: "TinyPreset", flat: bool) -> dict[str, Any]:
        """The vision_config of a tiny preset (``flat``: as the released files write it)."""
        if p.vision_intermediate_size % p.vision_hidden_size:
            raise CheckpointError(f"invalid TinyPreset for Qwen2-VL: vision_intermediate_size "
                                  f"{p.vision_intermediate_size} must be a multiple of vision_hidden_size "
                                  f"{p.vision_hidden_size} (config.json stores mlp_ratio, an integer)")
        return {
            "depth": p.vision_depth, "embed_dim": p.vision_hidden_size, "hidden_size": p.vision_out_hidden_size,
            "mlp_ratio": p.vision_intermediate_size // p.vision_hidden_size, "num_heads": p.vision_num_heads,
            "hidden_act": "quick_gelu", ("in_chans" if flat else "in_channels"): 3, "patch_size": p.patch_size,
            "spatial_merge_size": p.spatial_merge_size, "temporal_patch_size": p.temporal_patch_size,
            **({} if flat else {"model_type": "qwen2_vl_vision", "initializer_range": 0.02}),
        }

    def tiny_config(self, preset: "TinyPreset", token_ids: dict[str, int], vocab_size: int) -> dict[str, Any]:
        """A config.json for a tiny preset: rope_style "rope_scaling" writes the released flat layout
        (text fields at the top level, ``rope_scaling`` of type "mrope"), "rope_parameters" transformers 5's."""
        p, flat = preset, preset.rope_style == "rope_scaling"
        text = tiny_text_fields(p, token_ids, vocab_size)
        top = {
            "architectures": [self.hf_architectures[0]], "model_type": self.model_type,
            "image_token_id": token_ids["<|image_pad|>"], "video_token_id": token_ids["<|video_pad|>"],
            "vision_start_token_id": token_ids["<|vision_start|>"],
            "vision_end_token_id": token_ids["<|vision_end|>"],
            "tie_word_embeddings": p.tie_word_embeddings, "dtype": "float32",
            "vision_config": self.tiny_vision_config(p, flat),
        }
        if flat:
            rope = {"rope_scaling": {"type": "mrope", "mrope_section": list(p.mrope_section)},
                    "rope_theta": p.rope_theta}
            return {**text, **rope, **top}
        rope = {"rope_parameters": {"rope_type": "default", "rope_theta": p.rope_theta,
                                    "mrope_section": list(p.mrope_section)}}
        return {**top, "text_config": {"model_type": self.text_model_type, **text, **rope}}

    def build_model(self, config: ModelConfig, state_dict: dict[str, "Tensor"]) -> "TorchModel":
        """:class:`.qwen2_vl_torch.Qwen2VLTorch` over ``state_dict`` (transformers' names)."""
        from .qwen2_vl_torch import Qwen2VLTorch

        return Qwen2VLTorch(config, state_dict)
