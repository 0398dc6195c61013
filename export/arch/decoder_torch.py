"""The text side every Qwen-VL shares, as torch modules: MRoPE, decoder layers, and the model around a tower.

Qwen3-VL, Qwen2-VL and Qwen2.5-VL differ in their decoders only where :class:`~..config.TextConfig` says
so: q/k/v biases (``attention_bias``), per-head q/k RMS norms (``qk_norm``) and how the MRoPE frequencies
are split among the t, h and w axes (``mrope_interleaved``). :class:`QwenVLTorch` is the
:class:`~..modeling.TorchModel` of all three; each architecture's module names its vision tower.

Shapes: ``T`` tokens, ``P`` prefix (cached) tokens, ``B`` batch, ``Hq``/``Hkv`` query/KV heads, ``d`` head dim.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, TextConfig, VisionConfig
from ..modeling import KeySegment, RMSNorm, WeightReader, attention, rotate_half, segment_attention
from .common import EMBED, LM_HEAD, TEXT


def mrope_axes(cfg: TextConfig) -> Tensor:
    """Which position axis (0 t, 1 h, 2 w) each of the d/2 rotary frequencies reads: int64 [d/2].

    Interleaved (Qwen3-VL): frequency j reads axis ``j mod 3`` up to 3 * section[a], then t. In sections
    (Qwen2-VL, Qwen2.5-VL): the first ``section[0]`` frequencies read t, the next ``section[1]`` h, the rest w.
    """
    axis = torch.zeros(cfg.head_dim // 2, dtype=torch.long)
    t, h, _ = cfg.mrope_section
    if cfg.mrope_interleaved:
        for a, offset in ((1, 1), (2, 2)):
            axis[offset: cfg.mrope_section[a] * 3: 3] = a
    else:
        axis[t: t + h] = 1
        axis[t + h:] = 2
    return axis


class TextRotary(nn.Module):
    """MRoPE: each frequency takes its position from axis t, h or w (:func:`mrope_axes`).

    Its angles are always float32, in an fp16 graph too (``keeps_float32``: export's cast_in_place leaves its
    buffers as they are; only cos and sin are cast): an fp16 ``inv_freq`` is off by up to 2^-11 of itself,
    which at position p turns an angle by up to p * 2^-11 rad, 0.15 rad at p = 300. On the 2B preset that put
    the instruction's keys 0.037 (of their largest value) off the fp32 reference, against 0.0009 for its values.
    """

    keeps_float32 = True

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        d = cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2).float() / d), persistent=False)
        # one-hot [3, 1, 1, d/2]: a product and a sum export to any ONNX runtime (no gather on axis 0)
        self.register_buffer("onehot", F.one_hot(mrope_axes(cfg), 3).T.float()[:, None, None, :], persistent=False)

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
        bias = cfg.attention_bias
        self.q_proj = read.linear(prefix + "self_attn.q_proj", bias=bias)
        self.k_proj = read.linear(prefix + "self_attn.k_proj", bias=bias)
        self.v_proj = read.linear(prefix + "self_attn.v_proj", bias=bias)
        self.o_proj = read.linear(prefix + "self_attn.o_proj", bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(read.parameter(prefix + "self_attn.q_norm.weight"), cfg.rms_norm_eps)
            self.k_norm = RMSNorm(read.parameter(prefix + "self_attn.k_norm.weight"), cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()
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


class QwenVLTorch(nn.Module):
    """The pieces the pipeline composes: vision tower, embeddings, layers, exit head (any Qwen-VL).

    A subclass names its tower in ``vision_tower``: a module built as ``vision_tower(config.vision, reader)``
    whose ``forward(pixels, grid_h, grid_w)`` gives (LM tokens [Nv, D], DeepStack features) and whose
    ``encode`` is the vision graph.
    """

    vision_tower: Callable[[VisionConfig, WeightReader], nn.Module]

    def __init__(self, config: ModelConfig, sd: dict[str, Tensor]) -> None:
        super().__init__()
        self.config = config
        t, read = config.text, WeightReader(sd)
        self.vision = self.vision_tower(config.vision, read)
        self.embed = read.parameter(EMBED)
        self.layers = nn.ModuleList(DecoderLayer(t, read, f"{TEXT}layers.{i}.") for i in range(t.num_layers))
        self.norm = RMSNorm(read.parameter(TEXT + "norm.weight"), t.rms_norm_eps)
        self.rotary = TextRotary(t)
        self.lm_head = sd[LM_HEAD]  # a plain tensor: the yes/no head reads two rows (export/heads.py)
        self.transformers_names = {**read.names(self), "lm_head": LM_HEAD}

    def set_attention(self, mode: str) -> None:
        """'portable' (MatMul/Softmax) or 'fused' (SDPA -> ONNX Attention)."""
        if mode not in ("portable", "fused"):
            raise ValueError(f"attention must be 'portable' or 'fused', got {mode!r}")
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = mode == "fused"

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.embed[ids.long()]  # torch.tensor([]) is float: an empty segment (no system) stays valid
