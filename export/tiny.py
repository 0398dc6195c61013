"""Tiny checkpoints built in code, in Hugging Face layout, for tests and demos (Qwen3-VL, Qwen2-VL, Qwen2.5-VL).

A checkpoint directory written by :func:`write_tiny_checkpoint` holds

```
config.json                     the architecture's config (its adapter writes it: rope in "rope_scaling"
                                or "rope_parameters" form, see TinyPreset.rope_style; for Qwen2-VL and
                                Qwen2.5-VL "rope_scaling" is the released flat layout, text fields at the top)
model.safetensors               float32 weights, exactly the names and shapes of transformers' (the adapter's table)
  or model-0000i-of-0000n.safetensors + model.safetensors.index.json   (TinyPreset.shards > 1)
tokenizer.json, tokenizer_config.json, special_tokens_map.json      (export/tokenizer_factory.py)
preprocessor_config.json        Qwen2-VL image processor settings: the preset's patch size, the architecture's
                                mean/std (0.5 for Qwen3-VL, CLIP's for Qwen2-VL/2.5-VL), a small pixel budget
minireranker.json               only when a spec is given, written as is
```

Weights are random but seeded. They are scaled by fan-in rather than the usual std 0.02 so that hidden
states and logits stay O(1) and the yes/no logit difference visibly depends on the input; norm weights
are 1 + noise and biases are small noise so that no test passes by symmetry.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import CheckpointError
from .arch import ARCHITECTURES, architecture_for
from .config import parse_model_config
from .tokenizer_factory import QWEN_SPECIAL_TOKENS, build_tokenizer, write_tokenizer

ROPE_STYLES = ("rope_scaling", "rope_parameters")
VOCAB_MULTIPLE = 64  # the embedding is padded to a multiple of this, as Qwen pads its vocabulary
DEFAULT_PRESET = "tiny"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class TinyPreset:
    """Shapes of one tiny checkpoint (text decoder, vision tower, file layout) and its architecture."""

    # text decoder
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    mrope_section: tuple[int, ...]
    # vision tower
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_heads: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    # defaults
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 4096
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    rope_style: str = "rope_scaling"
    shards: int = 1
    # preprocessor pixel budget (size.shortest_edge / size.longest_edge): 32*32..128*128 keeps tiny images tiny
    min_pixels: int = 32 * 32
    max_pixels: int = 128 * 128
    # embedding rows; None: the tokenizer's size padded to VOCAB_MULTIPLE (real shapes, e.g. 151936, for timing)
    vocab_size: int | None = None
    # the registered architecture (export/arch/) that writes config.json and names the weights
    model_type: str = "qwen3_vl"
    # window attention (Qwen2.5-VL): window side in pixels (0: none) and the blocks that attend over everything
    window_size: int = 0
    fullatt_block_indexes: tuple[int, ...] = ()
    # a published reranker's form: a classifier head (jina-reranker-m0's score.0 -> ReLU -> score.2, config.json
    # class JinaVLForRanking), answer words the tokenizer must keep whole (MonoQwen2-VL's True/False: trained
    # at line start into the corpus), and the format written as minireranker.json {"template": ...}
    score_head: bool = False
    answer_words: tuple[str, ...] = ()
    template: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mrope_section", tuple(self.mrope_section))
        object.__setattr__(self, "deepstack_visual_indexes", tuple(self.deepstack_visual_indexes))
        object.__setattr__(self, "fullatt_block_indexes", tuple(self.fullatt_block_indexes))
        object.__setattr__(self, "answer_words", tuple(self.answer_words))
        problems = [text for bad, text in self._checks() if bad]
        if problems:
            raise CheckpointError("invalid TinyPreset: " + "; ".join(problems))

    def _checks(self) -> list[tuple[bool, str]]:
        sizes = {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}
        may_be_zero = {"num_position_embeddings", "window_size"}  # 0: no position table / no windows
        vision_head_dim = self.vision_hidden_size // max(self.vision_num_heads, 1)
        side = math.isqrt(self.num_position_embeddings) if self.num_position_embeddings > 0 else 0
        deepstack, full = self.deepstack_visual_indexes, self.fullatt_block_indexes
        return [
            *[(value < (0 if name in may_be_zero else 1), f"{name} must be >= {int(name not in may_be_zero)}, "
               f"got {value}") for name, value in sizes.items()],
            (self.head_dim % 2 != 0, f"head_dim {self.head_dim} must be even"),
            (len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2,
             f"mrope_section {self.mrope_section} must be 3 numbers summing to head_dim/2"),
            (self.num_attention_heads % max(self.num_key_value_heads, 1) != 0,
             "num_attention_heads must be a multiple of num_key_value_heads"),
            (self.vision_hidden_size % max(self.vision_num_heads, 1) != 0 or vision_head_dim % 4 != 0,
             "vision_hidden_size / vision_num_heads must be an integer divisible by 4 (2-D axial rope)"),
            (side * side != self.num_position_embeddings,
             f"num_position_embeddings {self.num_position_embeddings} must be a perfect square"),
            (list(deepstack) != sorted(set(deepstack)) or any(not 0 <= i < self.vision_depth for i in deepstack),
             f"deepstack_visual_indexes {deepstack} must be increasing vision block indexes"),
            (len(deepstack) > self.num_hidden_layers, "more deepstack features than text layers"),
            (list(full) != sorted(set(full)) or any(not 0 <= i < self.vision_depth for i in full),
             f"fullatt_block_indexes {full} must be increasing vision block indexes"),
            (self.rope_style not in ROPE_STYLES, f"rope_style must be one of {ROPE_STYLES}"),
            (self.max_pixels < self.min_pixels,
             f"max_pixels {self.max_pixels} must be >= min_pixels {self.min_pixels}"),
            (self.model_type not in ARCHITECTURES,
             f"model_type {self.model_type!r} is not a registered architecture {sorted(ARCHITECTURES)}"),
        ]

    @property
    def vision_out_hidden_size(self) -> int:
        """The vision merger writes straight into the text embedding space."""
        return self.hidden_size


PRESETS: dict[str, TinyPreset] = {
    "tiny": TinyPreset(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mrope_section=(4, 2, 2),
        vision_depth=3, vision_hidden_size=32, vision_intermediate_size=64, vision_num_heads=2,
        num_position_embeddings=16, deepstack_visual_indexes=(0, 1),
    ),
    "gqa3_odd_head": TinyPreset(
        hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=12, mrope_section=(2, 2, 2),
        vision_depth=2, vision_hidden_size=32, vision_intermediate_size=96, vision_num_heads=2,
        num_position_embeddings=36, deepstack_visual_indexes=(),
        tie_word_embeddings=True, rope_style="rope_parameters", shards=2,
    ),
    "mha_deep_stack3": TinyPreset(
        hidden_size=80, intermediate_size=192, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=4, head_dim=20, mrope_section=(4, 3, 3),
        vision_depth=4, vision_hidden_size=48, vision_intermediate_size=96, vision_num_heads=2,
        num_position_embeddings=64, deepstack_visual_indexes=(0, 1, 2), shards=3,
    ),
    "gqa4": TinyPreset(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8, mrope_section=(2, 1, 1),
        vision_depth=2, vision_hidden_size=32, vision_intermediate_size=64, vision_num_heads=4,
        num_position_embeddings=16, deepstack_visual_indexes=(1,), rope_style="rope_parameters",
    ),
    # Qwen2-VL: GQA 3:1, head dim 12, tied, the released flat config layout, no position table
    "qwen2_vl_tiny": TinyPreset(
        hidden_size=72, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=12, mrope_section=(2, 2, 2),
        vision_depth=2, vision_hidden_size=32, vision_intermediate_size=64, vision_num_heads=2,
        num_position_embeddings=0, deepstack_visual_indexes=(), patch_size=14, tie_word_embeddings=True,
        rope_style="rope_scaling", rope_theta=1_000_000.0, model_type="qwen2_vl",
    ),
    # Qwen2.5-VL: GQA 3:1, head dim 20, untied, transformers 5's layout, sharded; windows of 56 pixels (2x2
    # merged tokens) cut a 112x140 image (the 128x100 test photo) into 2x3 windows; block 1 attends fully
    # jina-reranker-m0's form on qwen2_vl_tiny's shapes: JinaVLForRanking, the score MLP, its format by default
    "jina_m0_tiny": TinyPreset(
        hidden_size=72, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=12, mrope_section=(2, 2, 2),
        vision_depth=2, vision_hidden_size=32, vision_intermediate_size=64, vision_num_heads=2,
        num_position_embeddings=0, deepstack_visual_indexes=(), patch_size=14, tie_word_embeddings=True,
        rope_style="rope_scaling", rope_theta=1_000_000.0, model_type="qwen2_vl", score_head=True,
    ),
    # MonoQwen2-VL's form: Qwen2-VL, True/False answers, its format named in minireranker.json (a merged LoRA
    # adapter's checkpoint is a plain Qwen2VLForConditionalGeneration, so only the spec can say it)
    "monoqwen2_vl_tiny": TinyPreset(
        hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, head_dim=12, mrope_section=(2, 2, 2),
        vision_depth=2, vision_hidden_size=32, vision_intermediate_size=64, vision_num_heads=2,
        num_position_embeddings=0, deepstack_visual_indexes=(), patch_size=14,
        rope_style="rope_parameters", rope_theta=1_000_000.0, model_type="qwen2_vl",
        answer_words=("True", "False"), template="monoqwen2-vl",
    ),
    "qwen2_5_vl_tiny": TinyPreset(
        hidden_size=60, intermediate_size=128, num_hidden_layers=4, num_attention_heads=3,
        num_key_value_heads=1, head_dim=20, mrope_section=(4, 3, 3),
        vision_depth=3, vision_hidden_size=40, vision_intermediate_size=72, vision_num_heads=2,
        num_position_embeddings=0, deepstack_visual_indexes=(), patch_size=14, rope_style="rope_parameters",
        rope_theta=1_000_000.0, shards=2, window_size=56, fullatt_block_indexes=(1,), model_type="qwen2_5_vl",
    ),
}


def resolve_preset(preset: str | TinyPreset) -> TinyPreset:
    """A preset object from its name in PRESETS (or the object itself)."""
    if isinstance(preset, TinyPreset):
        return preset
    if preset not in PRESETS:
        raise CheckpointError(f"unknown tiny preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def preset_names(model_type: str | None = None) -> list[str]:
    """The names in PRESETS, sorted; only those of one architecture when ``model_type`` is given."""
    return sorted(name for name, p in PRESETS.items() if model_type is None or p.model_type == model_type)


def padded_vocab_size(token_count: int) -> int:
    """Embedding rows for `token_count` tokens, rounded up to VOCAB_MULTIPLE."""
    return -(-token_count // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


# ---------------------------------------------------------------------------------------------------
# weights: names, shapes and init kinds come from the architecture's adapter (export/arch/)
# ---------------------------------------------------------------------------------------------------
# token ids change no shape: any distinct ids do when only the tensor table is wanted
_SHAPE_ONLY_IDS = {token: i for i, token in enumerate(QWEN_SPECIAL_TOKENS)}


def parameter_specs(preset: str | TinyPreset, vocab_size: int) -> dict[str, tuple[tuple[int, ...], tuple]]:
    """Name -> (shape, init kind) of every tensor in the file, in transformers' state-dict order."""
    p = resolve_preset(preset)
    config = parse_model_config(build_config(p, _SHAPE_ONLY_IDS, vocab_size))
    weights = architecture_for(p.model_type).weights(config)
    specs = {name: (w.shape, w.init) for name, w in weights.items()}
    if p.score_head:  # after the model's tensors, as a ranking class's state dict has them
        d = p.hidden_size
        specs.update({"score.0.weight": ((d, d), ("matrix", d)), "score.0.bias": ((d,), ("bias",)),
                      "score.2.weight": ((1, d), ("matrix", d)), "score.2.bias": ((1,), ("bias",))})
    return specs


