"""Qwen3-VL's torch modules, export-friendly, loaded from a checkpoint's tensors (transformers' names).

Every module takes its inputs explicitly (hidden states, 3-D positions, prefix K/V, masks) and keeps no
state between calls: transformers keeps ``rope_deltas`` in the module, we pass positions instead. The
math follows the published architecture; parity with transformers is tested at fp32 atol 1e-5.
The weight names are those of :mod:`.qwen3_vl` (its module docstring lists them).

Shapes: ``T`` tokens, ``P`` prefix (cached) tokens, ``B`` batch, ``Hq``/``Hkv`` query/KV heads, ``d`` head dim.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...runtime.vision_inputs import vision_inputs
from ..config import ModelConfig, TextConfig, VisionConfig
from ..modeling import KeySegment, RMSNorm, WeightReader, attention, rotate_half, segment_attention
from .qwen3_vl import LM_HEAD, TEXT, VISUAL


# ---------------------------------------------------------------------------------------------------
# Vision tower
# ---------------------------------------------------------------------------------------------------
class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, read: WeightReader, prefix: str) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.norm1, self.norm2 = read.layer_norm(prefix + "norm1"), read.layer_norm(prefix + "norm2")
        self.qkv, self.proj = read.linear(prefix + "attn.qkv"), read.linear(prefix + "attn.proj")
        self.fc1, self.fc2 = read.linear(prefix + "mlp.linear_fc1"), read.linear(prefix + "mlp.linear_fc2")
        self.fused = False

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # x: [N, D]   cos/sin: [1, N, d]; full attention over the N patches of one image
        n = x.shape[0]
        q, k, v = self.qkv(self.norm1(x)).reshape(n, 3, self.num_heads, -1).permute(1, 2, 0, 3)  # [Hv, N, d] each
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attn = attention(q[None], k[None], v[None], None, self.fused)[0]  # [Hv, N, d]
        x = x + self.proj(attn.transpose(0, 1).reshape(n, -1))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class PatchMerger(nn.Module):
    """Merges ``merge x merge`` neighbouring patches into one LM token (norm before or after the shuffle)."""

    def __init__(self, read: WeightReader, prefix: str, merged: int, postshuffle: bool) -> None:
        super().__init__()
        self.merged, self.postshuffle = merged, postshuffle
        self.norm = read.layer_norm(prefix + "norm")
        self.fc1, self.fc2 = read.linear(prefix + "linear_fc1"), read.linear(prefix + "linear_fc2")

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x.reshape(-1, self.merged)) if self.postshuffle else self.norm(x).reshape(-1, self.merged)
        return self.fc2(F.gelu(self.fc1(x)))


class VisionTower(nn.Module):
    """Pixels of one image -> LM tokens [N/merge^2, D] and one DeepStack feature per configured block."""

    def __init__(self, cfg: VisionConfig, read: WeightReader) -> None:
        super().__init__()
        self.cfg = cfg
        kernel = VISUAL + "patch_embed.proj.weight"  # conv kernel [Dv, C, T, p, p] as a matrix [Dv, C*T*p*p]
        self.patch_weight = read.parameter(kernel, (read.state_dict[kernel].shape[0], -1))
        self.patch_bias = read.parameter(VISUAL + "patch_embed.proj.bias")
        self.pos_embed = read.parameter(VISUAL + "pos_embed.weight")
        self.blocks = nn.ModuleList(VisionBlock(cfg, read, f"{VISUAL}blocks.{i}.") for i in range(cfg.depth))
        merged = cfg.hidden_size * cfg.spatial_merge_size**2
        self.merger = PatchMerger(read, VISUAL + "merger.", merged, postshuffle=False)
        self.deepstack = nn.ModuleList(
            PatchMerger(read, f"{VISUAL}deepstack_merger_list.{j}.", merged, postshuffle=True)
            for j in range(len(cfg.deepstack_indexes))
        )

    def forward(self, pixel_values: Tensor, grid_h: int, grid_w: int) -> tuple[Tensor, list[Tensor]]:
        """Pixels [N, C*T*p*p] (rows in merge-block order) -> LM tokens [N/m^2, D], DeepStack features."""
        cfg = self.cfg
        side = int(round(cfg.num_position_embeddings ** 0.5))
        vi = vision_inputs(grid_h, grid_w, cfg.spatial_merge_size, side, cfg.head_dim, cfg.rope_theta)
        embeds, deepstack = self.encode(pixel_values, *(torch.from_numpy(a) for a in
                                                         (vi.pos_index, vi.pos_weight, vi.rot_cos, vi.rot_sin)))
        return embeds, list(deepstack.unbind(0))

    def encode(self, pixel_values: Tensor, pos_index: Tensor, pos_weight: Tensor, rot_cos: Tensor,
               rot_sin: Tensor) -> tuple[Tensor, Tensor]:
        """The graph part: grid bookkeeping comes precomputed (``runtime/vision_inputs.py``).

        pixel_values [N, C*T*p*p]; pos_index int64 / pos_weight [N, 4]; rot_cos/sin [N, d]
        -> embeds [N/m^2, D], deepstack [K, N/m^2, D]
        """
        x = F.linear(pixel_values.to(self.patch_weight.dtype), self.patch_weight, self.patch_bias)
        x = x + (self.pos_embed[pos_index] * pos_weight[:, :, None].to(x.dtype)).sum(1)
        cos, sin = rot_cos[None].to(x.dtype), rot_sin[None].to(x.dtype)  # [1, N, d] broadcast over heads
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin)
            if i in self.cfg.deepstack_indexes:
                features.append(self.deepstack[self.cfg.deepstack_indexes.index(i)](x))
        embeds = self.merger(x)
        if not features:
            return embeds, embeds.new_zeros((0, *embeds.shape))
        return embeds, torch.stack(features)


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
        # one-hot [3, 1, 1, d/2]: a product and a sum export to any ONNX runtime (no gather on axis 0)
        self.register_buffer("onehot", F.one_hot(axis, 3).T.float()[:, None, None, :], persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        # positions: [3, B, T] int64 -> cos, sin: [B, 1, T, d] (broadcast over heads)
        freqs = positions[..., None].float() * self.inv_freq  # [3, B, T, d/2]
        picked = (freqs * self.onehot).sum(0)  # exact: one term is the frequency, the others are 0
        emb = torch.cat([picked, picked], dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, read: WeightReader, prefix: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.q_proj = read.linear(prefix + "self_attn.q_proj", bias=False)
        self.k_proj = read.linear(prefix + "self_attn.k_proj", bias=False)
        self.v_proj = read.linear(prefix + "self_attn.v_proj", bias=False)
        self.o_proj = read.linear(prefix + "self_attn.o_proj", bias=False)
        self.q_norm = RMSNorm(read.parameter(prefix + "self_attn.q_norm.weight"), cfg.rms_norm_eps)
        self.k_norm = RMSNorm(read.parameter(prefix + "self_attn.k_norm.weight"), cfg.rms_norm_eps)
        self.gate, self.up = read.linear(prefix + "mlp.gate_proj", False), read.linear(prefix + "mlp.up_proj", False)
        self.down = read.linear(prefix + "mlp.down_proj", False)
        self.input_norm = RMSNorm(read.parameter(prefix + "input_layernorm.weight"), cfg.rms_norm_eps)
        self.post_norm = RMSNorm(read.parameter(prefix + "post_attention_layernorm.weight"), cfg.rms_norm_eps)
        self.fused = False

    def project_qkv(self, x: Tensor, cos: Tensor, sin: Tensor, last_only: bool = False
                    ) -> tuple[Tensor, Tensor, Tensor]:
        # x: [B, T, D] -> q [B, Hq, T, d] (T = 1 with last_only: the last row's), k/v [B, Hkv, T, d];
        # rotary applied to q and k
        b, t, _ = x.shape
        h = self.input_norm(x)
        k = self.k_norm(self.k_proj(h).view(b, t, -1, self.cfg.head_dim)).transpose(1, 2)
        v = self.v_proj(h).view(b, t, -1, self.cfg.head_dim).transpose(1, 2)
        if last_only:
            h, cos_q, sin_q = h[:, -1:], cos[:, :, -1:], sin[:, :, -1:]
        else:
            cos_q, sin_q = cos, sin
        q = self.q_norm(self.q_proj(h).view(b, h.shape[1], -1, self.cfg.head_dim)).transpose(1, 2)
        return q * cos_q + rotate_half(q) * sin_q, k * cos + rotate_half(k) * sin, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
        # q: [B, Hq, T, d]; k/v: [B, Hkv, S, d]; visible: bool [B, 1, T, S] -> [B, Hq, T, d]
        return attention(q, k, v, visible, self.fused)

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        # x: residual [B, T, D]; attn: [B, Hq, T, d]
        b, _, t, _ = attn.shape
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, prefix: Sequence[KeySegment] = (),
                last_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """One layer over ``x`` [B, T, D] that also sees cached prefix segments, in order.

        prefix: (k, v, visible) per segment (see :data:`~minireranker.export.modeling.KeySegment`: K/V
        [1|B, Hkv, P, d], batch 1 shared by every row). ``x`` attends causally to itself after them.
        ``last_only``: only the last row's output is computed (the exit layer: the score reads it), so
        the result is [B, 1, D]. Returns it and ``x``'s own K and V [B, Hkv, T, d] (every row's).
        """
        q, k, v = self.project_qkv(x, cos, sin, last_only)
        t = x.shape[1]
        own = None if last_only else torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        out = segment_attention(q, [*prefix, (k, v, own)], self.fused)
        return self.finish(x[:, -1:] if last_only else x, out), k, v


class Qwen3VLTorch(nn.Module):
    """The pieces of Qwen3-VL the pipeline composes: vision tower, embeddings, layers, exit head."""

    def __init__(self, config: ModelConfig, sd: dict[str, Tensor]) -> None:
        super().__init__()
        self.config = config
        t, read = config.text, WeightReader(sd)
        self.vision = VisionTower(config.vision, read)
        self.embed = read.parameter(TEXT + "embed_tokens.weight")
        self.layers = nn.ModuleList(DecoderLayer(t, read, f"{TEXT}layers.{i}.") for i in range(t.num_layers))
        self.norm = RMSNorm(read.parameter(TEXT + "norm.weight"), t.rms_norm_eps)
        self.rotary = TextRotary(t)
        self.lm_head = sd[LM_HEAD]  # a plain tensor: only its yes/no rows are read (exit_head)
        self.transformers_names = {**read.names(self), "lm_head": LM_HEAD}

    def set_attention(self, mode: str) -> None:
        """'portable' (MatMul/Softmax) or 'fused' (SDPA -> ONNX Attention)."""
        if mode not in ("portable", "fused"):
            raise ValueError(f"attention must be 'portable' or 'fused', got {mode!r}")
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = mode == "fused"

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.embed[ids]

    def exit_head(self, yes_id: int, no_id: int) -> Tensor:
        """The two LM-head rows the score reads: [2, D]."""
        return self.lm_head[[yes_id, no_id]].clone()

    def score_hidden(self, hidden: Tensor, head_rows: Tensor) -> Tensor:
        """hidden: [B, D] at the exit layer -> logit(yes) - logit(no): [B]."""
        logits = self.norm(hidden) @ head_rows.T
        return logits[:, 0] - logits[:, 1]
