"""Scores of many specs at once: document K/V computed once per pruning choice, exits read in one walk.

Why this is exact (each spec's scores equal :class:`ReferencePipeline` with that spec; a test checks it):

* the document prefix is causal, so the K/V of layer j does not depend on how many layers run after it:
  one run of layers ``0..B_max`` gives the K/V of every band ``[A, B]`` with ``B <= B_max`` by slicing;
* which visual tokens are kept depends on the keep ratio and the guide only (``self`` ranks them at layer
  ``A``, so a self-guided variant is per (A, keep); an embedder ranks them once per document);
* bands with the same start ``A`` run the same layers ``A..B1`` (the query sees the documents in both),
  so one band walk to the largest ``B`` serves them all;
* after the band the query sees only the system segment (and itself), so layers ``B+1..E`` for the
  largest ``E`` pass through every smaller exit: the score is read at each exit on the way;
* the instruction segment is computed as the reference computes it (export/graphs.DocPrefixGraph: after the
  document, layers A..B with it, then B+1..E alone), once per (document, variant, band) and kept on the
  entry for every later query; its K/V of a layer i depends on the band only through whether i <= B, so
  the band walk reads the largest band's and each tail walk its own band's.

::

    variant (keep, guide[, A])   docs ─[prune]─ layers 0..B_max ─▶ K/V [B_max+1, Hkv, Td, d]  (once)
    per query, start A           query ─layers 0..A-1─▶ h_A ─band layer A ─ ... ─ band layer B2 (K/V[A..B2])
                                                                 │ at B1: tail B1+1 ─ ... ─▶ score(B1, E...)
                                                                 └ at B2: tail B2+1 ─ ... ─▶ score(B2, E...)
    a tail walk         h_B ─layer B+1─ ... ─layer E1 ─▶ score(E1) ─ ... ─layer E2 ─▶ score(E2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..export.graphs import DocPrefixGraph, GuideGraph, QueryHeadGraph, instruction_head
from ..export.reference import DocumentEntry, PreparedDocument, dense_deepstack, pad_entries
from ..runtime.pruning import select_kept
from ..runtime.template import text_positions
from .scoring import SharedReference


@dataclass(frozen=True)
class Variant:
    """One pruning choice: keep ratio, guide and (self guide only) the guide layer ``A``."""

    keep_ratio: float
    guide: str            # "self" or "embedder:<dir>"
    guide_layer: int | None   # A for a self-guided variant with keep < 1; None otherwise


@dataclass
class SweepEntry(DocumentEntry):
    """A document's K/V of layers 0..B_max, with its pruned sequence (to run the instruction segment after
    it) and the instruction K/V computed so far: ``{(A, B, E_max): (k, v) [E_max-A+1, Hkv, I, d]}``."""

    prepared: PreparedDocument | None = None
    instructions: dict = field(default_factory=dict)


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
        self._heads: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

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
    def document_kv(self, doc, variant: Variant, last_layer: int) -> SweepEntry:
        """K/V of layers ``0..last_layer`` of ``doc`` pruned as ``variant`` says."""
        prep = self.base.prepare(doc)
        if variant.keep_ratio < 1.0 and len(prep.visual_rows):
            scores = self.importance(doc, variant.guide, variant.guide_layer)
            prep = prep.keep(select_kept(scores, variant.keep_ratio))
        none = prep.embeds.new_zeros(1, 0, prep.embeds.shape[1])  # the instruction runs with the query here
        k, v, _, _ = DocPrefixGraph(self.model, (0, last_layer), last_layer, self.has_ds)(
            prep.embeds[None], torch.from_numpy(prep.positions)[:, None], self.system_k[: last_layer + 1],
            self.system_v[: last_layer + 1], none, torch.zeros(3, 1, 0, dtype=torch.int64),
            dense_deepstack(prep, self.base.num_deepstack))
        return SweepEntry(k, v, prep.positions, prep.query_start, prep.kept_visual, doc.id or "", prepared=prep)

    def instruction_kv(self, entry: SweepEntry, band: tuple[int, int], last_exit: int) -> tuple[Tensor, Tensor]:
        """The instruction segment's K/V of layers A..last_exit after ``entry``'s document under ``band``
        (memoised on the entry): [last_exit-A+1, Hkv, I, d] each, the reference's arithmetic."""
        key = (*band, last_exit)
        if key not in entry.instructions:
            a, prep = band[0], entry.prepared
            start = self.query_position if a > 0 else prep.query_start
            hidden, _, _ = self._instruction_head(a)
            positions = torch.from_numpy(text_positions(start, hidden.shape[1]))[:, None]
            _, _, ik, iv = DocPrefixGraph(self.model, band, last_exit, self.has_ds)(
                prep.embeds[None], torch.from_numpy(prep.positions)[:, None], self.system_k[: last_exit + 1],
                self.system_v[: last_exit + 1], hidden, positions, dense_deepstack(prep, self.base.num_deepstack))
            entry.instructions[key] = (ik, iv)
        return entry.instructions[key]

    def _instruction_head(self, a: int) -> tuple[Tensor, Tensor, Tensor]:
        """The instruction's hidden entering layer ``a`` and its K/V of layers 0..a-1 (memoised)."""
        if a not in self._heads:
            ids = self.base.template.instruction_ids
            positions = torch.from_numpy(text_positions(self.query_position if a > 0 else 0, len(ids)))[:, None]
            self._heads[a] = instruction_head(self.model, ids, positions, self.system_k[:a], self.system_v[:a])
        return self._heads[a]

    # -- queries ------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, query: str, entries: list[SweepEntry], start: int, ends: list[int],
              exits: list[int]) -> dict[tuple[int, int], np.ndarray]:
        """Scores of ``entries`` (K/V of layers 0..>=max(ends)) for every band ``[start, B]``, B in ``ends``,
        at every exit ``E >= B`` in ``exits``: ``{(B, E): float64 [N]}``.

        Bands sharing their start share their first layers too: the band layers run once from ``start``
        to the largest ``B`` (what BandGraph computes, inlined so that the walk can branch), and at each
        ``B`` of ``ends`` a tail walk leaves for the exits.
        """
        a, last = start, max(ends)
        ids = self.base.template.query_text(query)  # the instruction segment comes from each entry
        offset = len(self.base.template.instruction_ids)
        h = self.model.embed_tokens(torch.tensor(ids))[None]
        if a > 0:
            _, ik, iv = self._instruction_head(a)
            pos = torch.from_numpy(text_positions(self.query_position + offset, len(ids)))[:, None]
            h = QueryHeadGraph(self.model, a)(h, pos, self.system_k[:a], self.system_v[:a], ik, iv)
        last_exit = max([*exits, last])
        out: dict[tuple[int, int], list[Tensor]] = {}
        for i in range(0, len(entries), self.batch_size):
            chunk = entries[i: i + self.batch_size]
            batch = [DocumentEntry(e.k[a: last + 1], e.v[a: last + 1], e.positions, e.query_start) for e in chunk]
            instructions = {b: [torch.stack(t) for t in zip(*(self.instruction_kv(e, (a, b), last_exit)
                                                               for e in chunk))] for b in ends}
            starts = [(self.query_position if a > 0 else e.query_start) + offset for e in batch]
            positions = torch.from_numpy(np.stack([text_positions(s, len(ids)) for s in starts], axis=1))
            for key, scores in self._walk(h, positions, batch, instructions, a, ends, exits).items():
                out.setdefault(key, []).append(scores)
        return {key: torch.cat(v).double().numpy() for key, v in out.items()}

    def _walk(self, h: Tensor, positions: Tensor, batch: list[DocumentEntry], instructions: dict[int, list[Tensor]],
              a: int, ends: list[int], exits: list[int]) -> dict[tuple[int, int], Tensor]:
        """Band layers ``a..max(ends)`` over one batch (h [1, Q, D] -> x [N, Q, D]), tails branching off;
        prefix segments as BandGraph's (system, document, instruction)."""
        doc_k, doc_v, mask = pad_entries(batch)  # [N, layers, Hkv, T, d], mask [N, T]
        ik, iv = instructions[max(ends)]  # [N, layers from a, Hkv, I, d]: the same as any band's up to its B
        x = h.expand(doc_k.shape[0], -1, -1)
        cos, sin = self.model.rotary(positions, x.dtype)
        padding = mask[:, None, None, :]
        scores = {}
        for i in range(a, max(ends) + 1):
            prefix = [(self.system_k[i], self.system_v[i], None), (doc_k[:, i - a], doc_v[:, i - a], padding),
                      (ik[:, i - a], iv[:, i - a], None)]
            x, _, _ = self.model.layers[i](x, cos, sin, prefix)
            if i in ends:
                tail = [e for e in exits if e >= i]
                for e, sc in self._walk_tail(x, cos, sin, i, a, instructions[i], tail).items():
                    scores[(i, e)] = sc
        return scores

    def _walk_tail(self, x: Tensor, cos: Tensor, sin: Tensor, band_end: int, a: int, instruction: list[Tensor],
                   exits: list[int]) -> dict[int, Tensor]:
        """Layers ``B+1..max(exits)`` over x [N, Q, D] (system + this band's instruction K/V, as TailGraph),
        scoring at each exit."""
        head = self.base.head
        ik, iv = instruction
        scores = {}
        if band_end in exits:
            scores[band_end] = head(x[:, -1])
        last = max(exits, default=band_end)
        for i in range(band_end + 1, last + 1):
            layer = self.model.layers[i]
            prefix = [(self.system_k[i], self.system_v[i], None), (ik[:, i - a], iv[:, i - a], None)]
            if i in exits:  # as TailGraph's exit layer: the last row alone (the same products, the same digits)
                exit_row, _, _ = layer(x, cos, sin, prefix, last_only=True)
                scores[i] = head(exit_row[:, -1])
            if i < last:
                x, _, _ = layer(x, cos, sin, prefix)
        return scores