def _draw(rng: np.random.Generator, shape: tuple[int, ...], kind: tuple) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    if kind[0] == "matrix":
        return noise / np.float32(math.sqrt(kind[1]))
    if kind[0] == "embed":
        return noise * np.float32(kind[1])
    if kind[0] == "norm":
        return 1.0 + np.float32(0.1) * noise
    return np.float32(0.02) * noise  # bias


def build_preset_state_dict(preset: str | TinyPreset = DEFAULT_PRESET, seed: int = DEFAULT_SEED,
                            vocab_size: int | None = None) -> dict:
    """Seeded float32 torch tensors for every weight of the checkpoint (no lm_head when tied)."""
    import torch

    vocab_size = vocab_size if vocab_size is not None else padded_vocab_size(build_tokenizer().get_vocab_size())
    rng = np.random.default_rng(seed)
    return {name: torch.from_numpy(_draw(rng, shape, kind))
            for name, (shape, kind) in parameter_specs(preset, vocab_size).items()}


# ---------------------------------------------------------------------------------------------------
# config files
# ---------------------------------------------------------------------------------------------------


def build_config(preset: str | TinyPreset, token_ids: dict[str, int], vocab_size: int) -> dict:
    """The `config.json` dict (written by the preset's architecture); `token_ids` maps Qwen's special token
    strings to ids."""
    p = resolve_preset(preset)
    config = architecture_for(p.model_type).tiny_config(p, token_ids, vocab_size)
    if p.score_head:
        config["architectures"] = ["JinaVLForRanking"]  # export/heads_registry.py: its format and head
    return config


