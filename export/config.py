"""Model configuration of a Qwen3-VL checkpoint, read from its ``config.json``.

Architectures are registered adapters (:data:`ADAPTERS`): each maps one ``model_type`` to a parser that
produces the same :class:`ModelConfig`, so the rest of the code never branches on a model's name.
Accepted rotary forms: the released Qwen3-VL one (``rope_scaling`` + ``rope_theta`` in ``text_config``)
and transformers 5's ``rope_parameters``. MRoPE is always interleaved (as transformers computes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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


def _get(d: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key in d and d[key] is not None:
        return d[key]
    if default is ...:
        raise CheckpointError(f"config.json: {where} has no '{key}'")
    return default


def _text_rope(tc: dict[str, Any]) -> tuple[float, tuple[int, int, int]]:
    rope = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"config.json: text rope_type {rope_type!r} is not supported (only default MRoPE)")
    theta = rope.get("rope_theta", tc.get("rope_theta", 500000.0))
    section = tuple(int(x) for x in rope.get("mrope_section", (24, 20, 20)))
    if len(section) != 3:
        raise CheckpointError(f"config.json: mrope_section must have 3 entries (t, h, w), got {list(section)}")
    return float(theta), section  # type: ignore[return-value]


def _parse_qwen3_vl(raw: dict[str, Any]) -> ModelConfig:
    tc = _get(raw, "text_config", "the top level")
    vc = _get(raw, "vision_config", "the top level")
    num_heads = int(_get(tc, "num_attention_heads", "text_config"))
    hidden = int(_get(tc, "hidden_size", "text_config"))
    theta, section = _text_rope(tc)
    text = TextConfig(
        vocab_size=int(_get(tc, "vocab_size", "text_config")),
        hidden_size=hidden,
        intermediate_size=int(_get(tc, "intermediate_size", "text_config")),
        num_layers=int(_get(tc, "num_hidden_layers", "text_config")),
        num_heads=num_heads,
        num_kv_heads=int(_get(tc, "num_key_value_heads", "text_config", num_heads)),
        head_dim=int(_get(tc, "head_dim", "text_config", hidden // num_heads)),
        rms_norm_eps=float(_get(tc, "rms_norm_eps", "text_config", 1e-6)),
        rope_theta=theta,
        mrope_section=section,
    )
    for key, expected in (("hidden_act", "silu"), ("attention_bias", False)):
        if tc.get(key, expected) != expected:
            raise CheckpointError(f"config.json: text_config {key}={tc[key]!r} is not supported (need {expected!r})")
    if vc.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise CheckpointError(f"config.json: vision hidden_act={vc['hidden_act']!r} is not supported")
    vrope = vc.get("rope_parameters") or {}
    vision = VisionConfig(
        depth=int(_get(vc, "depth", "vision_config")),
        hidden_size=int(_get(vc, "hidden_size", "vision_config")),
        intermediate_size=int(_get(vc, "intermediate_size", "vision_config")),
        num_heads=int(_get(vc, "num_heads", "vision_config")),
        patch_size=int(_get(vc, "patch_size", "vision_config", 16)),
        temporal_patch_size=int(_get(vc, "temporal_patch_size", "vision_config", 2)),
        spatial_merge_size=int(_get(vc, "spatial_merge_size", "vision_config", 2)),
        out_hidden_size=int(_get(vc, "out_hidden_size", "vision_config")),
        num_position_embeddings=int(_get(vc, "num_position_embeddings", "vision_config")),
        deepstack_indexes=tuple(int(i) for i in _get(vc, "deepstack_visual_indexes", "vision_config", ())),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        in_channels=int(vc.get("in_channels", 3)),
    )
    return ModelConfig(
        model_type="qwen3_vl",
        text=text,
        vision=vision,
        image_token_id=int(_get(raw, "image_token_id", "the top level", 151655)),
        vision_start_token_id=int(_get(raw, "vision_start_token_id", "the top level", 151652)),
        vision_end_token_id=int(_get(raw, "vision_end_token_id", "the top level", 151653)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))),
    )


# model_type -> (accepted architectures, parser). Qwen2/2.5-VL register here when they are supported.
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], ModelConfig]]] = {
    "qwen3_vl": (("Qwen3VLForConditionalGeneration",), _parse_qwen3_vl),
}


def parse_model_config(raw: dict[str, Any]) -> ModelConfig:
    """Validate a ``config.json`` dict and return the architecture-neutral :class:`ModelConfig`."""
    model_type = raw.get("model_type")
    if model_type not in ADAPTERS:
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is not supported; supported: {sorted(ADAPTERS)}"
        )
    architectures, parse = ADAPTERS[model_type]
    for arch in raw.get("architectures") or []:
        if arch not in architectures:
            raise CheckpointError(
                f"config.json: architecture {arch!r} is not supported for {model_type}; "
                f"expected one of {list(architectures)} (an embedding-only or generation checkpoint "
                "of another head cannot score yes/no)"
            )
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: malformed value ({exc})") from None
