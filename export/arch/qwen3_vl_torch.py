"""Qwen3-VL's torch modules, export-friendly, loaded from a checkpoint's tensors (transformers' names).

The vision tower is here; the decoder (:class:`DecoderLayer`, :class:`TextRotary`) and the model around
them are shared with the other Qwen-VLs in :mod:`.decoder_torch` (imported here under the same names).

Every module takes its inputs explicitly (hidden states, 3-D positions, prefix K/V, masks) and keeps no
state between calls: transformers keeps ``rope_deltas`` in the module, we pass positions instead. The
math follows the published architecture; parity with transformers is tested at fp32 atol 1e-5.
The weight names are those of :mod:`.qwen3_vl` (its module docstring lists them).

Shapes: ``T`` tokens, ``P`` prefix (cached) tokens, ``B`` batch, ``Hq``/``Hkv`` query/KV heads, ``d`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...runtime.vision_inputs import vision_inputs
from ..config import VisionConfig
from ..modeling import WeightReader, blocked_attention, rotate_half
from .common import VISUAL
from .decoder_torch import DecoderLayer, QwenVLTorch, TextRotary

__all__ = ["DecoderLayer", "PatchMerger", "Qwen3VLTorch", "TextRotary", "VisionBlock", "VisionTower"]


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
        attn = blocked_attention(q[None], k[None], v[None], None, self.fused)[0]  # [Hv, N, d]
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
        vi = vision_inputs(grid_h, grid_w, cfg.spatial_merge_size, cfg.position_side, cfg.head_dim, cfg.rope_theta)
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


class Qwen3VLTorch(QwenVLTorch):
    """The pieces of Qwen3-VL the pipeline composes: vision tower (DeepStack), embeddings, layers, exit head.

    The decoder (q/k norms, interleaved MRoPE) is :mod:`.decoder_torch`'s, driven by the text config.
    """

    vision_tower = VisionTower
