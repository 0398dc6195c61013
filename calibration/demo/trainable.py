"""The training forward of the demo models: sequences, padded batches with per-layer masks, and a
trainable Qwen3-VL whose weights map back to transformers' names.

:class:`TrainableQwen3VL` batches whole sequences (system, document, query) with one boolean mask per
layer, so the miniReranker approximations are trained exactly as they run (``train_demo`` explains how).
A test checks its scores against ``ReferencePipeline`` for dense, banded and pruned samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...export.checkpoint import expected_shapes
from ...export.config import ModelConfig
from ...export.graphs import vision_tensors
from ...export.modeling import attention, build_model, rotate_half


# ---------------------------------------------------------------------------------------------------
# sequences and batches
# ---------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One sequence: ids, 3-D positions, its image (pixels, grid) and how the masks treat it."""

    ids: list[int]
    positions: np.ndarray                    # [3, T] int64
    pixels: np.ndarray | None = None         # [N, C*T*p*p]
    grid: tuple[int, int, int] | None = None
    image_start: int = -1                    # token index of the first <|image_pad|>
    doc_span: tuple[int, int] = (0, 0)       # document segment [start, end) (query rows may be cut off it)
    band: tuple[int, int] | None = None      # query sees the document only in layers A..B
    dropped: np.ndarray | None = None        # indices among the visual tokens that are pruned
    caption: tuple[int, int] | None = None   # tokens [start, end) to predict (language-model loss)
    ground: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (query token, visual tokens it should find)

    @property
    def num_visual(self) -> int:
        return 0 if self.grid is None else self.grid[1] * self.grid[2] // 4


@dataclass
class Batch:
    """Sequences after their shared prefix (computed once, batch 1), right-padded, with per-layer masks."""

    prefix_ids: Tensor      # [S] ids every sequence starts with (the system segment)
    prefix_positions: Tensor  # [3, 1, S]
    ids: Tensor             # [B, T] the rest
    positions: Tensor       # [3, B, T]
    last: Tensor            # [B] index (in the rest) of each sequence's last token
    visible: list[Tensor]   # per layer: bool [B, 1, T, S + T]
    pixels: list[np.ndarray] = field(default_factory=list)
    grids: list[tuple[int, int, int]] = field(default_factory=list)
    visual_at: list[tuple[int, int, int]] = field(default_factory=list)  # (sample, first token, count)
    predict: tuple[Tensor, Tensor, Tensor] | None = None  # (sample, position, next id) of the caption tokens
    ground: list[tuple[int, int, Tensor]] = field(default_factory=list)  # (sample, row in the rest, key columns)

    def to(self, device: torch.device) -> "Batch":
        """The batch's tensors on ``device`` (collate builds them on the CPU); the pixels stay numpy."""
        if self.ids.device == torch.device(device):
            return self
        move = lambda t: t.to(device)  # noqa: E731
        return Batch(move(self.prefix_ids), move(self.prefix_positions), move(self.ids), move(self.positions),
                     move(self.last), [move(v) for v in self.visible], self.pixels, self.grids, self.visual_at,
                     None if self.predict is None else tuple(move(t) for t in self.predict),
                     [(i, row, move(cols)) for i, row, cols in self.ground])


def shared_prefix(samples: list[Sample]) -> int:
    """Length of the prefix every sequence shares (ids and positions), before any image or banded document."""
    first = samples[0]
    limit = min([len(s.ids) - 1 for s in samples] + [s.image_start for s in samples if s.pixels is not None]
                + [s.doc_span[0] for s in samples if s.band is not None])
    n = 0
    while n < limit and all(s.ids[n] == first.ids[n] and (s.positions[:, n] == first.positions[:, n]).all()
                            for s in samples):
        n += 1
    return n


