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
    """The pieces the pipeline composes: vision tower, embeddings, decoder layers, final norm, LM head rows
    (the score heads over the final norm are export/heads.py's).

    ``vision(pixels, grid_h, grid_w)`` -> (LM tokens [Nv, D], DeepStack features); ``vision.encode`` is the
    graph part. ``layers[i](x, cos, sin, prefix=[KeySegment, ...], last_only=False)`` -> (x, own K, own V),
    with ``project_qkv``/``attend``/``finish`` for callers that split it. ``rotary(positions [3, B, T])`` -> cos, sin.
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
        """Tensor ``name`` as a frozen parameter (reshaped to ``shape`` when given), sharing its memory: the
        state dict is read for this model alone and nothing writes a frozen weight, so a copy would only
        double the build's memory (a 2B checkpoint: 8 GB more)."""
        w = self.state_dict[name]
        param = nn.Parameter(w if shape is None else w.reshape(shape), requires_grad=False)
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
    return segment_attention(q, [(k, v, visible)], fused)


VISION_QUERY_BLOCKS = 8  # the vision tower's attention, in this many blocks of query rows (portable form)


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None, fused: bool,
                      blocks: int = VISION_QUERY_BLOCKS) -> Tensor:
    """:func:`attention` over ``blocks`` blocks of query rows, one after the other (portable form; fused:
    one call). Each row's softmax is its own, so the result is the same; only one block's scores
    [B, H, T/blocks, S] exist at a time. A 2B page's tower attends over 3,952 patches: 16 heads x 3,952^2
    float32 scores are 1.0 GB per tensor, and the whole-image form held two of them. The block bounds are
    computed from T in the graph, so the ONNX export keeps T dynamic (a block may be empty). With a mask
    (Qwen2.5-VL's windows) it is one call: an empty block of a masked form cannot be reshaped."""
    if fused or visible is not None:
        return attention(q, k, v, visible, fused)
    t = q.shape[2]
    out = []
    for i in range(blocks):
        lo, hi = t * i // blocks, t * (i + 1) // blocks
        out.append(attention(q[:, :, lo:hi], k, v, None, fused))
    return torch.cat(out, dim=2)


# A run of keys one query attends to: K and V [1|B, Hkv, P, d] (batch 1 is shared by every row of the
# batch, never copied per row) and which keys each query row sees: bool, broadcastable to [B, 1, T, P]
# ([B, 1, 1, P] for padding, [T, P] for a causal block), or None when every key is visible.
KeySegment = tuple[Tensor, Tensor, "Tensor | None"]