def build_preprocessor_config(preset: str | TinyPreset) -> dict:
    """The `preprocessor_config.json` dict (Qwen2-VL image processor with the architecture's mean/std, small
    pixel budget)."""
    p = resolve_preset(preset)
    arch = architecture_for(p.model_type)
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": p.patch_size,
        "temporal_patch_size": p.temporal_patch_size, "merge_size": p.spatial_merge_size,
        "image_mean": list(arch.image_mean), "image_std": list(arch.image_std),
        "size": {"shortest_edge": p.min_pixels, "longest_edge": p.max_pixels},
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "resample": 3,
    }


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------


def _shard_of_each(names: list[str], sizes: list[int], shards: int) -> list[int]:
    """Contiguous split by bytes: a tensor goes to the shard its first byte falls in."""
    total, before, index = sum(sizes), 0, []
    for size in sizes:
        index.append(min(shards - 1, before * shards // total))
        before += size
    if len(set(index)) != shards:
        raise CheckpointError(f"cannot split {len(names)} tensors into {shards} non-empty shards; use fewer")
    return index


def write_safetensors(directory: Path, state_dict: dict, shards: int) -> list[Path]:
    """Write `state_dict` as one file or as `shards` files plus the index; returns the weight files."""
    from safetensors.torch import save_file

    if shards == 1:
        path = directory / "model.safetensors"
        save_file(state_dict, str(path), metadata={"format": "pt"})
        return [path]
    names = list(state_dict)
    sizes = [state_dict[n].numel() * state_dict[n].element_size() for n in names]
    owner = _shard_of_each(names, sizes, shards)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for i, file_name in enumerate(files):
        part = {n: state_dict[n] for n, o in zip(names, owner) if o == i}
        save_file(part, str(directory / file_name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(sizes)},
             "weight_map": {n: files[o] for n, o in sorted(zip(names, owner))}}
    _write_json(directory / "model.safetensors.index.json", index)
    return [directory / f for f in files]


def write_tiny_checkpoint(directory: str | Path, preset: str | TinyPreset = DEFAULT_PRESET,
                          seed: int = DEFAULT_SEED, spec: dict | None = None) -> Path:
    """Write a complete Hugging Face-layout checkpoint of the preset's architecture into `directory`.

    The same (preset, seed) always gives byte-identical files; `spec`, if given, is written as
    `minireranker.json` unchanged.
    """
    p = resolve_preset(preset)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(directory, build_tokenizer(_answer_lines(p.answer_words)))
    vocab_size = p.vocab_size or padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True))
    if vocab_size < tokenizer.get_vocab_size(with_added_tokens=True):
        raise CheckpointError(f"vocab_size {vocab_size} is smaller than the tokenizer's "
                              f"{tokenizer.get_vocab_size(with_added_tokens=True)} tokens; raise it or leave it None")
    token_ids = {token: tokenizer.token_to_id(token) for token in QWEN_SPECIAL_TOKENS}
    _write_json(directory / "config.json", build_config(p, token_ids, vocab_size))
    _write_json(directory / "preprocessor_config.json", build_preprocessor_config(p))
    write_safetensors(directory, build_preset_state_dict(p, seed, vocab_size), p.shards)
    if spec is None and p.template is not None:
        spec = {"template": p.template}
    if spec is not None:
        _write_json(directory / "minireranker.json", spec)
    return directory


