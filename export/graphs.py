"""The engine segments as torch modules with explicit tensor inputs and outputs.

These are exactly what :mod:`minireranker.export.onnx_export` exports and what the torch reference
(:mod:`minireranker.export.reference`) runs, so the engines and the reference share one definition.
The system segment's K/V (``system_k``/``system_v``: [layers, 1, Hkv, S, d]) is an input: it is
computed once per bundle and stored once. Embedding lookups happen outside (the runtime gathers rows of
the embedding table, shared by every graph), so no graph carries the vocabulary.

::

    vision      pixels, grid bookkeeping ─▶ visual embeds [Nv, D], DeepStack [K, Nv, D]
    guide       doc embeds ─layers 0..g-1─▶ attention of the last doc token at g  [S+Td]
    doc_prefix  doc embeds ─layers 0..B (sees system K/V; DeepStack added)─▶ K/V of layers A..B
    query_head  query embeds ─layers 0..A-1 (sees system K/V)─▶ hidden [1, Q, D]
    band        hidden ×N ─layers A..B (sees system + each doc's K/V, padded + masked)─▶ hidden [N, Q, D]
    tail        hidden ─layers B+1..E (sees system K/V)─▶ final norm ─▶ yes/no rows ─▶ score [N]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..runtime.vision_inputs import vision_inputs
from .config import VisionConfig
from .modeling import TorchModel


def _run_layers(model: TorchModel, first: int, x: Tensor, positions: Tensor, prefix_k: list[Tensor],
                prefix_v: list[Tensor], visible: Tensor, deepstack: Tensor | None = None, count: int | None = None,
                collect: int | None = None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run ``count`` layers from ``first``; layer ``first + j`` sees prefix K/V ``prefix_k[j]``.

    x [B, T, D]; positions [3, B, T]; prefix_k[j] [B, Hkv, P, d]; visible bool [B, 1|T, P];
    deepstack [K, T, D] dense (zero rows off the visual tokens), added after layer i < K.
    Returns the hidden state and the own K/V of layers ``>= collect``.
    """
    cos, sin = model.rotary(positions, x.dtype)
    ks, vs = [], []
    count = len(prefix_k) if count is None else count
    for j in range(count):
        i = first + j
        x, k, v = model.layers[i](x, cos, sin, prefix_k[j], prefix_v[j], visible)
        if deepstack is not None and i < deepstack.shape[0]:
            x = x + deepstack[i][None]
        if collect is not None and i >= collect:
            ks.append(k[0])
            vs.append(v[0])
    return x, ks, vs


def vision_tensors(cfg: VisionConfig, grid_h: int, grid_w: int) -> tuple[Tensor, ...]:
    """The vision graph's grid inputs (pos_index, pos_weight, rot_cos, rot_sin) as tensors."""
    side = int(round(cfg.num_position_embeddings ** 0.5))
    vi = vision_inputs(grid_h, grid_w, cfg.spatial_merge_size, side, cfg.head_dim, cfg.rope_theta)
    return tuple(torch.from_numpy(a) for a in (vi.pos_index, vi.pos_weight, vi.rot_cos, vi.rot_sin))


class VisionGraph(nn.Module):
    def __init__(self, model: TorchModel) -> None:
        super().__init__()
        self.vision = model.vision

    def forward(self, pixel_values: Tensor, pos_index: Tensor, pos_weight: Tensor, rot_cos: Tensor,
                rot_sin: Tensor) -> tuple[Tensor, Tensor]:
        return self.vision.encode(pixel_values, pos_index, pos_weight, rot_cos, rot_sin)