def collate(samples: list[Sample], num_layers: int) -> Batch:
    """Split off the shared prefix, right-pad the rest, build one mask per layer (causal, padding, pruning,
    band). Prefix columns are visible to every row: it is the system segment, which queries always see."""
    p = shared_prefix(samples)
    b, t = len(samples), max(len(s.ids) for s in samples) - p
    ids = torch.zeros(b, t, dtype=torch.long)
    positions = torch.zeros(3, b, t, dtype=torch.long)
    keys = torch.zeros(b, t, dtype=torch.bool)         # real, unpruned tokens
    cut = torch.zeros(b, t, t, dtype=torch.bool)       # query row x document column
    bands = torch.full((b, 2), -1)                     # -1: never cut
    first, predict = samples[0], []
    batch = Batch(torch.tensor(first.ids[:p]), torch.from_numpy(first.positions[:, None, :p].copy()), ids, positions,
                  torch.tensor([len(s.ids) - 1 - p for s in samples]), [])
    for i, s in enumerate(samples):
        n = len(s.ids) - p
        ids[i, :n] = torch.tensor(s.ids[p:])
        positions[:, i, :n] = torch.from_numpy(s.positions[:, p:])
        keys[i, :n] = True
        if s.dropped is not None:
            keys[i, s.image_start - p + torch.from_numpy(s.dropped)] = False
        if s.band is not None:
            cut[i, s.doc_span[1] - p:n, s.doc_span[0] - p:s.doc_span[1] - p] = True
            bands[i] = torch.tensor(s.band)
        if s.pixels is not None:
            batch.pixels.append(s.pixels)
            batch.grids.append(s.grid)
            batch.visual_at.append((i, s.image_start - p, s.num_visual))
        for row, columns in s.ground:  # key columns count the prefix, as the attention's keys do
            batch.ground.append((i, row - p, torch.from_numpy(columns)))
        if s.caption is not None:
            at = torch.arange(s.caption[0] - 1, s.caption[1] - 1)
            predict.append((torch.full_like(at, i), at - p, torch.tensor(s.ids[s.caption[0]: s.caption[1]])))
    if predict:
        batch.predict = tuple(torch.cat(parts) for parts in zip(*predict))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    base = causal & (keys[:, None, :] | torch.eye(t, dtype=torch.bool))  # a pruned token still sees itself
    prefix = torch.ones(b, t, p, dtype=torch.bool)
    for layer in range(num_layers):
        outside = (bands[:, 0] > layer) | (bands[:, 1] < layer)
        batch.visible.append(torch.cat([prefix, base & ~(cut & outside[:, None, None])], dim=2)[:, None])
    return batch


