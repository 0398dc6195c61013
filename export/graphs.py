"""The engine segments as torch modules with explicit tensor inputs and outputs.

These are exactly what :mod:`minireranker.export.onnx_export` exports and what the torch reference
(:mod:`minireranker.export.reference`) runs, so the engines and the reference share one definition.
The system segment's K/V (``system_k``/``system_v``: [layers, 1, Hkv, S, d]) is an input: it is
computed once per bundle and stored once. Embedding lookups happen outside (the runtime gathers rows of
the embedding table, shared by every graph), so no graph carries the vocabulary.

::

    vision      pixels, grid bookkeeping (+ windows) ─▶ visual embeds [Nv, D], DeepStack [K, Nv, D]
    guide       doc embeds ─layers 0..g-1─▶ attention of the last doc token at g  [S+Td]
    doc_prefix  doc embeds ─layers 0..B (sees system K/V; DeepStack added)─▶ K/V of layers A..B
                instruction h_A ─layers A..B after the doc (sees it)─ layers B+1..E ─▶ its K/V of A..E
    query_head  query embeds ─layers 0..A-1 (sees system + instruction K/V)─▶ hidden [1, Q, D]
    band        hidden ×N ─layers A..B (sees system + each doc's + its instruction's K/V)─▶ hidden [N, Q, D]
    tail        hidden ─layers B+1..E (sees system + each instruction's K/V)─▶ norm ─▶ yes/no ─▶ score [N]

The instruction segment's layers 0..A-1 see only the system segment and themselves: they are computed once
per bundle (:func:`instruction_head`), like the system K/V.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..runtime.vision_inputs import vision_inputs
from .config import VisionConfig
from .modeling import KeySegment, TorchModel, band_attention


def _run_layers(model: TorchModel, first: int, x: Tensor, positions: Tensor, prefixes: list[list[KeySegment]],
                deepstack: Tensor | None = None, collect: int | None = None,
                last_only: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run ``len(prefixes)`` layers from ``first``; layer ``first + j`` sees the K/V segments ``prefixes[j]``.

    x [1|B, T, D]; positions [3, B, T]; segments as :data:`~minireranker.export.modeling.KeySegment`
    (batch-1 K/V shared by every row, never copied); deepstack [K, T, D] dense (zero rows off the visual
    tokens), added after layer i < K; ``last_only``: the last layer computes the last row only.
    Returns the hidden state and the own K/V of layers ``>= collect``.
    """
    cos, sin = model.rotary(positions, x.dtype)
    ks, vs = [], []
    for j, prefix in enumerate(prefixes):
        i = first + j
        x, k, v = model.layers[i](x, cos, sin, prefix, last_only=last_only and j == len(prefixes) - 1)
        if deepstack is not None and i < deepstack.shape[0]:
            x = x + deepstack[i][None]
        if collect is not None and i >= collect:
            ks.append(k[0])
            vs.append(v[0])
    return x, ks, vs


def _system(system_k: Tensor, system_v: Tensor) -> list[list[KeySegment]]:
    """One prefix per layer of a system K/V slice [L, 1, Hkv, S, d]: the system segment, every key visible."""
    return [[(k, v, None)] for k, v in zip(system_k.unbind(0), system_v.unbind(0))]


def vision_tensors(cfg: VisionConfig, grid_h: int, grid_w: int) -> tuple[Tensor, ...]:
    """The vision graph's grid inputs as tensors: pos_index, pos_weight, rot_cos, rot_sin, and window_id
    when the tower attends in windows (Qwen2.5-VL)."""
    vi = vision_inputs(grid_h, grid_w, cfg.spatial_merge_size, cfg.position_side, cfg.head_dim, cfg.rope_theta,
                       cfg.window_tokens)
    arrays = (vi.pos_index, vi.pos_weight, vi.rot_cos, vi.rot_sin) + ((vi.window_id,) if cfg.window_tokens else ())
    return tuple(torch.from_numpy(a) for a in arrays)


