"""The architecture-neutral model configuration, read from a checkpoint's ``config.json``.

Architectures are registered adapters (:data:`minireranker.export.arch.ARCHITECTURES`): each maps one
``model_type`` to a parser that produces the same :class:`ModelConfig`, so the rest of the code never
branches on a model's name. The validation here holds for every architecture.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class VisionConfig:
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

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise CheckpointError(
                f"config.json: vision hidden_size={self.hidden_size} / num_heads={self.num_heads} must be an "
                "integer head size divisible by 4 (2-D rotary over height and width)"
            )
        side = int(round(self.num_position_embeddings ** 0.5))
        if side * side != self.num_position_embeddings:
            raise CheckpointError(
                f"config.json: vision num_position_embeddings={self.num_position_embeddings} is not a square; it must "
                "be side*side of the position-embedding grid: fix vision_config"
            )
        bad = [i for i in self.deepstack_indexes if not 0 <= i < self.depth]
        if bad:
            raise CheckpointError(
                f"config.json: deepstack_visual_indexes {bad} are outside the vision blocks 0..{self.depth - 1}; "
                "fix vision_config"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


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


def config_field(d: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    """``d[key]`` of config.json's ``where`` section; without a default a missing key is a CheckpointError."""
    if key in d and d[key] is not None:
        return d[key]
    if default is ...:
        raise CheckpointError(f"config.json: {where} has no '{key}'")
    return default


def parse_model_config(raw: dict[str, Any]) -> ModelConfig:
    """Validate a ``config.json`` dict and return the architecture-neutral :class:`ModelConfig`."""
    # imported here: the adapters import this module's dataclasses
    from .arch import ARCHITECTURES

    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[model_type]
    for name in raw.get("architectures") or []:
        if name not in arch.hf_architectures:
            raise CheckpointError(
                f"config.json: architecture {name!r} is not supported for {model_type}; "
                f"expected one of {list(arch.hf_architectures)} (an embedding-only or generation checkpoint "
                "of another head cannot score yes/no)"
            )
    try:
        return arch.parse_config(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: malformed value ({exc})") from None