# ---------------------------------------------------------------------------------------------------
# the trainable model
# ---------------------------------------------------------------------------------------------------
class TrainableQwen3VL(nn.Module):
    """Qwen3-VL's torch model with every weight trainable, a batched vision tower and a batched decoder forward."""

    def __init__(self, config: ModelConfig, state_dict: dict[str, Tensor], answer_ids: tuple[int, int] | None) -> None:
        super().__init__()
        self.core = build_model(config, state_dict)
        self.core.requires_grad_(True)
        self.core.set_attention("fused")
        # the reranker trains its LM head (yes/no rows and the caption loss); the embedder never reads it
        self.lm_head = nn.Parameter(self.core.lm_head.clone(), requires_grad=answer_ids is not None)
        self.answer_ids = answer_ids
        self.keep_qk_layer: int | None = None  # forward keeps this layer's queries and keys (with the prefix)
        self.kept_qk: tuple[Tensor, Tensor] | None = None

    @property
    def hidden_size(self) -> int:
        return self.core.config.text.hidden_size

    @property
    def device(self) -> torch.device:
        """Where the weights are (``model.to(device)`` moves them; batches follow in :meth:`forward`)."""
        return self.lm_head.device

    def vision(self, pixels: list[np.ndarray], grids: list[tuple[int, int, int]]) -> tuple[Tensor, Tensor]:
        """Images of equal patch count are batched: -> merged tokens [sum Nv, D], DeepStack [K, sum Nv, D]."""
        tower, cfg = self.core.vision, self.core.config.vision
        order, outs, stacks = [], [], []
        for count in sorted({p.shape[0] for p in pixels}):
            members = [i for i, p in enumerate(pixels) if p.shape[0] == count]
            extra = [vision_tensors(cfg, grids[i][1], grids[i][2]) for i in members]
            x = torch.from_numpy(np.stack([pixels[i] for i in members])).to(self.device)  # [G, N, C*T*p*p]
            pos_index, pos_weight, cos, sin = (torch.stack([e[j] for e in extra]).to(self.device) for j in range(4))
            x = F.linear(x, tower.patch_weight, tower.patch_bias)
            x = x + (tower.pos_embed[pos_index] * pos_weight[..., None]).sum(2)             # [G, N, Dv]
            feats = []
            for i, block in enumerate(tower.blocks):
                x = _vision_block(block, x, cos[:, None], sin[:, None])
                if i in cfg.deepstack_indexes:
                    feats.append(tower.deepstack[cfg.deepstack_indexes.index(i)](x.reshape(-1, x.shape[-1])))
            order += members
            outs.append(tower.merger(x.reshape(-1, x.shape[-1])).reshape(len(members), -1, self.hidden_size))
            stacks.append(torch.stack(feats).reshape(len(feats), len(members), -1, self.hidden_size))
        where = {image: (g, j) for g, group in enumerate(_groups(order, outs)) for j, image in enumerate(group)}
        embeds = torch.cat([outs[where[i][0]][where[i][1]] for i in range(len(pixels))])
        deepstack = torch.cat([stacks[where[i][0]][:, where[i][1]] for i in range(len(pixels))], dim=1)
        return embeds, deepstack

    def forward(self, batch: Batch, layers: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Hidden state of each sequence's last token after every layer (list of [B, D]) and the last
        layer's hidden states of every token after the shared prefix [B, T, D]."""
        core, device = self.core, self.device
        batch = batch.to(device)
        x = core.embed[batch.ids]                                              # [B, T, D]
        k = len(core.config.vision.deepstack_indexes)
        dense = x.new_zeros((k, *x.shape))
        if batch.pixels:
            embeds, deepstack = self.vision(batch.pixels, batch.grids)
            rows_b = torch.cat([torch.full((n,), i, device=device) for i, _, n in batch.visual_at])
            rows_t = torch.cat([torch.arange(s, s + n, device=device) for _, s, n in batch.visual_at])
            x = x.index_put((rows_b, rows_t), embeds)
            dense = dense.index_put((torch.arange(k, device=device)[:, None], rows_b[None], rows_t[None]), deepstack)
        cos, sin = core.rotary(batch.positions, x.dtype)
        xp = core.embed[batch.prefix_ids][None]                                # [1, S, D]
        cos_p, sin_p = core.rotary(batch.prefix_positions, x.dtype)
        causal = torch.ones(xp.shape[1], xp.shape[1], dtype=torch.bool, device=device).tril()[None, None]
        hidden, index, n = [], torch.arange(x.shape[0], device=device), x.shape[0]
        for i, layer in enumerate(core.layers[: layers or len(core.layers)]):
            qp, kp, vp = layer.project_qkv(xp, cos_p, sin_p)
            q, kk, v = layer.project_qkv(x, cos, sin)
            kk = torch.cat([kp.expand(n, -1, -1, -1), kk], dim=2)
            v = torch.cat([vp.expand(n, -1, -1, -1), v], dim=2)
            if i == self.keep_qk_layer and batch.ground:
                self.kept_qk = (q, kk)  # read by the grounding loss
            x = layer.finish(x, layer.attend(q, kk, v, batch.visible[i]))
            xp = layer.finish(xp, layer.attend(qp, kp, vp, causal))
            if i < k:
                x = x + dense[i]
            hidden.append(x[index, batch.last])
        return hidden, x

    def score(self, hidden: Tensor) -> Tensor:
        """[B, D] -> logit(yes) - logit(no) [B] through the final norm."""
        logits = self.core.norm(hidden) @ self.lm_head[list(self.answer_ids)].T
        return logits[:, 0] - logits[:, 1]

    def embed(self, hidden: Tensor) -> Tensor:
        """[B, D] -> L2-normalised embedding through the final norm."""
        return F.normalize(self.core.norm(hidden), dim=-1)

    def transformers_state_dict(self) -> dict[str, Tensor]:
        """Every weight under transformers' name (float32, contiguous), the yes/no rows written back.

        The names are those the core read its weights from, and the shapes the architecture's table (the
        patch kernel is a matrix here, a conv kernel on disk)."""
        names, shapes = self.core.transformers_names, expected_shapes(self.core.config)
        out = {names["lm_head"]: self.lm_head.detach().cpu().clone()}
        for name, value in self.core.named_parameters():
            out[names[name]] = value.detach().cpu().clone().reshape(shapes[names[name]])
        return {n: v.contiguous() for n, v in out.items()}


def _groups(order: list[int], outs: list[Tensor]) -> list[list[int]]:
    """Split the flat image order back into its equal-size groups."""
    groups, start = [], 0
    for out in outs:
        groups.append(order[start: start + out.shape[0]])
        start += out.shape[0]
    return groups


def _vision_block(block: nn.Module, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """qwen3_vl_torch.VisionBlock over a batch of images of one size: x [G, N, Dv]; cos/sin [G, 1, N, d]."""
    g, n, _ = x.shape
    q, k, v = block.qkv(block.norm1(x)).reshape(g, n, 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    attn = attention(q, k, v, None, fused=True)                               # [G, H, N, d]
    x = x + block.proj(attn.transpose(1, 2).reshape(g, n, -1))
    return x + block.fc2(F.gelu(block.fc1(block.norm2(x)), approximate="tanh"))