class VisionGraph(nn.Module):
    """The tower's ``encode``; ``window_id`` (the optional last input) only for a tower with windows."""

    def __init__(self, model: TorchModel) -> None:
        super().__init__()
        self.vision = model.vision

    def used_modules(self) -> list[nn.Module]:
        """What the export reads (export/onnx_export.py's cast_in_place casts these alone)."""
        return [self.vision]

    def forward(self, pixel_values: Tensor, pos_index: Tensor, pos_weight: Tensor, rot_cos: Tensor,
                rot_sin: Tensor, window_id: Tensor | None = None) -> tuple[Tensor, Tensor]:
        grid = (pos_index, pos_weight, rot_cos, rot_sin) + (() if window_id is None else (window_id,))
        return self.vision.encode(pixel_values, *grid)


class DocPrefixGraph(nn.Module):
    """Document tokens through layers 0..B, and the instruction segment after them through layers A..E.

    Returns the document's K/V of layers A..B [B-A+1, Hkv, Td, d] and the instruction's of layers A..E
    [E-A+1, Hkv, I, d]. In layers A..B the instruction follows the document in one causal sequence, so it
    sees every document token and the document never sees it: the query's view of the band, unchanged.
    """

    def __init__(self, model: TorchModel, band: tuple[int, int], exit_layer: int, has_deepstack: bool) -> None:
        super().__init__()
        self.model, self.band, self.exit_layer, self.has_deepstack = model, band, exit_layer, has_deepstack

    def used_modules(self) -> list[nn.Module]:
        return [self.model.rotary, *self.model.layers[: self.exit_layer + 1]]

    def forward(self, embeds: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor,
                instruction_hidden: Tensor, instruction_positions: Tensor,
                deepstack: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # embeds [1, Td, D]; positions [3, 1, Td]; system_k/v [E+1, 1, Hkv, S, d]; deepstack [K, Td, D]
        # instruction_hidden [1, I, D] (entering layer A); instruction_positions [3, 1, I]
        a, b = self.band
        td = embeds.shape[1]
        system = _system(system_k, system_v)
        x, _, _ = _run_layers(self.model, 0, embeds, positions, system[:a], deepstack)
        joint = torch.cat([x, instruction_hidden], dim=1)  # [1, Td + I, D]
        joint_positions = torch.cat([positions, instruction_positions], dim=2)
        if deepstack is not None:  # the instruction has no visual rows: zero DeepStack for it
            deepstack = torch.cat([deepstack, deepstack.new_zeros(
                deepstack.shape[0], instruction_hidden.shape[1], deepstack.shape[2])], dim=1)
        x, ks, vs = _run_layers(self.model, a, joint, joint_positions, system[a: b + 1], deepstack, collect=a)
        _, tk, tv = _run_layers(self.model, b + 1, x[:, td:], instruction_positions,
                                system[b + 1: self.exit_layer + 1], collect=b + 1, last_only=True)
        doc_k, doc_v = torch.stack([k[:, :td] for k in ks]), torch.stack([v[:, :td] for v in vs])
        instruction_k = torch.stack([k[:, td:] for k in ks] + tk)
        instruction_v = torch.stack([v[:, td:] for v in vs] + tv)
        return doc_k, doc_v, instruction_k, instruction_v


class GuideGraph(nn.Module):
    """Head-averaged softmax attention of the last document token at layer ``g`` over system + document."""

    def __init__(self, model: TorchModel, layer: int, has_deepstack: bool) -> None:
        super().__init__()
        self.model, self.layer, self.has_deepstack = model, layer, has_deepstack

    def used_modules(self) -> list[nn.Module]:
        return [self.model.rotary, *self.model.layers[: self.layer + 1]]

    def forward(self, embeds: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor,
                deepstack: Tensor | None = None) -> Tensor:
        # embeds [1, Td, D]; positions [3, 1, Td]; system_k/v [g+1, 1, Hkv, S, d] -> probs [S + Td]
        g = self.layer
        x, _, _ = _run_layers(self.model, 0, embeds, positions, _system(system_k, system_v)[:g], deepstack)
        cos, sin = self.model.rotary(positions, x.dtype)
        q, k, _ = self.model.layers[g].project_qkv(x, cos, sin, last_only=True)  # q [1, Hq, 1, d]
        k = torch.cat([system_k[g], k], dim=2)[0]  # [Hkv, S+Td, d]: one row's keys, once per document
        q = q[0, :, 0].reshape(k.shape[0], -1, q.shape[-1])  # [Hkv, G, d]: query heads j*G.. read K/V head j
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [Hkv, G, S+Td]
        return torch.softmax(scores, dim=-1).flatten(0, 1).mean(0)


class QueryHeadGraph(nn.Module):
    """Layers 0..A-1 over the query segment (it sees the system and instruction segments only there)."""

    def __init__(self, model: TorchModel, band_start: int) -> None:
        super().__init__()
        self.model, self.band_start = model, band_start

    def used_modules(self) -> list[nn.Module]:
        return [self.model.rotary, *self.model.layers[: self.band_start]]

    def forward(self, embeds: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor,
                instruction_k: Tensor, instruction_v: Tensor) -> Tensor:
        # embeds [1, Q, D]; positions [3, 1, Q]; system_k/v [A, 1, Hkv, S, d]; instruction_k/v [A, 1, Hkv, I, d]
        # -> hidden [1, Q, D]
        prefixes = [[(system_k[j], system_v[j], None), (instruction_k[j], instruction_v[j], None)]
                    for j in range(self.band_start)]
        x, _, _ = _run_layers(self.model, 0, embeds, positions, prefixes)
        return x


class BandGraph(nn.Module):
    """Layers A..B for N candidates: the query hidden (shared or per candidate) meets each document.

    ``plugin``: each layer's attention is one :func:`~minireranker.export.modeling.band_attention` op (one
    ``minireranker.BandAttention`` node in ONNX) instead of the portable MatMul/Softmax; the same numbers.
    """

    def __init__(self, model: TorchModel, band: tuple[int, int], plugin: bool = False) -> None:
        super().__init__()
        self.model, self.band, self.plugin = model, band, plugin

    def with_plugin(self) -> "BandGraph":
        """This band (the same model, not copied) in the plugin form."""
        return BandGraph(self.model, self.band, plugin=True)

    def used_modules(self) -> list[nn.Module]:
        return [self.model.rotary, *self.model.layers[self.band[0]: self.band[1] + 1]]

    def forward(self, hidden: Tensor, positions: Tensor, doc_k: Tensor, doc_v: Tensor, doc_mask: Tensor,
                instruction_k: Tensor, instruction_v: Tensor, system_k: Tensor, system_v: Tensor) -> Tensor:
        # hidden [1|N, Q, D]; positions [3, N, Q]; doc_k/v [N, B-A+1, Hkv, T, d]; doc_mask bool [N, T]
        # instruction_k/v [N, B-A+1, Hkv, I, d]; system_k/v [B-A+1, 1, Hkv, S, d] -> hidden [N, Q, D]
        # No K/V is concatenated or copied per candidate: the system segment (batch 1) is shared and the
        # padding mask is a [N, 1, 1, T] bias. (The shared hidden is expanded: two dynamic batch axes that
        # broadcast against each other do not export with torch.export, and layer A's projections of the
        # expanded rows are ~2% of the band and tail.)
        if self.plugin:
            return self._plugin_layers(hidden.expand(doc_k.shape[0], -1, -1), positions, doc_k, doc_v, doc_mask,
                                       instruction_k, instruction_v, system_k, system_v)
        padding = doc_mask[:, None, None, :]
        prefixes = [[(system_k[j], system_v[j], None), (doc_k[:, j], doc_v[:, j], padding),
                     (instruction_k[:, j], instruction_v[:, j], None)] for j in range(doc_k.shape[1])]
        x, _, _ = _run_layers(self.model, self.band[0], hidden.expand(doc_k.shape[0], -1, -1), positions, prefixes)
        return x

    def _plugin_layers(self, x: Tensor, positions: Tensor, doc_k: Tensor, doc_v: Tensor, doc_mask: Tensor,
                       instruction_k: Tensor, instruction_v: Tensor, system_k: Tensor, system_v: Tensor) -> Tensor:
        # x [N, Q, D]; the rest as forward's. What a decoder layer's forward does, with its attention the op:
        # doc_lens counts each row's real keys, which the runtime writes first (padding ends the row:
        # runtime/reranker.py, Reranker._band), so keys < doc_lens[n] are exactly the row's True ones.
        cos, sin = self.model.rotary(positions, x.dtype)
        doc_lens = doc_mask.to(torch.int32).sum(-1, dtype=torch.int32)  # [N]
        for j in range(doc_k.shape[1]):
            layer = self.model.layers[self.band[0] + j]
            q, k, v = layer.project_qkv(x, cos, sin)
            out = band_attention(q, system_k[j, 0], system_v[j, 0], doc_k[:, j], doc_v[:, j], doc_lens,
                                 instruction_k[:, j], instruction_v[:, j], k, v, 1.0 / math.sqrt(q.shape[-1]),
                                 k.shape[1])  # [N, Hq, Q, d]
            x = layer.finish(x, out)
        return x


class TailGraph(nn.Module):
    """Layers B+1..E (the query sees the system and its instruction's K/V), then the score head
    (export/heads.py: the final norm, then the yes/no rows or a classifier)."""

    def __init__(self, model: TorchModel, first: int, head: nn.Module) -> None:
        super().__init__()
        self.model, self.first = model, first
        self.head = head

    def used_modules(self) -> list[nn.Module]:
        return [self.model.rotary, *self.model.layers[self.first:], self.head]

    def forward(self, hidden: Tensor, positions: Tensor, instruction_k: Tensor, instruction_v: Tensor,
                system_k: Tensor, system_v: Tensor) -> Tensor:
        # hidden [N, Q, D]; positions [3, N, Q]; instruction_k/v [N, E-B, Hkv, I, d];
        # system_k/v [E-B, 1, Hkv, S, d] (both may be empty) -> score [N]
        prefixes = [[(system_k[j], system_v[j], None), (instruction_k[:, j], instruction_v[:, j], None)]
                    for j in range(system_k.shape[0])]
        # the exit layer computes the last row only: the score reads nothing else
        x, _, _ = _run_layers(self.model, self.first, hidden, positions, prefixes, last_only=True)
        return self.head(x[:, -1])


@torch.no_grad()
def system_kv(model: TorchModel, system_ids: list[int], num_layers: int) -> tuple[Tensor, Tensor]:
    """K/V of the system segment for layers 0..num_layers-1: [num_layers, 1, Hkv, S, d] each."""
    from ..runtime.template import text_positions

    if not system_ids:  # a format without a system segment (jina-reranker-m0's): S = 0
        t = model.config.text
        empty = torch.zeros(num_layers, 1, t.num_kv_heads, 0, t.head_dim, dtype=model.embed.dtype)
        return empty, empty.clone()
    x = model.embed_tokens(torch.tensor(system_ids))[None]
    cos, sin = model.rotary(torch.from_numpy(text_positions(0, len(system_ids)))[:, None], x.dtype)
    ks, vs = [], []
    for layer in model.layers[:num_layers]:
        x, k, v = layer(x, cos, sin)
        ks.append(k)
        vs.append(v)
    return torch.stack(ks), torch.stack(vs)


@torch.no_grad()
def instruction_head(model: TorchModel, ids: list[int], positions: Tensor, system_k: Tensor,
                     system_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The instruction segment through layers 0..A-1 (A = len(system_k)), where it sees the system only.

    ids: the instruction's I tokens; positions [3, 1, I]; system_k/v [A, 1, Hkv, S, d] ->
    (hidden entering layer A [1, I, D], K and V of layers 0..A-1 [A, 1, Hkv, I, d] each).
    """
    x = model.embed_tokens(torch.tensor(ids))[None]
    x, ks, vs = _run_layers(model, 0, x, positions, _system(system_k, system_v), collect=0)
    empty = x.new_zeros(0, 1, system_k.shape[2], len(ids), system_k.shape[4])
    k = torch.stack(ks)[:, None] if ks else empty
    v = torch.stack(vs)[:, None] if vs else empty
    return x, k, v


def build_graphs(model: TorchModel, band: tuple[int, int], exit_layer: int, head: nn.Module,
                 guide_layer: int | None) -> dict[str, nn.Module]:
    """The segments one spec needs (``guide`` only with the self guide, ``query_head`` only if A > 0)."""
    has_ds = bool(model.config.vision.deepstack_indexes)
    graphs: dict[str, nn.Module] = {
        "vision": VisionGraph(model),
        "doc_prefix": DocPrefixGraph(model, band, exit_layer, has_ds),
        "band": BandGraph(model, band),
        "tail": TailGraph(model, band[1] + 1, head),
    }
    if guide_layer is not None:
        graphs["guide"] = GuideGraph(model, guide_layer, has_ds)
    if band[0] > 0:
        graphs["query_head"] = QueryHeadGraph(model, band[0])
    assert exit_layer >= band[1]
    return graphs
