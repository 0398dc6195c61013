"""The torch reference of the miniReranker pipeline: index documents once, score queries cheaply.

::

    system segment ──layers 0..E──▶ system K/V (once per model, shared by every document and query)
    document ──vision tower──▶ embeds ──[prune]──layers 0..B (sees system K/V)──▶ K/V of layers A..B  (index)
    query ──layers 0..A-1 (sees system K/V)──▶ h_A                              (once per query)
    h_A ×N ──layers A..B (sees system + each document's K/V)──▶ h_B             (batched over candidates)
    h_B ──layers B+1..E (sees system K/V)──▶ norm ─▶ yes/no rows ─▶ score      (batched)

With the exact spec (A=0, B=E=L-1, keep 1) the scores equal the plain model on the vision-first sequence.
This module is the golden source the ONNX engines are checked against.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..runtime.documents import Document
from ..runtime.errors import DocumentError
from ..runtime.preprocess import preprocess_image
from ..runtime.spec import RerankSpec
from ..runtime.template import VisionFirstTemplate, document_positions, text_positions
from .checkpoint import Checkpoint, load_state_dict, open_checkpoint
from .modeling import Qwen3VLTorch
from .pruning import EmbedderGuide, last_token_attention, select_kept, self_guide_sequence


@dataclass
class DocumentEntry:
    """What the KV store keeps for one document (the band's K/V of the kept tokens)."""

    k: Tensor                  # [B-A+1, Hkv, Td, d]
    v: Tensor                  # [B-A+1, Hkv, Td, d]
    positions: np.ndarray      # [3, Td] int64, original positions of the kept tokens
    query_start: int           # max position + 1 of the unpruned document
    kept_visual: np.ndarray | None = None   # indices of the kept visual tokens (None: no pruning)
    label: str = ""

    @property
    def num_tokens(self) -> int:
        return self.k.shape[2]


@dataclass
class PreparedDocument:
    """A document segment before the decoder: ids, embeddings, positions, visual rows, DeepStack rows."""

    ids: list[int]
    embeds: Tensor             # [Td, D]
    positions: np.ndarray      # [3, Td]
    visual_rows: Tensor        # [Nv] rows of ``embeds`` holding visual tokens
    deepstack: list[Tensor]    # each [Nv, D]
    query_start: int
    grid_hw: tuple[int, int] | None
    kept_visual: np.ndarray | None = None

    def keep(self, kept: np.ndarray) -> "PreparedDocument":
        """Drop the visual tokens not in ``kept`` (indices among the visual tokens), keeping positions."""
        rows = self.visual_rows.numpy()
        drop = np.setdiff1d(rows, rows[kept])
        mask = np.ones(len(self.ids), dtype=bool)
        mask[drop] = False
        new_rows = torch.from_numpy(np.cumsum(mask)[rows[kept]] - 1)
        return PreparedDocument(
            [i for i, m in zip(self.ids, mask) if m], self.embeds[torch.from_numpy(mask)], self.positions[:, mask],
            new_rows, [f[torch.from_numpy(kept)] for f in self.deepstack], self.query_start, self.grid_hw, kept,
        )


@dataclass
class Counters:
    """How often each stage ran: the tests prove 'once per query' with these."""

    calls: collections.Counter = field(default_factory=collections.Counter)


class ReferencePipeline:
    """The four ideas in torch, on one checkpoint and one spec."""

    def __init__(self, checkpoint: str | Path | Checkpoint, spec: RerankSpec | None = None,
                 batch_size: int = 32) -> None:
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, spec)
        config = self.ckpt.config
        self.spec = (spec or self.ckpt.spec).resolve(config.text.num_layers)
        self.model = Qwen3VLTorch(config, load_state_dict(self.ckpt)).eval()
        self.template = VisionFirstTemplate(self.ckpt.load_tokenizer(), self.spec)
        self.head_rows = self.model.exit_head(self.template.yes_id, self.template.no_id)
        self.batch_size = batch_size
        self.counters = Counters()
        self.guide = None
        if self.spec.keep_ratio < 1.0 and self.spec.guide.startswith("embedder:"):
            self.guide = EmbedderGuide(self.spec.guide[len("embedder:"):], self.ckpt, self.spec.guide_layer)
        self.system_k, self.system_v = self._run_system()

    @property
    def band(self) -> tuple[int, int]:
        assert self.spec.band is not None
        return self.spec.band

    @property
    def exit_layer(self) -> int:
        assert self.spec.exit_layer is not None
        return self.spec.exit_layer

    # -- system segment ---------------------------------------------------------------------------
    @torch.no_grad()
    def _run_system(self) -> tuple[list[Tensor], list[Tensor]]:
        """K/V [1, Hkv, S, d] of the system segment for layers 0..E: computed once, shared by all."""
        ids = torch.tensor(self.template.system_ids)
        x = self.model.embed_tokens(ids)[None]
        cos, sin = self.model.rotary(torch.from_numpy(text_positions(0, len(ids)))[:, None])
        ks, vs = [], []
        for layer in self.model.layers[: self.exit_layer + 1]:
            x, k, v = layer(x, cos, sin, None, None, None)
            ks.append(k)
            vs.append(v)
        return ks, vs

    # -- documents (index time) -------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, doc: Document) -> PreparedDocument:
        """Tokenize, run the vision tower, place the document after the system segment."""
        if doc.image is None and not doc.text:
            raise DocumentError(f"document {doc.label!r} has no content; the reference cannot look up ids")
        grid_hw, embeds, deepstack = None, None, []
        if doc.image is not None:
            pixels, grid = preprocess_image(doc.image, self.ckpt.preprocess)
            merge = self.ckpt.config.vision.spatial_merge_size
            grid_hw = (grid[1] // merge, grid[2] // merge)
            embeds, deepstack = self.model.vision(torch.from_numpy(pixels), grid[1], grid[2])
            self.counters.calls["vision"] += 1
        tokens = self.template.document(grid_hw, doc.text)
        x = self.model.embed_tokens(torch.tensor(tokens.ids)).clone()
        rows = torch.arange(tokens.image_start, tokens.image_start + tokens.num_image)
        if embeds is not None:
            x[rows] = embeds
        positions, query_start = document_positions(len(self.template.system_ids), tokens)
        return PreparedDocument(tokens.ids, x, positions, rows, deepstack, query_start, grid_hw)

    def importance(self, doc: Document, prep: PreparedDocument) -> np.ndarray:
        """The guide's score of each visual token of ``prep`` (unpruned): [Nv]."""
        if self.guide is not None:
            assert prep.grid_hw is not None
            return self.guide.importance(doc.image, doc.text, prep.grid_hw)
        seq = self_guide_sequence(self.model, self.template.system_ids, prep.embeds, prep.positions,
                                  prep.visual_rows, prep.deepstack)
        return last_token_attention(self.model, seq, self.spec.guide_layer_for(self.ckpt.config.text.num_layers))

    @torch.no_grad()
    def index(self, doc: Document) -> DocumentEntry:
        """Run the document prefix through layers 0..B; keep the K/V of layers A..B."""
        prep = self.prepare(doc)
        if self.spec.keep_ratio < 1.0 and len(prep.visual_rows):
            prep = prep.keep(select_kept(self.importance(doc, prep), self.spec.keep_ratio))
        a, b = self.band
        s = len(self.template.system_ids)
        x = prep.embeds[None]
        cos, sin = self.model.rotary(torch.from_numpy(prep.positions)[:, None])
        visible = torch.ones(1, 1, s, dtype=torch.bool)
        ks, vs = [], []
        for i in range(b + 1):
            x, k, v = self.model.layers[i](x, cos, sin, self.system_k[i], self.system_v[i], visible)
            if i < len(prep.deepstack) and len(prep.visual_rows):
                x[0, prep.visual_rows] += prep.deepstack[i]
            if i >= a:
                ks.append(k[0])
                vs.append(v[0])
        self.counters.calls["index"] += 1
        return DocumentEntry(torch.stack(ks), torch.stack(vs), prep.positions, prep.query_start,
                             prep.kept_visual, doc.label)

    # -- queries (rerank time) --------------------------------------------------------------------
    def query_positions(self, num_tokens: int, entries: list[DocumentEntry]) -> Tensor:
        """[3, N, Q]: after each document (Qwen3-VL's rope index) or at the spec's fixed position."""
        if self.spec.query_position is not None:
            starts = [self.spec.query_position] * len(entries)
        else:
            starts = [e.query_start for e in entries]
        pos = np.stack([text_positions(s, num_tokens) for s in starts], axis=1)
        return torch.from_numpy(pos)

    @torch.no_grad()
    def query_head(self, ids: list[int]) -> Tensor:
        """Layers 0..A-1 over the query alone (it sees only the system K/V there): [1, Q, D]."""
        a = self.band[0]
        x = self.model.embed_tokens(torch.tensor(ids))[None]
        if a == 0:
            return x
        assert self.spec.query_position is not None  # guaranteed by RerankSpec validation
        cos, sin = self.model.rotary(torch.from_numpy(text_positions(self.spec.query_position, len(ids)))[:, None])
        visible = torch.ones(1, 1, len(self.template.system_ids), dtype=torch.bool)
        for i in range(a):
            x, _, _ = self.model.layers[i](x, cos, sin, self.system_k[i], self.system_v[i], visible)
        self.counters.calls["query_head"] += 1
        return x

    @torch.no_grad()
    def score(self, query: str, entries: list[DocumentEntry]) -> np.ndarray:
        """Scores (logit yes - logit no) of ``query`` against indexed documents: float64 [N]."""
        if not entries:
            return np.zeros(0)
        ids = self.template.query(query)
        h = self.query_head(ids)  # once per query, whatever the number of candidates
        out = [self._score_batch(h, ids, entries[i: i + self.batch_size])
               for i in range(0, len(entries), self.batch_size)]
        return torch.cat(out).double().numpy()

    def _score_batch(self, h: Tensor, ids: list[int], entries: list[DocumentEntry]) -> Tensor:
        a, b = self.band
        n, q, s = len(entries), len(ids), len(self.template.system_ids)
        cos, sin = self.model.rotary(self.query_positions(q, entries))
        t = max(e.num_tokens for e in entries)
        nb, hkv, _, d = entries[0].k.shape
        doc_k = torch.zeros(n, nb, hkv, t, d, dtype=entries[0].k.dtype)
        doc_v = torch.zeros_like(doc_k)
        visible = torch.zeros(n, 1, s + t, dtype=torch.bool)
        visible[:, :, :s] = True
        for j, e in enumerate(entries):  # right-pad each document's K/V; the mask hides the padding
            doc_k[j, :, :, : e.num_tokens] = e.k
            doc_v[j, :, :, : e.num_tokens] = e.v
            visible[j, :, s: s + e.num_tokens] = True
        x = h.expand(n, -1, -1)
        for i in range(a, b + 1):
            pk = torch.cat([self.system_k[i].expand(n, -1, -1, -1), doc_k[:, i - a]], dim=2)
            pv = torch.cat([self.system_v[i].expand(n, -1, -1, -1), doc_v[:, i - a]], dim=2)
            x, _, _ = self.model.layers[i](x, cos, sin, pk, pv, visible)
        sys_visible = torch.ones(n, 1, s, dtype=torch.bool)
        for i in range(b + 1, self.exit_layer + 1):
            sk, sv = self.system_k[i].expand(n, -1, -1, -1), self.system_v[i].expand(n, -1, -1, -1)
            x, _, _ = self.model.layers[i](x, cos, sin, sk, sv, sys_visible)
        self.counters.calls["band_batches"] += 1
        return self.model.score_hidden(x[:, -1], self.head_rows)

    def rerank(self, query: str, documents: list[Document]) -> np.ndarray:
        """Index ``documents`` (no cache) and score them: the convenience path of ``reference``."""
        return self.score(query, [self.index(d) for d in documents])


def reference_scores(checkpoint: str | Path, query: str, documents: list[Document],
                     spec: RerankSpec | None = None) -> dict:
    """The ``minireranker reference`` result: scores of ``documents`` for ``query``, best first.

    ``spec`` None uses the checkpoint's ``minireranker.json`` (or the exact spec without one). Returns
    ``{"query", "spec", "results": [{"index", "document", "score", "probability"}]}`` where ``index`` is
    the document's position in ``documents``.
    """
    pipeline = ReferencePipeline(checkpoint, spec)
    scores = pipeline.rerank(query, documents)
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
    results = [
        {"index": i, "document": documents[i].label, "score": float(scores[i]),
         "probability": float(1.0 / (1.0 + np.exp(-scores[i])))}
        for i in order
    ]
    return {"query": query, "spec": pipeline.spec.to_dict(), "results": results}
