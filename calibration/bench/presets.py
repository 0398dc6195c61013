"""What ``minireranker bench`` measures: model presets, the run's settings and the drawn corpus.

Weights are random (timing does not depend on them); each preset is a Hugging Face-layout checkpoint
written by :func:`minireranker.export.tiny.write_tiny_checkpoint`. Bench presets live here, not in
``tiny.PRESETS``, because the test suite builds every entry of that dict.

=======  ======================================================  ========================  ==============
preset   text decoder (L, D, heads/KV, head_dim, MLP)             vision tower              page -> tokens
=======  ======================================================  ========================  ==============
tiny     4, 64, 4/2, 16, 128; DeepStack into 0-1                  3 x 32, MLP 64            96x128 -> 12
tiny-    4, 60, 3/1, 20, 128; Qwen2.5-VL (tiny.PRESETS            3 x 40, windows of 56 px  96x128 -> 20
qwen2.5-vl  "qwen2_5_vl_tiny")
small    28, 128, 4/2, 32, 384; DeepStack into 0-2; tied          6 x 64 (2 heads), MLP 256 1240x1754 -> 962
wide     28, 512, 8/4, 64, 1536; DeepStack into 0-2; tied         as small                  1240x1754 -> 962
2b       28, 2048, 16/8, 128, 6144; DeepStack into 0-2; tied;     24 x 1024 (16 heads),     1240x1754 -> 962
         vocab 151936 (Qwen3-VL-2B's shapes)                      MLP 4096
qwen2-   28, 1536, 12/2, 128, 8960; q/k/v biases; tied; vocab     32 x 1280 (16 heads),     1240x1754 -> 986
vl-2b    151936 (Qwen2-VL-2B's shapes)                            MLP 5120, patch 14
qwen2.5- 36, 2048, 16/2, 128, 11008; q/k/v biases; tied; vocab    32 x 1280 (16 heads),     1240x1754 -> 986
vl-3b    151936 (Qwen2.5-VL-3B's shapes)                          gated MLP 3420, windows
                                                                  of 112 px, full attention
                                                                  in 7, 15, 23, 31
=======  ======================================================  ========================  ==============

The Qwen2 families' pages get the same budget in merged tokens (about 1,000: 784,000 pixels at patch 14,
merge 2), so their timings compare with the Qwen3-VL presets'.

A "page" is a drawn A4 document at 150 dpi (title, lines of words, a table box); with the 1024x1024 pixel
budget, patch 16 and 2x2 merge it becomes a 26x37 grid of merged tokens (962 visual tokens). Queries are
5 to 20 words from QUERY_WORDS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...runtime.errors import MiniRerankerError, SpecError
from ...runtime.spec import RerankSpec
from ...export.tiny import PRESETS, TinyPreset

SYSTEMS = ("dense_transformers", "dense_transformers_batched", "dense_onnx", "prefix_reuse", "minireranker")
DENSE_SYSTEMS = ("dense_transformers", "dense_transformers_batched", "dense_onnx")  # the baselines of "best dense"
PAGE_PIXELS = 1024 * 1024  # the pixel budget that gives ~1,000 visual tokens at patch 16, merge 2

WORDS = (
    "annual report revenue growth market europe asia quarterly results profit margin table figure chart "
    "invoice total amount due date customer account balance policy insurance claim contract clause party "
    "agreement section schedule payment terms research paper abstract method results dataset accuracy model "
    "training evaluation baseline experiment patient study clinical trial dose effect outcome safety energy "
    "consumption carbon emissions target plan budget forecast cost sales region product launch manual "
    "installation safety warning device battery charging temperature network server latency memory storage"
).split()


# Query words: ones the tiny tokenizer keeps whole (one token each, as Qwen's 151k vocabulary keeps common
# English words), so that query segments have Qwen-like lengths: 26 template tokens + one per word.
QUERY_WORDS = (
    "after answer back bank boat bus capital cat city cup day document eggs eight every find first five flour "
    "four fox give good have image lake legs line little live make many name near nine number other page "
    "percent photo picture provided quarter query question quick read red relevant report retrieve said search "
    "seven shows six small sound spider sun take text thing third three time train twelve twenty two warm wood year"
).split()


class BenchError(MiniRerankerError):
    """The benchmark cannot run as configured, or one of its systems failed."""


@dataclass(frozen=True)
class BenchPreset:
    """A model shape, the page size of its corpus and its default miniReranker spec."""

    model: TinyPreset
    page_size: tuple[int, int]  # (width, height) of the drawn pages, before the preprocessor resizes them
    spec: RerankSpec            # system (d) unless other specs are given besides it
    description: str


_SMALL_MODEL = TinyPreset(
    hidden_size=128, intermediate_size=384, num_hidden_layers=28, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, mrope_section=(6, 5, 5), vision_depth=6, vision_hidden_size=64, vision_intermediate_size=256,
    vision_num_heads=2, num_position_embeddings=2304, deepstack_visual_indexes=(1, 3, 4), tie_word_embeddings=True,
    min_pixels=256 * 256, max_pixels=PAGE_PIXELS,
)
# `small` four times wider (hidden 512, 8/4 heads of 64, MLP 1536): large enough that a GEMM of one band
# batch runs near this CPU's GEMM rate, so the rerank's distance to its compute floor is not per-operator
# overhead (issue 12). The vision tower is small's.
_WIDE_MODEL = TinyPreset(
    hidden_size=512, intermediate_size=1536, num_hidden_layers=28, num_attention_heads=8, num_key_value_heads=4,
    head_dim=64, mrope_section=(12, 10, 10), vision_depth=6, vision_hidden_size=64, vision_intermediate_size=256,
    vision_num_heads=2, num_position_embeddings=2304, deepstack_visual_indexes=(1, 3, 4), tie_word_embeddings=True,
    min_pixels=256 * 256, max_pixels=PAGE_PIXELS,
)
_2B_MODEL = TinyPreset(
    hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, mrope_section=(24, 20, 20), vision_depth=24, vision_hidden_size=1024,
    vision_intermediate_size=4096, vision_num_heads=16, num_position_embeddings=2304,
    deepstack_visual_indexes=(5, 11, 17), tie_word_embeddings=True, max_position_embeddings=262144,
    min_pixels=256 * 256, max_pixels=PAGE_PIXELS, vocab_size=151936, shards=4,
)
# Qwen2-VL-2B and Qwen2.5-VL-3B (their config.json files: text and vision shapes, tied embeddings)
_QWEN2_PAGE_PIXELS = 1000 * 28 * 28
_QWEN2_VL_2B_MODEL = TinyPreset(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    head_dim=128, mrope_section=(16, 24, 24), vision_depth=32, vision_hidden_size=1280,
    vision_intermediate_size=5120, vision_num_heads=16, num_position_embeddings=0, deepstack_visual_indexes=(),
    patch_size=14, tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=32768,
    min_pixels=56 * 56, max_pixels=_QWEN2_PAGE_PIXELS, vocab_size=151936, shards=4, model_type="qwen2_vl",
)
_QWEN2_5_VL_3B_MODEL = TinyPreset(
    hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
    head_dim=128, mrope_section=(16, 24, 24), vision_depth=32, vision_hidden_size=1280,
    vision_intermediate_size=3420, vision_num_heads=16, num_position_embeddings=0, deepstack_visual_indexes=(),
    patch_size=14, tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=128000,
    min_pixels=56 * 56, max_pixels=_QWEN2_PAGE_PIXELS, vocab_size=151936, shards=4, model_type="qwen2_5_vl",
    window_size=112, fullatt_block_indexes=(7, 15, 23, 31), rope_style="rope_parameters",
)
# Paper-like: exit after 16 of 28 layers (57% of the decoder), a 4-layer band, a quarter of the visual tokens.
_PAPER_SPEC = RerankSpec(exit_layer=15, band=(8, 11), keep_ratio=0.25, query_position=256)

BENCH_PRESETS: dict[str, BenchPreset] = {
    "tiny": BenchPreset(PRESETS["tiny"], (96, 128), RerankSpec.tiny(),
                        "the 4-layer test model; runs end to end in seconds (CI)"),
    "tiny-qwen2.5-vl": BenchPreset(PRESETS["qwen2_5_vl_tiny"], (96, 128), RerankSpec.tiny(),
                                   "the tiny Qwen2.5-VL test model (window attention, biases); seconds (CI)"),
    "small": BenchPreset(_SMALL_MODEL, (1240, 1754), _PAPER_SPEC,
                         "Qwen3-VL-2B's depth and layout at a narrow width; a CPU run takes minutes"),
    "wide": BenchPreset(_WIDE_MODEL, (1240, 1754), _PAPER_SPEC,
                        "small at 4x the width (hidden 512): the rerank's distance to its compute floor without "
                        "small's per-operator overhead"),
    "2b": BenchPreset(_2B_MODEL, (1240, 1754), _PAPER_SPEC,
                      "Qwen3-VL-2B's real shapes (random weights); for long runs and GPUs"),
    "qwen2-vl-2b": BenchPreset(_QWEN2_VL_2B_MODEL, (1240, 1754), _PAPER_SPEC,
                               "Qwen2-VL-2B's real shapes (jina-reranker-m0's and MonoQwen2-VL's base; random "
                               "weights); for long runs and GPUs"),
    "qwen2.5-vl-3b": BenchPreset(_QWEN2_5_VL_3B_MODEL, (1240, 1754),
                                 RerankSpec(exit_layer=20, band=(10, 14), keep_ratio=0.25, query_position=256),
                                 "Qwen2.5-VL-3B's real shapes (lychee-rerank-mm's family; random weights), the "
                                 "paper-like spec at 21 of 36 layers; for long runs and GPUs"),
}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Every default is defined here; the command line only overrides."""

    out: Path
    preset: str = "tiny"
    candidates: int = 100
    repeats: int = 3
    spec_files: tuple[Path, ...] = ()   # extra miniReranker specs, each a system of its own besides (d)
    systems: tuple[str, ...] = SYSTEMS
    dense_pairs: int | None = None      # time (a) and (a2) on this many pairs and scale to `candidates` (linear in N)
    dense_batch_sizes: tuple[int, ...] = (1, 4, 16)  # (a2) times each (capped at the pairs it measures), keeps the best
    marginal: int = 40                  # `rerank` on this many candidates against 1 (capped at `candidates`); 0: off
    batch_size: int = 32
    precision: str = "fp32"             # of the bundles (fp16 for GPUs); (a) runs float32
    validate: bool = True               # build checks every graph against the torch reference
    seed: int = 0
    work: Path | None = None            # checkpoint, bundles, corpus and caches; default: <out>/work
    specs: tuple[tuple[str, RerankSpec], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "work", Path(self.work) if self.work is not None else self.out / "work")
        object.__setattr__(self, "spec_files", tuple(Path(p) for p in self.spec_files))
        object.__setattr__(self, "systems", tuple(self.systems))
        object.__setattr__(self, "dense_batch_sizes", tuple(self.dense_batch_sizes))
        problems = [text for bad, text in self._checks() if bad]
        if problems:
            raise BenchError("invalid bench settings: " + "; ".join(problems))
        specs = [("minireranker", self.bench_preset.spec)]
        for path in self.spec_files:
            specs.append((f"minireranker:{path.stem}", RerankSpec.from_file(path)))  # SpecError names the file
        if len({name for name, _ in specs}) != len(specs):
            raise SpecError("two --spec files have the same name (file stem); rename one")
        layers = self.bench_preset.model.num_hidden_layers
        for name, spec in specs:
            try:
                spec.resolve(layers)
            except SpecError as exc:
                raise SpecError(f"{name}: {exc} (the {self.preset} preset has {layers} layers)") from None
        object.__setattr__(self, "specs", tuple(specs))

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.preset not in BENCH_PRESETS,
             f"preset {self.preset!r} is unknown; choose one of {sorted(BENCH_PRESETS)}"),
            (self.candidates < 1, f"candidates must be >= 1, got {self.candidates}"),
            (self.repeats < 1, f"repeats must be >= 1, got {self.repeats}"),
            (self.batch_size < 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.precision not in ("fp32", "fp16"), f"precision must be fp32 or fp16, got {self.precision!r}"),
            (self.dense_pairs is not None and not 1 <= self.dense_pairs <= self.candidates,
             f"dense_pairs must be between 1 and candidates ({self.candidates}), got {self.dense_pairs}"),
            (not self.systems or not set(self.systems) <= set(SYSTEMS) or len(set(self.systems)) != len(self.systems),
             f"systems must be distinct names among {list(SYSTEMS)}, got {list(self.systems)}"),
            (bool(self.spec_files) and "minireranker" not in self.systems, "--spec needs the minireranker system"),
            (not self.dense_batch_sizes or min(self.dense_batch_sizes) < 1,
             f"dense_batch_sizes must be batch sizes >= 1, got {list(self.dense_batch_sizes)}"),
            (self.marginal < 0 or self.marginal == 1,
             f"marginal must be 0 (off) or >= 2 candidates, got {self.marginal}"),
        ]

    @property
    def bench_preset(self) -> BenchPreset:
        return BENCH_PRESETS[self.preset]

    @property
    def dense_batches(self) -> tuple[int, ...]:
        """The batch sizes (a2) times: each capped at the pairs it measures."""
        pairs = self.dense_pairs or self.candidates
        return tuple(sorted({min(size, pairs) for size in self.dense_batch_sizes}))

    @property
    def marginal_candidates(self) -> int:
        """N of the marginal measurement (``marginal`` capped at ``candidates``); 0 when it does not run."""
        n = min(self.marginal, self.candidates)
        return n if n >= 2 and "minireranker" in self.systems else 0

    @classmethod
    def tiny(cls, out: Path) -> "BenchConfig":
        """The test-suite run: the tiny preset, 4 candidates, one repeat."""
        return cls(out=out, preset="tiny", candidates=4, repeats=1)


