"""Scores of many specs at once: document K/V computed once per pruning choice, exits read in one walk.

Why this is exact (each spec's scores equal :class:`ReferencePipeline` with that spec; a test checks it):

* the document prefix is causal, so the K/V of layer j does not depend on how many layers run after it:
  one run of layers ``0..B_max`` gives the K/V of every band ``[A, B]`` with ``B <= B_max`` by slicing;
* which visual tokens are kept depends on the keep ratio and the guide only (``self`` ranks them at layer
  ``A``, so a self-guided variant is per (A, keep); an embedder ranks them once per document);
* bands with the same start ``A`` run the same layers ``A..B1`` (the query sees the documents in both),
  so one band walk to the largest ``B`` serves them all;
* after the band the query sees only the system segment, so layers ``B+1..E`` for the largest ``E``
  pass through every smaller exit: the score is read at each exit on the way.

::

    variant (keep, guide[, A])   docs ─[prune]─ layers 0..B_max ─▶ K/V [B_max+1, Hkv, Td, d]  (once)
    per query, start A           query ─layers 0..A-1─▶ h_A ─band layer A ─ ... ─ band layer B2 (K/V[A..B2])
                                                                 │ at B1: tail B1+1 ─ ... ─▶ score(B1, E...)
                                                                 └ at B2: tail B2+1 ─ ... ─▶ score(B2, E...)
    a tail walk         h_B ─layer B+1─ ... ─layer E1 ─▶ score(E1) ─ ... ─layer E2 ─▶ score(E2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..export.graphs import DocPrefixGraph, GuideGraph, QueryHeadGraph
from ..export.reference import DocumentEntry, dense_deepstack, pad_entries
from ..runtime.pruning import select_kept
from ..runtime.template import text_positions
from .scoring import SharedReference


@dataclass(frozen=True)
class Variant:
    """One pruning choice: keep ratio, guide and (self guide only) the guide layer ``A``."""

    keep_ratio: float
    guide: str            # "self" or "embedder:<dir>"
    guide_layer: int | None   # A for a self-guided variant with keep < 1; None otherwise


class SpecSweep:
    """Scores a query's candidates under every (band, exit) of a variant; see the module docstring.

    ``base`` is a :class:`SharedReference` (any spec) that supplies the model, the template, the yes/no
    rows and the system K/V of all layers; ``query_position`` is the fixed P of specs with ``A > 0``.
    """

    def __init__(self, base: SharedReference, query_position: int, batch_size: int = 32) -> None:
        self.base, self.model = base, base.model
        self.query_position, self.batch_size = query_position, batch_size
        self.system_k, self.system_v = base.loaded.system_kv(base.template.system_ids)  # [L, 1, Hkv, S, d]
        self.has_ds = base.num_deepstack > 0
        self._importance: dict[tuple, np.ndarray] = {}

    # -- documents ----------------------------------------------------------------------------------
    def importance(self, doc, guide: str, layer: int | None) -> np.ndarray:
        """The guide's score of each visual token of ``doc`` (memoised)."""
        key = (doc.id, guide, layer)
        if key not in self._importance:
            prep = self.base.prepare(doc)
            if guide.startswith("embedder:"):
                g = self.base.loaded.embedder_guide(guide[len("embedder:"):], None)
                self._importance[key] = g.importance(doc.image, doc.text, prep.grid_hw)
            else:
                probs = GuideGraph(self.model, layer, self.has_ds)(
                    prep.embeds[None], torch.from_numpy(prep.positions)[:, None], self.system_k[: layer + 1],
                    self.system_v[: layer + 1], dense_deepstack(prep, self.base.num_deepstack))
                s = len(self.base.template.system_ids)
                self._importance[key] = probs[s + prep.visual_rows].double().numpy()
        return self._importance[key]

    @torch.no_grad()
    def document_kv(self, doc, variant: Variant, last_layer: int) -> DocumentEntry:
        """K/V of layers ``0..last_layer`` of ``doc`` pruned as ``variant`` says."""
        prep = self.base.prepare(doc)
        if variant.keep_ratio < 1.0 and len(prep.visual_rows):
            scores = self.importance(doc, variant.guide, variant.guide_layer)
            prep = prep.keep(select_kept(scores, variant.keep_ratio))
        k, v = DocPrefixGraph(self.model, (0, last_layer), self.has_ds)(
            prep.embeds[None], torch.from_numpy(prep.positions)[:, None], self.system_k[: last_layer + 1],
            self.system_v[: last_layer + 1], dense_deepstack(prep, self.base.num_deepstack))
        return DocumentEntry(k, v, prep.positions, prep.query_start, prep.kept_visual, doc.id or "")

    # -- queries ------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, query: str, entries: list[DocumentEntry], start: int, ends: list[int],
              exits: list[int]) -> dict[tuple[int, int], np.ndarray]:
        """Scores of ``entries`` (K/V of layers 0..>=max(ends)) for every band ``[start, B]``, B in ``ends``,
        at every exit ``E >= B`` in ``exits``: ``{(B, E): float64 [N]}``.

        Bands sharing their start share their first layers too: the band layers run once from ``start``
        to the largest ``B`` (what BandGraph computes, inlined so that the walk can branch), and at each
        ``B`` of ``ends`` a tail walk leaves for the exits.
        """
        a, last = start, max(ends)
        ids = self.base.template.query(query)
        h = self.model.embed_tokens(torch.tensor(ids))[None]
        if a > 0:
            pos = torch.from_numpy(text_positions(self.query_position, len(ids)))[:, None]
            h = QueryHeadGraph(self.model, a)(h, pos, self.system_k[:a], self.system_v[:a])
        out: dict[tuple[int, int], list[Tensor]] = {}
        for i in range(0, len(entries), self.batch_size):
            batch = [DocumentEntry(e.k[a: last + 1], e.v[a: last + 1], e.positions, e.query_start) for e in
                     entries[i: i + self.batch_size]]
            starts = [self.query_position if a > 0 else e.query_start for e in batch]
            positions = torch.from_numpy(np.stack([text_positions(s, len(ids)) for s in starts], axis=1))
            for key, scores in self._walk(h, positions, batch, a, ends, exits).items():
                out.setdefault(key, []).append(scores)
        return {key: torch.cat(v).double().numpy() for key, v in out.items()}

    def _walk(self, h: Tensor, positions: Tensor, batch: list[DocumentEntry], a: int, ends: list[int],
              exits: list[int]) -> dict[tuple[int, int], Tensor]:
        """Band layers ``a..max(ends)`` over one batch (h [1, Q, D] -> x [N, Q, D]), tails branching off."""
        doc_k, doc_v, mask = pad_entries(batch)  # [N, layers, Hkv, T, d], mask [N, T]
        n, s = doc_k.shape[0], self.system_k.shape[3]
        x = h.expand(n, -1, -1)
        cos, sin = self.model.rotary(positions, x.dtype)
        visible = torch.cat([torch.ones(n, s, dtype=torch.bool), mask], dim=1)[:, None]  # [N, 1, S+T]
        scores = {}
        for i in range(a, max(ends) + 1):
            pk = torch.cat([self.system_k[i].expand(n, -1, -1, -1), doc_k[:, i - a]], dim=2)
            pv = torch.cat([self.system_v[i].expand(n, -1, -1, -1), doc_v[:, i - a]], dim=2)
            x, _, _ = self.model.layers[i](x, cos, sin, pk, pv, visible)
            if i in ends:
                for e, sc in self._walk_tail(x, cos, sin, i, [e for e in exits if e >= i]).items():
                    scores[(i, e)] = sc
        return scores

    def _walk_tail(self, x: Tensor, cos: Tensor, sin: Tensor, band_end: int, exits: list[int]) -> dict[int, Tensor]:
        """Layers ``B+1..max(exits)`` over x [N, Q, D] (system K/V only), scoring at each exit."""
        n, head_rows = x.shape[0], self.base.head_rows
        visible = torch.ones(n, 1, self.system_k.shape[3], dtype=torch.bool)
        scores = {}
        if band_end in exits:
            scores[band_end] = self.model.score_hidden(x[:, -1], head_rows)
        for i in range(band_end + 1, max(exits, default=band_end) + 1):
            sk, sv = (t[i].expand(n, -1, -1, -1) for t in (self.system_k, self.system_v))
            x, _, _ = self.model.layers[i](x, cos, sin, sk, sv, visible)
            if i in exits:
                scores[i] = self.model.score_hidden(x[:, -1], head_rows)
        return scores
