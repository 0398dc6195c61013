"""The architecture-neutral model configuration, read from a checkpoint's ``config.json``.

Architectures are registered adapters (:data:`minireranker.export.arch.ARCHITECTURES`): each maps one
``model_type`` to a parser that produces the same :class:`ModelConfig`, so the rest of the code never
branches on a model's name. The validation here holds for every architecture.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..runtime.errors import CheckpointError


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int | None = None  # the model's positions (bundle.json: the document limit)
    # The defaults are Qwen3-VL's; Qwen2-VL and Qwen2.5-VL set all three the other way.
    attention_bias: bool = False      # q/k/v projections carry a bias (o_proj never does)
    qk_norm: bool = True              # RMS norms over each head of q and k before the rotary
    mrope_interleaved: bool = True    # MRoPE frequency j from axis j mod 3; False: in sections (t, then h, then w)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"config.json: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if sum(self.mrope_section) != self.head_dim // 2 or self.head_dim % 2:
            raise CheckpointError(
                f"config.json: mrope_section {list(self.mrope_section)} sums to {sum(self.mrope_section)}, "
                f"but head_dim={self.head_dim} needs head_dim/2 = {self.head_dim // 2}; fix text_config"
            )


VISION_MLPS = ("gelu_tanh", "quick_gelu", "silu_gated")
VISION_NORMS = ("layer_norm", "rms_norm")


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower. The defaults of the trailing fields are Qwen3-VL's.

    ``mlp``: "gelu_tanh" (fc1, tanh GELU, fc2: Qwen3-VL), "quick_gelu" (fc1, x*sigmoid(1.702x), fc2: Qwen2-VL)
    or "silu_gated" (down(silu(gate) * up), every projection with a bias: Qwen2.5-VL). ``norm``: the
    blocks' and the merger's norm. ``num_position_embeddings`` 0: no learned position table (the rotary is
    the only position signal). ``window_size`` (pixels) > 0: the blocks not in ``fullatt_block_indexes``
    attend only within windows of ``window_size`` pixels square (Qwen2.5-VL).
    """

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_indexes: tuple[int, ...]
    rope_theta: float
    in_channels: int = 3
    mlp: str = "gelu_tanh"
    norm: str = "layer_norm"
    window_size: int = 0
    fullatt_block_indexes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise CheckpointError(
                f"config.json: vision hidden_size={self.hidden_size} / num_heads={self.num_heads} must be an "
                "integer head size divisible by 4 (2-D rotary over height and width)"
            )
        side = self.position_side
        if self.num_position_embeddings < 0 or side * side != self.num_position_embeddings:
            raise CheckpointError(
                f"config.json: vision num_position_embeddings={self.num_position_embeddings} is not a square; it must "
                "be side*side of the position-embedding grid (or 0: no learned table): fix vision_config"
            )
        for name, indexes in (("deepstack_visual_indexes", self.deepstack_indexes),
                              ("fullatt_block_indexes", self.fullatt_block_indexes)):
            bad = [i for i in indexes if not 0 <= i < self.depth]
            if bad:
                raise CheckpointError(
                    f"config.json: {name} {bad} are outside the vision blocks 0..{self.depth - 1}; fix vision_config"
                )
        self._check_kinds_and_windows()

    def _check_kinds_and_windows(self) -> None:
        if self.mlp not in VISION_MLPS or self.norm not in VISION_NORMS:
            raise CheckpointError(f"vision mlp {self.mlp!r} / norm {self.norm!r} unknown; the adapters write one of "
                                  f"{VISION_MLPS} / {VISION_NORMS} (export/arch/)")
        factor = self.patch_size * self.spatial_merge_size
        if self.window_size < 0 or 0 < self.window_size < factor:
            raise CheckpointError(
                f"config.json: vision window_size={self.window_size} is smaller than one merged patch "
                f"(patch_size*spatial_merge_size = {factor} pixels); a window must hold at least one: fix vision_config"
            )
        if self.fullatt_block_indexes and not self.window_size:
            raise CheckpointError("config.json: vision fullatt_block_indexes are set but window_size is 0; "
                                  "full-attention blocks only mean something beside windowed ones: fix vision_config")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_side(self) -> int:
        """Side of the learned position-embedding grid (0: the model has none)."""
        return math.isqrt(max(self.num_position_embeddings, 0))

    @property
    def window_tokens(self) -> int:
        """Side of an attention window in merged tokens, as transformers counts it (0: no windows)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise CheckpointError(
                f"config.json: vision out_hidden_size={self.vision.out_hidden_size} differs from the text "
                f"hidden_size={self.text.hidden_size}; the merger's output must match the decoder width: "
                "fix vision_config"
            )
        if len(self.vision.deepstack_indexes) > self.text.num_layers:
            raise CheckpointError("config.json: more DeepStack features than decoder layers")

    def first_layers(self, n: int) -> "ModelConfig":
        """This config with only decoder layers 0..n-1 (at least those DeepStack adds into): what a spec that
        exits at layer n-1 reads, so a build loads no weight past its exit layer."""
        n = min(self.text.num_layers, max(n, len(self.vision.deepstack_indexes)))
        return dataclasses.replace(self, text=dataclasses.replace(self.text, num_layers=n))


def config_field(d: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    """``d[key]`` of config.json's ``where`` section; without a default a missing key is a CheckpointError."""
    if key in d and d[key] is not None:
        return d[key]
    if default is ...:
        raise CheckpointError(f"config.json: {where} has no '{key}'")
    return default


def parse_model_config(raw: dict[str, Any], head_declared: bool = False) -> ModelConfig:
    """Validate a ``config.json`` dict and return the architecture-neutral :class:`ModelConfig`.

    A class ("architectures") the adapter does not list may wrap the model with a head of its own, so it
    is refused unless the checkpoint's minireranker.json declares the head (``head_declared``).
    """
    # imported here: the adapters import this module's dataclasses
    from .arch import ARCHITECTURES

    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[model_type]
    for name in raw.get("architectures") or []:
        if name not in arch.hf_architectures and not head_declared:
            raise CheckpointError(
                f"config.json: architecture {name!r} is not one known for {model_type} "
                f"({list(arch.hf_architectures)}), so its score head cannot be determined; if it keeps the LM "
                "head, put {\"head\": \"yes_no\"} in minireranker.json; if a score head replaced it, put "
                "{\"head\": {\"kind\": \"classifier\", \"linear1\": \"<tensor prefix>\", \"linear2\": "
                "\"<tensor prefix>\"}} there (and its \"template\"); docs/architectures.md lists the forms"
            )
    try:
        return arch.parse_config(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: malformed value ({exc})") from None