# ---------------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------------


def draw_page(size: tuple[int, int], seed: int) -> Image.Image:
    """A document page: a title, paragraphs of words, a table box and a footer, black on white."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    margin, line = max(2, w // 15), max(4, h // 60)
    draw.rectangle((margin, margin, w - margin, margin + 2 * line), fill=(30, 30, 90))
    y = margin + 3 * line
    table_at = int(rng.integers(h // 3, 2 * h // 3))
    while y < h - 2 * margin:
        if abs(y - table_at) < line:  # a table: a box with ruled rows
            bottom = min(h - 2 * margin, y + 8 * line)
            draw.rectangle((margin, y, w - margin, bottom), outline="black", width=max(1, line // 8))
            for r in range(y + line, bottom, line):
                draw.line((margin, r, w - margin, r), fill=(120, 120, 120))
            y = bottom + line
            continue
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))
        draw.text((margin, y), words, fill=(0, 0, 0))
        y += line
    draw.text((margin, h - margin), f"page {seed}", fill=(90, 90, 90))
    return img


def draw_query(seed: int) -> str:
    """A query of 5 to 20 words from QUERY_WORDS."""
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(QUERY_WORDS, size=int(rng.integers(5, 21))))


def write_corpus(directory: Path, size: tuple[int, int], count: int, seed: int) -> list[Path]:
    """``count`` PNG pages in ``directory`` (existing files of the same name are rewritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"page-{i:04d}.png"
        draw_page(size, seed * 100_003 + i).save(path)
        paths.append(path)
    return paths
