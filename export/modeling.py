"""What every architecture's torch model offers, and the building blocks they share.

An architecture's modules live beside its adapter (``export/arch/<arch>_torch.py``); the graphs, the
reference and the calibration only see the :class:`TorchModel` interface, and get a model from
:func:`build_model`, which asks the registry. Every module takes its inputs explicitly (hidden states,
3-D positions, prefix K/V, masks) and keeps no state between calls.

Shapes: ``T`` tokens, ``P`` prefix (cached) tokens, ``B`` batch, ``Hq``/``Hkv`` query/KV heads, ``d`` head dim.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


class TorchModel(Protocol):
    """The pieces the pipeline composes: vision tower, embeddings, decoder layers, final norm, exit head.

    ``vision(pixels, grid_h, grid_w)`` -> (LM tokens [Nv, D], DeepStack features); ``vision.encode`` is the
    graph part. ``layers[i](x, cos, sin, prefix_k, prefix_v, prefix_visible)`` -> (x, own K, own V), with
    ``project_qkv``/``attend``/``finish`` for callers that split it. ``rotary(positions [3, B, T])`` -> cos, sin.
    """

    config: ModelConfig
    vision: nn.Module
    layers: nn.ModuleList
    rotary: nn.Module
    norm: nn.Module
    embed: Tensor                        # [vocab, D]
    lm_head: Tensor                      # [vocab, D]
    transformers_names: dict[str, str]   # parameter path (and "lm_head") -> the checkpoint tensor it came from

    def set_attention(self, mode: str) -> None: ...
    def embed_tokens(self, ids: Tensor) -> Tensor: ...
    def exit_head(self, yes_id: int, no_id: int) -> Tensor: ...
    def score_hidden(self, hidden: Tensor, head_rows: Tensor) -> Tensor: ...


def build_model(config: ModelConfig, state_dict: dict[str, Tensor]) -> TorchModel:
    """The torch model of ``config``'s architecture over ``state_dict`` (from ``checkpoint.load_state_dict``)."""
    from .arch import architecture_for

    return architecture_for(config.model_type).build_model(config, state_dict)


class WeightReader:
    """Hands out a state dict's tensors as frozen parameters and remembers each one's checkpoint name.

    A model built through one reader can then say which checkpoint tensor each of its parameters came
    from (:meth:`names`), so the training map back to transformers' names is derived, never written out.
    """

    def __init__(self, state_dict: dict[str, Tensor]) -> None:
        self.state_dict = state_dict
        self._names: dict[int, str] = {}

    def parameter(self, name: str, shape: tuple[int, ...] | None = None) -> nn.Parameter:
        """A frozen copy of tensor ``name`` (reshaped to ``shape`` when given)."""
        w = self.state_dict[name]
        param = nn.Parameter((w if shape is None else w.reshape(shape)).clone(), requires_grad=False)
        self._names[id(param)] = name
        return param

    def linear(self, prefix: str, bias: bool = True) -> nn.Linear:
        """``nn.Linear`` over ``{prefix}.weight`` [out, in] (and ``{prefix}.bias``)."""
        w = self.state_dict[prefix + ".weight"]
        layer = nn.Linear(w.shape[1], w.shape[0], bias=bias)
        layer.weight = self.parameter(prefix + ".weight")
        if bias:
            layer.bias = self.parameter(prefix + ".bias")
        return layer

    def layer_norm(self, prefix: str, eps: float = 1e-6) -> nn.LayerNorm:
        """``nn.LayerNorm`` over ``{prefix}.weight`` and ``{prefix}.bias``."""
        norm = nn.LayerNorm(self.state_dict[prefix + ".weight"].shape[0], eps=eps)
        norm.weight, norm.bias = self.parameter(prefix + ".weight"), self.parameter(prefix + ".bias")
        return norm

    def names(self, module: nn.Module) -> dict[str, str]:
        """Parameter path in ``module`` -> the checkpoint tensor it was read from."""
        return {path: self._names[id(p)] for path, p in module.named_parameters()}


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None, fused: bool) -> Tensor:
    """Scaled dot-product attention with grouped K/V heads.

    q: [B, Hq, T, d]; k/v: [B, Hkv, S, d]; visible: bool [B, 1, T, S] or None -> [B, Hq, T, d].
    ``fused`` uses torch's SDPA, which the ONNX exporter turns into one ``Attention`` node (opset 23);
    otherwise MatMul/Softmax ("portable": what TensorRT 10.3 on JetPack 6 parses). The softmax runs in
    float32 either way.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=1.0 / math.sqrt(q.shape[-1]),
                                              enable_gqa=q.shape[1] != k.shape[1])
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if visible is not None:
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


class RMSNorm(nn.Module):
    def __init__(self, weight: Tensor, eps: float) -> None:
        super().__init__()
        # a WeightReader parameter is kept as is, so the reader still knows its checkpoint name
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)
