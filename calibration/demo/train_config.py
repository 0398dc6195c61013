"""The demo training's settings: both models' shapes and :class:`TrainConfig`, and the learning-rate
schedule and optimiser step every stage shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...export.tiny import TinyPreset

_SHAPE = dict(hidden_size=96, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
              mrope_section=(4, 4, 4), vision_depth=3, vision_hidden_size=48, vision_intermediate_size=96,
              vision_num_heads=2, num_position_embeddings=64, deepstack_visual_indexes=(0, 1),
              min_pixels=32 * 32, max_pixels=128 * 128)
RERANKER_PRESET = TinyPreset(num_hidden_layers=8, **_SHAPE)
EMBEDDER_PRESET = TinyPreset(num_hidden_layers=4, **_SHAPE)  # same vision layout and pixel budget


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the defaults are the shipped models' settings."""

    seed: int = 0
    reranker_steps: int = 750
    embedder_steps: int = 250
    vision_steps: int = 300            # stage 0: the shared vision tower learns digits and photographs
    queries_per_step: int = 8          # reranker: groups of one query and its candidates
    candidates_per_query: int = 6      # 1-2 relevant, 1 partial, hard and random negatives
    embedder_pairs_per_step: int = 24  # embedder: (query, relevant document) pairs, plus one hard negative each
    lr: float = 3e-3
    warmup_steps: int = 40
    temperature: float = 0.05          # InfoNCE
    first_exit: int = 2                # deep supervision from this layer to the last
    band_fraction: float = 0.3         # groups trained with a band and the fixed query position
    prune_fraction: float = 0.3        # groups whose images lose visual tokens
    query_position: int = 128          # P for specs with A > 0: past every demo document's positions
    train_composites: int = 4000
    query_kinds: tuple[tuple[str, float], ...] = (("digit", 0.3), ("ordered", 0.2), ("pair", 0.15),
                                                  ("count", 0.15), ("photo", 0.2))
    # "vision-first": the pipeline's order, with deep supervision, bands and pruning (the shipped reranker);
    # "query-first": Qwen3-VL-Reranker's own order and training (dense pairs, the last layer's score only):
    # the stock checkpoint a user brings, shipped as reranker-query-first/ for `minireranker adapt`
    order: str = "vision-first"

    def __post_init__(self) -> None:
        if self.order not in ("vision-first", "query-first"):
            raise ValueError(f"order must be 'vision-first' or 'query-first', got {self.order!r}")

    @classmethod
    def smoke(cls) -> "TrainConfig":
        """A few small steps: what the tests run."""
        return cls(reranker_steps=24, embedder_steps=12, vision_steps=10, queries_per_step=3, candidates_per_query=4,
                   embedder_pairs_per_step=6, warmup_steps=4, train_composites=200)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def new_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (weight decay 0.01); each step sets its learning rate."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, lr: float) -> None:
    """One step at learning rate ``lr``, gradients clipped to norm 1."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
