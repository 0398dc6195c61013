"""Qwen2.5-VL (``model_type`` "qwen2_5_vl"): Qwen2-VL's adapter (:mod:`.qwen2_vl`) with its own tower.

* config.json: the text side is read exactly as Qwen2-VL's (``text_config`` or the top level, the same
  rotary forms). The vision_config names the width ``hidden_size``, the MLP ``intermediate_size``, the
  merger's output ``out_hidden_size``, and the window attention ``window_size`` (pixels) and
  ``fullatt_block_indexes`` (the blocks that attend over the whole image); ``tokens_per_second`` only
  spaces video frames and is not read.
* Weights, in ``Qwen2_5_VLForConditionalGeneration``'s state-dict order: Qwen2-VL's, except that the
  tower's norms are RMSNorms (weight only) and its MLP is ``mlp.{gate_proj,up_proj,down_proj}`` (with biases)::

      model.visual.patch_embed.proj.weight
      model.visual.blocks.{i}.{norm1,norm2}.weight, .attn.{qkv,proj}.*, .mlp.{gate,up,down}_proj.*
      model.visual.merger.ln_q.weight, model.visual.merger.{mlp.0,mlp.2}.*
      model.language_model.* and lm_head.weight as Qwen2-VL's

* Rope index: for images, the same as Qwen2-VL's (and Qwen3-VL's, ``runtime/template.py``
  document_positions). Qwen2.5-VL's temporal scaling (``tokens_per_second`` x ``second_per_grid_ts``)
  multiplies the t positions of video frames only; a still image's t stays the position of its first token.
* The torch modules are :mod:`.qwen2_5_vl_torch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...runtime.errors import CheckpointError
from ..config import ModelConfig, VisionConfig, config_field
from .qwen2_vl import Qwen2VL, check_vision_act, vision_geometry

if TYPE_CHECKING:
    from torch import Tensor

    from ..modeling import TorchModel
    from ..tiny import TinyPreset


class Qwen2_5_VL(Qwen2VL):
    """Qwen2.5-VL: Qwen2-VL with an RMSNorm / gated-SiLU tower that attends in windows."""

    model_type = "qwen2_5_vl"
    hf_architectures = ("Qwen2_5_VLForConditionalGeneration",)
    transformers_class = "Qwen2_5_VLForConditionalGeneration"
    tiny_preset = "qwen2_5_vl_tiny"
    text_model_type = "qwen2_5_vl_text"
    merger_width_field = "out_hidden_size"

    def vision_config(self, vc: dict[str, Any]) -> VisionConfig:
        """Qwen2.5-VL's vision_config (module docstring); transformers' defaults where a key is absent."""
        check_vision_act(vc, "silu")
        geometry = vision_geometry(vc)
        window = int(config_field(vc, "window_size", "vision_config", 112))
        factor = geometry["patch_size"] * geometry["spatial_merge_size"]
        if window < factor:
            raise CheckpointError(
                f"config.json: vision_config window_size={window} is smaller than one merged patch ({factor} "
                "pixels: patch_size * spatial_merge_size); transformers cannot window with it: restore the "
                "model's config.json")
        # transformers' default names blocks 7, 15, 23, 31 (of 32); those past a shallower tower never match
        default_full = tuple(i for i in (7, 15, 23, 31) if i < geometry["depth"])
        return VisionConfig(
            hidden_size=int(config_field(vc, "hidden_size", "vision_config")),
            intermediate_size=int(config_field(vc, "intermediate_size", "vision_config")),
            out_hidden_size=int(config_field(vc, "out_hidden_size", "vision_config")),
            mlp="silu_gated", norm="rms_norm", window_size=window,
            fullatt_block_indexes=tuple(int(i) for i in config_field(
                vc, "fullatt_block_indexes", "vision_config", default_full)),
            **geometry,
        )

    def tiny_vision_config(self, p: "TinyPreset", flat: bool) -> dict[str, Any]:
        """The vision_config of a tiny preset (``flat``: as the released files write it)."""
        return {
            "depth": p.vision_depth, "hidden_size": p.vision_hidden_size,
            "intermediate_size": p.vision_intermediate_size, "num_heads": p.vision_num_heads,
            "out_hidden_size": p.vision_out_hidden_size, "hidden_act": "silu",
            ("in_chans" if flat else "in_channels"): 3, "patch_size": p.patch_size,
            "spatial_merge_size": p.spatial_merge_size, "temporal_patch_size": p.temporal_patch_size,
            "window_size": p.window_size, "fullatt_block_indexes": list(p.fullatt_block_indexes),
            "tokens_per_second": 2,
            **({} if flat else {"model_type": "qwen2_5_vl_vision", "initializer_range": 0.02}),
        }

    def build_model(self, config: ModelConfig, state_dict: dict[str, "Tensor"]) -> "TorchModel":
        """:class:`.qwen2_5_vl_torch.Qwen2_5_VLTorch` over ``state_dict`` (transformers' names)."""
        from .qwen2_5_vl_torch import Qwen2_5_VLTorch

        return Qwen2_5_VLTorch(config, state_dict)