def segment_attention(q: Tensor, segments: list[KeySegment], fused: bool) -> Tensor:
    """Attention of ``q`` [B, Hq, T, d] over the keys of every segment, as if they were concatenated.

    The portable form never concatenates K/V, repeats them for grouped heads or expands a mask: each
    query head group is laid onto its K/V head (q as [B, Hkv, G*T, d], a view), each segment's scores
    get their own mask as an additive bias in its own broadcast shape, and one softmax is taken over all
    segments (a shared running max, then one normaliser), so the result equals softmax over the
    concatenation up to float32 rounding. Exported at opset 17 as MatMul, ReduceMax, Exp, ReduceSum (what
    TensorRT 10.3 parses). ``fused`` concatenates the segments and calls torch's SDPA (one ONNX
    ``Attention`` node at opset 23). Scores and softmax are float32 in both forms.
    """
    segments = [s for s in segments if s[0].shape[2] > 0]
    b, hq, t, d = q.shape
    hkv = segments[0][0].shape[1]
    scale = 1.0 / math.sqrt(d)
    if fused:
        n = max(b, *(k.shape[0] for k, _, _ in segments))
        ks = torch.cat([k.expand(n, -1, -1, -1) for k, _, _ in segments], dim=2)
        vs = torch.cat([v.expand(n, -1, -1, -1) for _, v, _ in segments], dim=2)
        mask = None
        if any(m is not None for _, _, m in segments):
            mask = torch.cat([torch.ones(n, 1, t, k.shape[2], dtype=torch.bool) if m is None else
                              torch.broadcast_to(m, (n, 1, t, k.shape[2])) for k, _, m in segments], dim=-1)
        return F.scaled_dot_product_attention(q, ks, vs, attn_mask=mask, scale=scale, enable_gqa=hq != hkv)
    g = hq // hkv
    qg = (q.float() * scale).reshape(b, hkv, g * t, d)  # query heads j*G..j*G+G-1 read K/V head j
    scores = []
    for k, _, visible in segments:
        s = qg @ k.float().transpose(-1, -2)  # [B, Hkv, G*T, P]
        if visible is not None:
            if visible.dim() not in (2, 4):
                raise ValueError(f"a key mask is [T, P] or [B, 1, T|1, P], got {tuple(visible.shape)}")
            bias = torch.where(visible, 0.0, torch.finfo(torch.float32).min)  # in the mask's own shape
            bias = bias[:, :, None] if bias.dim() == 4 else bias  # over [B, Hkv, G, T, P]
            s = (s.reshape(s.shape[0], hkv, g, t, -1) + bias).reshape(s.shape[0], hkv, g * t, -1)
        scores.append(s)
    top = scores[0].amax(-1, keepdim=True)
    for s in scores[1:]:
        top = torch.maximum(top, s.amax(-1, keepdim=True))
    weights = [torch.exp(s - top) for s in scores]
    total = weights[0].sum(-1, keepdim=True)
    for w in weights[1:]:
        total = total + w.sum(-1, keepdim=True)
    out = None
    if segments[0][1].dtype == torch.float32:  # normalise once, on the [.., G*T, d] output
        for w, (_, v, _) in zip(weights, segments):
            part = w @ v
            out = part if out is None else out + part
        out = out / total
    else:  # half precision: normalised weights, so no partial sum can overflow
        for w, (_, v, _) in zip(weights, segments):
            part = (w / total).to(v.dtype) @ v  # [B, Hkv, G*T, d]
            out = part if out is None else out + part
    return out.reshape(out.shape[0], hq, t, d)


@torch.library.custom_op("minireranker::band_attention", mutates_args=())
def band_attention(q: Tensor, system_k: Tensor, system_v: Tensor, doc_k: Tensor, doc_v: Tensor, doc_lens: Tensor,
                   instruction_k: Tensor, instruction_v: Tensor, own_k: Tensor, own_v: Tensor, scale: float,
                   num_kv_heads: int) -> Tensor:
    """The band's attention over its four segments as one op (the "plugin" attention form).

    Arguments in the order of ``engines/band_attention.py``'s ``band_attention_reference``: q [N, Hq, Q, d];
    system_k/v [Hkv, S, d]; doc_k/v [N, Hkv, T, d]; doc_lens int32 [N] (keys < doc_lens[n] are real, the rest
    padding); instruction_k/v [N, Hkv, I, d]; own_k/v [N, Hkv, Q, d] (causal) -> [N, Hq, Q, d]. ``scale`` (1/sqrt(d))
    and ``num_kv_heads`` (Hkv) are the node's attributes, given so that the exporter need not know shapes. Run
    eagerly it is the portable :func:`segment_attention`, so a graph using it computes what the portable graph
    does; the TorchScript exporter writes it as one ``minireranker.BandAttention`` node (export/plugin_attention.py).
    """
    if num_kv_heads != own_k.shape[1] or not math.isclose(scale, 1.0 / math.sqrt(q.shape[-1]), rel_tol=1e-6):
        raise ValueError(f"band_attention: scale {scale} and num_kv_heads {num_kv_heads} do not fit head dim "
                         f"{q.shape[-1]} and {own_k.shape[1]} K/V heads")
    visible = torch.arange(doc_k.shape[2], device=doc_k.device) < doc_lens[:, None].to(torch.int64)  # [N, T]
    causal = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool, device=q.device).tril()
    return segment_attention(q, [(system_k[None], system_v[None], None), (doc_k, doc_v, visible[:, None, None]),
                                 (instruction_k, instruction_v, None), (own_k, own_v, causal)], fused=False)


@band_attention.register_fake
def _band_attention_shape(q: Tensor, system_k: Tensor, system_v: Tensor, doc_k: Tensor, doc_v: Tensor,
                          doc_lens: Tensor, instruction_k: Tensor, instruction_v: Tensor, own_k: Tensor,
                          own_v: Tensor, scale: float, num_kv_heads: int) -> Tensor:
    return torch.empty_like(q)


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