def _answer_lines(words: tuple[str, ...]) -> tuple[str, ...]:
    """Corpus lines that make each answer word one token where the model emits it (at line start)."""
    if not words:
        return ()
    return tuple(f"{a}\n{b}" for a, b in zip(words * 20, (words[1:] + words[:1]) * 20))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def preset_listing() -> str:
    """One line per preset: its name and its architecture (what ``--list`` prints)."""
    width = max(map(len, PRESETS))
    return "\n".join(f"{name:<{width}}  {PRESETS[name].model_type}" for name in preset_names())


def main(argv: list[str] | None = None) -> int:
    """`python -m minireranker.export.tiny OUT_DIR [--preset NAME] [--seed N] [--spec FILE]` or `--list`."""
    parser = argparse.ArgumentParser(prog="python -m minireranker.export.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?", help="directory to write the checkpoint into")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weight seed")
    parser.add_argument("--spec", type=Path, help="JSON file copied into the checkpoint as minireranker.json")
    parser.add_argument("--list", action="store_true", help="print the preset names and their architectures")
    args = parser.parse_args(argv)
    if args.list:
        print(preset_listing())
        return 0
    if args.out_dir is None:
        parser.error("the output directory is required (or pass --list)")
    spec = json.loads(args.spec.read_text(encoding="utf-8")) if args.spec else None
    path = write_tiny_checkpoint(args.out_dir, args.preset, args.seed, spec)
    print(f"wrote tiny {resolve_preset(args.preset).model_type} checkpoint ({args.preset}, seed {args.seed}) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
