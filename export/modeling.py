"""Export-friendly torch modules of Qwen3-VL, loaded from a checkpoint's safetensors.

Every module takes its inputs explicitly (hidden states, 3-D positions, prefix K/V, masks) and keeps no
state between calls: transformers keeps ``rope_deltas`` in the module, we pass positions instead. The
math follows the published architecture; parity with transformers is tested at fp32 atol 1e-5.

Shapes: ``T`` tokens, ``P`` prefix (cached) tokens, ``B`` batch, ``Hq``/``Hkv`` query/KV heads, ``d`` head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig, TextConfig, VisionConfig


def _linear(sd: dict[str, Tensor], prefix: str, bias: bool = True) -> nn.Linear:
    w = sd[prefix + ".weight"]
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    layer.weight = nn.Parameter(w.clone(), requires_grad=False)
    if bias:
        layer.bias = nn.Parameter(sd[prefix + ".bias"].clone(), requires_grad=False)
    return layer


def _layer_norm(sd: dict[str, Tensor], prefix: str) -> nn.LayerNorm:
    w = sd[prefix + ".weight"]
    norm = nn.LayerNorm(w.shape[0], eps=1e-6)
    norm.weight = nn.Parameter(w.clone(), requires_grad=False)
    norm.bias = nn.Parameter(sd[prefix + ".bias"].clone(), requires_grad=False)
    return norm


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, weight: Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Vision tower
# ---------------------------------------------------------------------------------------------------
def merge_block_coords(grid_h: int, grid_w: int, merge: int) -> tuple[Tensor, Tensor]:
    """(row, col) of each patch in the order pixel rows arrive: merge blocks, raster inside a block."""
    idx = torch.arange(grid_h * grid_w)
    in_col, in_row = idx % merge, (idx // merge) % merge
    block_col = (idx // (merge * merge)) % (grid_w // merge)
    block_row = idx // (merge * merge * (grid_w // merge))
    return block_row * merge + in_row, block_col * merge + in_col


def position_embedding_taps(rows: Tensor, cols: Tensor, grid_h: int, grid_w: int, side: int) -> tuple[Tensor, Tensor]:
    """Bilinear (align_corners) taps resampling the learned ``side x side`` table to ``grid_h x grid_w``.

    Returns indices and weights, both [N, 4].
    """

    def axis(index: Tensor, size: int) -> tuple[Tensor, Tensor]:
        src = index.float() * (side - 1) / max(size - 1, 1)
        lo = src.floor()
        frac = src - lo
        lo = lo.long()
        taps = torch.stack([lo, (lo + 1).clamp(max=side - 1)], dim=1)
        return taps, torch.stack([1 - frac, frac], dim=1)

    h_taps, h_w = axis(rows, grid_h)
    w_taps, w_w = axis(cols, grid_w)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    return indices, weights


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, sd: dict[str, Tensor], prefix: str) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.norm1, self.norm2 = _layer_norm(sd, prefix + "norm1"), _layer_norm(sd, prefix + "norm2")
        self.qkv, self.proj = _linear(sd, prefix + "attn.qkv"), _linear(sd, prefix + "attn.proj")
        self.fc1, self.fc2 = _linear(sd, prefix + "mlp.linear_fc1"), _linear(sd, prefix + "mlp.linear_fc2")

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # x: [N, D]   cos/sin: [N, d]; full attention over the N patches of one image
        n = x.shape[0]
        q, k, v = self.qkv(self.norm1(x)).reshape(n, 3, self.num_heads, -1).permute(1, 2, 0, 3)  # [Hv, N, d] each
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attn = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v  # [Hv, N, d]
        x = x + self.proj(attn.transpose(0, 1).reshape(n, -1))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class PatchMerger(nn.Module):
    """Merges ``merge x merge`` neighbouring patches into one LM token (norm before or after the shuffle)."""

    def __init__(self, sd: dict[str, Tensor], prefix: str, merged: int, postshuffle: bool) -> None:
        super().__init__()
        self.merged, self.postshuffle = merged, postshuffle
        self.norm = _layer_norm(sd, prefix + "norm")
        self.fc1, self.fc2 = _linear(sd, prefix + "linear_fc1"), _linear(sd, prefix + "linear_fc2")

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x.reshape(-1, self.merged)) if self.postshuffle else self.norm(x).reshape(-1, self.merged)
        return self.fc2(F.gelu(self.fc1(x)))


class VisionTower(nn.Module):
    """Pixels of one image -> LM tokens [N/merge^2, D] and one DeepStack feature per configured block."""

    def __init__(self, cfg: VisionConfig, sd: dict[str, Tensor]) -> None:
        super().__init__()
        self.cfg = cfg
        w = sd["model.visual.patch_embed.proj.weight"]
        self.patch_weight = nn.Parameter(w.reshape(w.shape[0], -1).clone(), requires_grad=False)
        self.patch_bias = nn.Parameter(sd["model.visual.patch_embed.proj.bias"].clone(), requires_grad=False)
        self.pos_embed = nn.Parameter(sd["model.visual.pos_embed.weight"].clone(), requires_grad=False)
        self.blocks = nn.ModuleList(VisionBlock(cfg, sd, f"model.visual.blocks.{i}.") for i in range(cfg.depth))
        merged = cfg.hidden_size * cfg.spatial_merge_size**2
        self.merger = PatchMerger(sd, "model.visual.merger.", merged, postshuffle=False)
        self.deepstack = nn.ModuleList(
            PatchMerger(sd, f"model.visual.deepstack_merger_list.{j}.", merged, postshuffle=True)
            for j in range(len(cfg.deepstack_indexes))
        )
        rot = cfg.head_dim // 2
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, rot, 2).float() / rot), persistent=False)

    def forward(self, pixel_values: Tensor, grid_h: int, grid_w: int) -> tuple[Tensor, list[Tensor]]:
        # pixel_values: [N, C*T*p*p] rows in merge-block order, N = grid_h * grid_w
        cfg = self.cfg
        rows, cols = merge_block_coords(grid_h, grid_w, cfg.spatial_merge_size)
        side = int(round(cfg.num_position_embeddings ** 0.5))
        taps, weights = position_embedding_taps(rows, cols, grid_h, grid_w, side)
        x = F.linear(pixel_values.to(self.patch_weight.dtype), self.patch_weight, self.patch_bias)
        x = x + (self.pos_embed[taps] * weights[:, :, None].to(x.dtype)).sum(1)
        freqs = torch.cat([rows[:, None].float() * self.inv_freq, cols[:, None].float() * self.inv_freq], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[None].to(x.dtype), emb.sin()[None].to(x.dtype)  # [1, N, d] broadcast over heads
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin)
            if i in cfg.deepstack_indexes:
                features.append(self.deepstack[cfg.deepstack_indexes.index(i)](x))
        return self.merger(x), features


# ---------------------------------------------------------------------------------------------------
# Text decoder
# ---------------------------------------------------------------------------------------------------
class TextRotary(nn.Module):
    """Interleaved MRoPE: frequency j takes its position from axis t, h or w by ``j mod 3``."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        d = cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2).float() / d), persistent=False)
        axis = torch.zeros(d // 2, dtype=torch.long)
        for a, offset in ((1, 1), (2, 2)):
            axis[offset: cfg.mrope_section[a] * 3: 3] = a
        self.register_buffer("axis", axis, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        # positions: [3, B, T] int64 -> cos, sin: [B, 1, T, d] (broadcast over heads)
        freqs = positions[..., None].float() * self.inv_freq  # [3, B, T, d/2]
        picked = freqs.gather(0, self.axis.expand(1, *freqs.shape[1:3], -1)).squeeze(0)
        emb = torch.cat([picked, picked], dim=-1)[:, None]
        return emb.cos(), emb.sin()


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, sd: dict[str, Tensor], prefix: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.q_proj = _linear(sd, prefix + "self_attn.q_proj", bias=False)
        self.k_proj = _linear(sd, prefix + "self_attn.k_proj", bias=False)
        self.v_proj = _linear(sd, prefix + "self_attn.v_proj", bias=False)
        self.o_proj = _linear(sd, prefix + "self_attn.o_proj", bias=False)
        self.q_norm = RMSNorm(sd[prefix + "self_attn.q_norm.weight"], cfg.rms_norm_eps)
        self.k_norm = RMSNorm(sd[prefix + "self_attn.k_norm.weight"], cfg.rms_norm_eps)
        self.gate, self.up = _linear(sd, prefix + "mlp.gate_proj", False), _linear(sd, prefix + "mlp.up_proj", False)
        self.down = _linear(sd, prefix + "mlp.down_proj", False)
        self.input_norm = RMSNorm(sd[prefix + "input_layernorm.weight"], cfg.rms_norm_eps)
        self.post_norm = RMSNorm(sd[prefix + "post_attention_layernorm.weight"], cfg.rms_norm_eps)

    def project_qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # x: [B, T, D] -> q [B, Hq, T, d], k/v [B, Hkv, T, d] (rotary applied to q and k)
        b, t, _ = x.shape
        h = self.input_norm(x)
        q = self.q_norm(self.q_proj(h).view(b, t, -1, self.cfg.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(h).view(b, t, -1, self.cfg.head_dim)).transpose(1, 2)
        v = self.v_proj(h).view(b, t, -1, self.cfg.head_dim).transpose(1, 2)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
        # q: [B, Hq, T, d]; k/v: [B, Hkv, S, d]; visible: bool [B, 1, T, S] -> [B, Hq, T, d]
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        # x: residual [B, T, D]; attn: [B, Hq, T, d]
        b, _, t, _ = attn.shape
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, prefix_k: Tensor | None, prefix_v: Tensor | None,
        prefix_visible: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer over ``x`` [B, T, D] that also sees a cached prefix.

        prefix_k/v: [B, Hkv, P, d]; prefix_visible: bool [B, 1 or T, P]. ``x`` attends causally to itself.
        Returns the new hidden states and ``x``'s own K and V [B, Hkv, T, d].
        """
        q, k, v = self.project_qkv(x, cos, sin)
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        visible = causal.expand(x.shape[0], 1, t, t)
        if prefix_k is not None:
            assert prefix_v is not None and prefix_visible is not None
            pv = prefix_visible[:, None].expand(-1, 1, t, -1)
            k, v_all = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
            visible = torch.cat([pv, visible], dim=-1)
            out = self.attend(q, k, v_all, visible)
            return self.finish(x, out), k[:, :, prefix_k.shape[2]:], v
        return self.finish(x, self.attend(q, k, v, visible)), k, v


class Qwen3VLTorch(nn.Module):
    """The pieces of Qwen3-VL the pipeline composes: vision tower, embeddings, layers, exit head."""

    def __init__(self, config: ModelConfig, sd: dict[str, Tensor]) -> None:
        super().__init__()
        self.config = config
        t = config.text
        self.vision = VisionTower(config.vision, sd)
        self.embed = nn.Parameter(sd["model.language_model.embed_tokens.weight"].clone(), requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(t, sd, f"model.language_model.layers.{i}.") for i in range(t.num_layers))
        self.norm = RMSNorm(sd["model.language_model.norm.weight"], t.rms_norm_eps)
        self.rotary = TextRotary(t)
        self.lm_head = sd["lm_head.weight"]

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.embed[ids]

    def exit_head(self, yes_id: int, no_id: int) -> Tensor:
        """The two LM-head rows the score reads: [2, D]."""
        return self.lm_head[[yes_id, no_id]].clone()

    def score_hidden(self, hidden: Tensor, head_rows: Tensor) -> Tensor:
        """hidden: [B, D] at the exit layer -> logit(yes) - logit(no): [B]."""
        logits = self.norm(hidden) @ head_rows.T
        return logits[:, 0] - logits[:, 1]