class DocPrefixGraph(nn.Module):
    """Document tokens through layers 0..B; returns the K/V of layers A..B: [B-A+1, Hkv, Td, d] each."""

    def __init__(self, model: TorchModel, band: tuple[int, int], has_deepstack: bool) -> None:
        super().__init__()
        self.model, self.band, self.has_deepstack = model, band, has_deepstack

    def forward(self, embeds: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor,
                deepstack: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # embeds [1, Td, D]; positions [3, 1, Td]; system_k/v [B+1, 1, Hkv, S, d]; deepstack [K, Td, D]
        a, b = self.band
        visible = torch.ones(1, 1, system_k.shape[3], dtype=torch.bool)
        _, ks, vs = _run_layers(self.model, 0, embeds, positions, list(system_k.unbind(0)),
                                list(system_v.unbind(0)), visible, deepstack, count=b + 1, collect=a)
        return torch.stack(ks), torch.stack(vs)


class GuideGraph(nn.Module):
    """Head-averaged softmax attention of the last document token at layer ``g`` over system + document."""

    def __init__(self, model: TorchModel, layer: int, has_deepstack: bool) -> None:
        super().__init__()
        self.model, self.layer, self.has_deepstack = model, layer, has_deepstack

    def forward(self, embeds: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor,
                deepstack: Tensor | None = None) -> Tensor:
        # embeds [1, Td, D]; positions [3, 1, Td]; system_k/v [g+1, 1, Hkv, S, d] -> probs [S + Td]
        g = self.layer
        visible = torch.ones(1, 1, system_k.shape[3], dtype=torch.bool)
        x, _, _ = _run_layers(self.model, 0, embeds, positions, list(system_k.unbind(0)),
                              list(system_v.unbind(0)), visible, deepstack, count=g)
        cos, sin = self.model.rotary(positions, x.dtype)
        q, k, _ = self.model.layers[g].project_qkv(x, cos, sin)
        k = torch.cat([system_k[g], k], dim=2)  # [1, Hkv, S+Td, d]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q[:, :, -1:].float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return torch.softmax(scores, dim=-1)[0, :, 0].mean(0)


class QueryHeadGraph(nn.Module):
    """Layers 0..A-1 over the query alone (it sees only the system K/V there)."""

    def __init__(self, model: TorchModel, band_start: int) -> None:
        super().__init__()
        self.model, self.band_start = model, band_start

    def forward(self, embeds: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor) -> Tensor:
        # embeds [1, Q, D]; positions [3, 1, Q]; system_k/v [A, 1, Hkv, S, d] -> hidden [1, Q, D]
        visible = torch.ones(1, 1, system_k.shape[3], dtype=torch.bool)
        x, _, _ = _run_layers(self.model, 0, embeds, positions, list(system_k.unbind(0)),
                              list(system_v.unbind(0)), visible, count=self.band_start)
        return x


class BandGraph(nn.Module):
    """Layers A..B for N candidates: the query hidden (shared or per candidate) meets each document."""

    def __init__(self, model: TorchModel, band: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.band = model, band

    def forward(self, hidden: Tensor, positions: Tensor, doc_k: Tensor, doc_v: Tensor, doc_mask: Tensor,
                system_k: Tensor, system_v: Tensor) -> Tensor:
        # hidden [1|N, Q, D]; positions [3, N, Q]; doc_k/v [N, B-A+1, Hkv, T, d]; doc_mask bool [N, T]
        # system_k/v [B-A+1, 1, Hkv, S, d] -> hidden [N, Q, D]
        n, s = doc_k.shape[0], system_k.shape[3]
        x = hidden.expand(n, -1, -1)
        visible = torch.cat([torch.ones(n, s, dtype=torch.bool), doc_mask], dim=1)[:, None]  # [N, 1, S+T]
        pk = [torch.cat([system_k[j].expand(n, -1, -1, -1), doc_k[:, j]], dim=2) for j in range(doc_k.shape[1])]
        pv = [torch.cat([system_v[j].expand(n, -1, -1, -1), doc_v[:, j]], dim=2) for j in range(doc_v.shape[1])]
        x, _, _ = _run_layers(self.model, self.band[0], x, positions, pk, pv, visible)
        return x


class TailGraph(nn.Module):
    """Layers B+1..E (query sees the system K/V only), then the exit score logit(yes) - logit(no)."""

    def __init__(self, model: TorchModel, first: int, head_rows: Tensor) -> None:
        super().__init__()
        self.model, self.first = model, first
        self.head_rows = nn.Parameter(head_rows.clone(), requires_grad=False)

    def forward(self, hidden: Tensor, positions: Tensor, system_k: Tensor, system_v: Tensor) -> Tensor:
        # hidden [N, Q, D]; positions [3, N, Q]; system_k/v [E-B, 1, Hkv, S, d] (may be empty) -> score [N]
        n, s = hidden.shape[0], system_k.shape[3]
        visible = torch.ones(n, 1, s, dtype=torch.bool)
        pk = [system_k[j].expand(n, -1, -1, -1) for j in range(system_k.shape[0])]
        pv = [system_v[j].expand(n, -1, -1, -1) for j in range(system_v.shape[0])]
        x, _, _ = _run_layers(self.model, self.first, hidden, positions, pk, pv, visible)
        return self.model.score_hidden(x[:, -1], self.head_rows)


@torch.no_grad()
def system_kv(model: TorchModel, system_ids: list[int], num_layers: int) -> tuple[Tensor, Tensor]:
    """K/V of the system segment for layers 0..num_layers-1: [num_layers, 1, Hkv, S, d] each."""
    from ..runtime.template import text_positions

    x = model.embed_tokens(torch.tensor(system_ids))[None]
    cos, sin = model.rotary(torch.from_numpy(text_positions(0, len(system_ids)))[:, None], x.dtype)
    ks, vs = [], []
    for layer in model.layers[:num_layers]:
        x, k, v = layer(x, cos, sin, None, None, None)
        ks.append(k)
        vs.append(v)
    return torch.stack(ks), torch.stack(vs)


def build_graphs(model: TorchModel, band: tuple[int, int], exit_layer: int, head_rows: Tensor,
                 guide_layer: int | None) -> dict[str, nn.Module]:
    """The segments one spec needs (``guide`` only with the self guide, ``query_head`` only if A > 0)."""
    has_ds = bool(model.config.vision.deepstack_indexes)
    graphs: dict[str, nn.Module] = {
        "vision": VisionGraph(model),
        "doc_prefix": DocPrefixGraph(model, band, has_ds),
        "band": BandGraph(model, band),
        "tail": TailGraph(model, band[1] + 1, head_rows),
    }
    if guide_layer is not None:
        graphs["guide"] = GuideGraph(model, guide_layer, has_ds)
    if band[0] > 0:
        graphs["query_head"] = QueryHeadGraph(model, band[0])
    assert exit_layer >= band[1]
    return graphs
