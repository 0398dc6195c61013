"""Qwen2-VL's torch modules, export-friendly, loaded from a checkpoint's tensors (transformers' names).

The vision tower: a 14-pixel patch convolution without bias (read as a matrix), blocks of norm ->
attention with the 2-D rotary -> norm -> MLP, and the merger (norm, then ``merge x merge`` neighbours
concatenated, Linear, exact GELU, Linear). No learned position table and no DeepStack: ``encode``
ignores ``pos_index``/``pos_weight`` (the vision graph's signature is shared by every architecture, and
the exporter may drop inputs a graph does not read) and returns an empty DeepStack [0, tokens, D].
The norm and the MLP follow :class:`~..config.VisionConfig` (``norm``, ``mlp``), so Qwen2.5-VL's tower
(:mod:`.qwen2_5_vl_torch`) is this one with windows. The decoder is :mod:`.decoder_torch`'s (q/k/v biases,
no q/k norm, MRoPE in sections). Parity with transformers is tested at fp32 atol 1e-5.

Shapes: ``N`` patches of one image, ``Dv`` vision width, ``Hv`` vision heads, ``d`` their head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...runtime.vision_inputs import vision_inputs
from ..config import VisionConfig
from ..modeling import RMSNorm, WeightReader, blocked_attention, rotate_half
from .common import VISUAL
from .decoder_torch import QwenVLTorch

NORM_EPS = 1e-6  # every norm of both towers (transformers hard-codes it)


def vision_norm(cfg: VisionConfig, read: WeightReader, prefix: str) -> nn.Module:
    """LayerNorm (Qwen2-VL) or RMSNorm (Qwen2.5-VL) over ``{prefix}.weight`` (and ``.bias``)."""
    if cfg.norm == "rms_norm":
        return RMSNorm(read.parameter(prefix + ".weight"), NORM_EPS)
    return read.layer_norm(prefix, eps=NORM_EPS)


class QuickGeluMLP(nn.Module):
    """fc2(quick_gelu(fc1(x))), quick_gelu(x) = x * sigmoid(1.702 x) (Qwen2-VL)."""

    def __init__(self, read: WeightReader, prefix: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = read.linear(prefix + "fc1"), read.linear(prefix + "fc2")

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))


class GatedSiluMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), every projection with a bias (Qwen2.5-VL's vision MLP)."""

    def __init__(self, read: WeightReader, prefix: str) -> None:
        super().__init__()
        self.gate, self.up = read.linear(prefix + "gate_proj"), read.linear(prefix + "up_proj")
        self.down = read.linear(prefix + "down_proj")

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


VISION_MLPS = {"quick_gelu": QuickGeluMLP, "silu_gated": GatedSiluMLP}


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, read: WeightReader, prefix: str) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.norm1, self.norm2 = vision_norm(cfg, read, prefix + "norm1"), vision_norm(cfg, read, prefix + "norm2")
        self.qkv, self.proj = read.linear(prefix + "attn.qkv"), read.linear(prefix + "attn.proj")
        self.mlp = VISION_MLPS[cfg.mlp](read, prefix + "mlp.")
        self.fused = False

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, visible: Tensor | None = None) -> Tensor:
        # x: [N, Dv]; cos/sin: [1, N, d]; visible: bool [1, 1, N, N] (a window mask) or None (the whole image)
        n = x.shape[0]
        q, k, v = self.qkv(self.norm1(x)).reshape(n, 3, self.num_heads, -1).permute(1, 2, 0, 3)  # [Hv, N, d] each
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attn = blocked_attention(q[None], k[None], v[None], visible, self.fused)[0]  # [Hv, N, d]
        x = x + self.proj(attn.transpose(0, 1).reshape(n, -1))
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Norm each patch (``ln_q``), concatenate ``merge x merge`` neighbours, then Linear, GELU, Linear."""

    def __init__(self, cfg: VisionConfig, read: WeightReader, prefix: str) -> None:
        super().__init__()
        self.merged = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = vision_norm(cfg, read, prefix + "ln_q")
        self.fc1, self.fc2 = read.linear(prefix + "mlp.0"), read.linear(prefix + "mlp.2")

    def forward(self, x: Tensor) -> Tensor:
        # x: [N, Dv] in merge-block order -> [N/m^2, D]
        return self.fc2(F.gelu(self.fc1(self.ln_q(x).reshape(-1, self.merged))))


class VisionTower(nn.Module):
    """Pixels of one image -> LM tokens [N/merge^2, D]; every block attends over the whole image."""

    def __init__(self, cfg: VisionConfig, read: WeightReader) -> None:
        super().__init__()
        self.cfg = cfg
        kernel = VISUAL + "patch_embed.proj.weight"  # conv kernel [Dv, C, T, p, p] as a matrix [Dv, C*T*p*p]
        self.patch_weight = read.parameter(kernel, (read.state_dict[kernel].shape[0], -1))
        self.blocks = nn.ModuleList(VisionBlock(cfg, read, f"{VISUAL}blocks.{i}.") for i in range(cfg.depth))
        self.merger = PatchMerger(cfg, read, VISUAL + "merger.")

    def forward(self, pixel_values: Tensor, grid_h: int, grid_w: int) -> tuple[Tensor, list[Tensor]]:
        """Pixels [N, C*T*p*p] (rows in merge-block order) -> LM tokens [N/m^2, D], no DeepStack features."""
        cfg = self.cfg
        vi = vision_inputs(grid_h, grid_w, cfg.spatial_merge_size, 0, cfg.head_dim, cfg.rope_theta, cfg.window_tokens)
        grid = [vi.pos_index, vi.pos_weight, vi.rot_cos, vi.rot_sin] + ([vi.window_id] if cfg.window_tokens else [])
        embeds, _ = self.encode(pixel_values, *(torch.from_numpy(a) for a in grid))
        return embeds, []

    def block_masks(self, window_id: Tensor | None) -> list[Tensor | None]:
        """Which patches each block's attention sees: None (all of them) here; windows in Qwen2.5-VL."""
        return [None] * len(self.blocks)

    def encode(self, pixel_values: Tensor, pos_index: Tensor, pos_weight: Tensor, rot_cos: Tensor,
               rot_sin: Tensor, window_id: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The graph part: grid bookkeeping comes precomputed (``runtime/vision_inputs.py``).

        pixel_values [N, C*T*p*p]; pos_index / pos_weight [N, 4] (not read: no learned position table);
        rot_cos/sin [N, d]; window_id int64 [N] (towers with windows only) -> embeds [N/m^2, D], deepstack
        [0, N/m^2, D]
        """
        x = F.linear(pixel_values.to(self.patch_weight.dtype), self.patch_weight)  # [N, Dv]
        cos, sin = rot_cos[None].to(x.dtype), rot_sin[None].to(x.dtype)  # [1, N, d] broadcast over heads
        for block, visible in zip(self.blocks, self.block_masks(window_id)):
            x = block(x, cos, sin, visible)
        embeds = self.merger(x)
        return embeds, embeds.new_zeros((0, *embeds.shape))


class Qwen2VLTorch(QwenVLTorch):
    """The pieces of Qwen2-VL the pipeline composes: vision tower, embeddings, layers, exit head."""

    vision_tower = VisionTower
