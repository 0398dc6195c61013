"""The torch reference of the miniReranker pipeline: index documents once, score queries cheaply.

::

    system segment ──layers 0..E──▶ system K/V (once per model, shared by every document and query)
    instruction ──layers 0..A-1 (sees system K/V)──▶ its h_A and K/V of 0..A-1  (once per model)
    document ──vision tower──▶ embeds ──[prune]──layers 0..B (sees system K/V)──▶ K/V of layers A..B  (index)
             instruction h_A after it ──layers A..B (sees the document)── B+1..E ──▶ its K/V of A..E (index)
    query ──layers 0..A-1 (sees system + instruction K/V)──▶ h_A                (once per query)
    h_A ×N ──layers A..B (sees system + each document's + instruction's K/V)──▶ h_B   (batched)
    h_B ──layers B+1..E (sees system + each instruction's K/V)──▶ norm ─▶ yes/no ─▶ score   (batched)

"query" is the query segment (the query text and the closing tokens); the instruction segment before it
depends only on the document, so it is computed at index time.

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
from ..runtime.spec import RerankSpec, probability
from ..runtime.template import VisionFirstTemplate, document_positions, text_positions
from .checkpoint import Checkpoint, inherit_format, load_state_dict, open_checkpoint
from .graphs import GuideGraph, build_graphs, instruction_head, system_kv, vision_tensors
from .heads import build_head
from .modeling import build_model
from .pruning import EmbedderGuide, select_kept


@dataclass
class DocumentEntry:
    """What the KV store keeps for one document (the band's K/V of the kept tokens, the instruction's)."""

    k: Tensor                  # [B-A+1, Hkv, Td, d]
    v: Tensor                  # [B-A+1, Hkv, Td, d]
    positions: np.ndarray      # [3, Td] int64, original positions of the kept tokens
    query_start: int           # max position + 1 of the unpruned document (the instruction's first position)
    kept_visual: np.ndarray | None = None   # indices of the kept visual tokens (None: no pruning)
    label: str = ""
    instruction_k: Tensor | None = None     # [E-A+1, Hkv, I, d] the instruction segment's K/V of layers A..E
    instruction_v: Tensor | None = None

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


def dense_deepstack(prep: PreparedDocument, num_features: int) -> Tensor | None:
    """DeepStack features scattered onto the document rows: [K, Td, D], zero off the visual tokens."""
    if num_features == 0:
        return None
    dense = prep.embeds.new_zeros((num_features, *prep.embeds.shape))
    if len(prep.visual_rows):
        dense[:, prep.visual_rows] = torch.stack(prep.deepstack)
    return dense


class ReferencePipeline:
    """The four ideas in torch, on one checkpoint and one spec, through the engine segments."""

    def __init__(self, checkpoint: str | Path | Checkpoint, spec: RerankSpec | None = None,
                 batch_size: int = 32, attention: str = "portable", up_to_exit: bool = False) -> None:
        """``up_to_exit``: load the decoder layers up to the spec's exit layer only (what the engine segments
        read; the build's choice: a 2B checkpoint exiting at layer 15 of 28 loads 5.7 of its 8 GB)."""
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, spec)
        config = self.ckpt.config
        # a given spec keeps the checkpoint's format where it leaves it unset (export/checkpoint.py)
        self.spec = (self.ckpt.spec if spec is None else inherit_format(spec, self.ckpt.spec)).resolve(
            config.text.num_layers)
        model_config = config.first_layers(self.spec.exit_layer + 1) if up_to_exit else config
        self.model = build_model(model_config, load_state_dict(self.ckpt, config=model_config)).eval()
        self.model.set_attention(attention)
        self.template = VisionFirstTemplate(self.ckpt.load_tokenizer(), self.spec)
        self.head = build_head(self.model, self.template, self.ckpt)
        self.batch_size = batch_size
        self.counters = Counters()
        self.guide = None
        pruning = self.spec.keep_ratio < 1.0
        if pruning and self.spec.guide.startswith("embedder:"):
            self.guide = EmbedderGuide(self.spec.guide[len("embedder:"):], self.ckpt, self.spec.guide_layer)
        self.guide_layer = (self.spec.guide_layer_for(config.text.num_layers)
                            if pruning and self.guide is None else None)
        self.graphs = build_graphs(self.model, self.band, self.exit_layer, self.head, self.guide_layer)
        self.system_k, self.system_v = system_kv(self.model, self.template.system_ids, self.exit_layer + 1)
        self.instruction_hidden, self.instruction_k, self.instruction_v = self.instruction_prefix()

    def instruction_prefix(self) -> tuple[Tensor, Tensor, Tensor]:
        """The instruction's hidden entering layer A [1, I, D] and its K/V of layers 0..A-1 [A, 1, Hkv, I, d]:
        they see only the system segment, so they are the same for every document (A > 0 fixes positions)."""
        a, ids = self.band[0], self.template.instruction_ids
        start = self.spec.query_position if self.spec.query_position is not None else 0  # unused when A = 0
        positions = torch.from_numpy(text_positions(start, len(ids)))[:, None]
        return instruction_head(self.model, ids, positions, self.system_k[:a], self.system_v[:a])

    def instruction_start(self, query_start: int) -> int:
        """The instruction's first position: after the document, or the spec's fixed query position."""
        return self.spec.query_position if self.spec.query_position is not None else query_start

    @property
    def band(self) -> tuple[int, int]:
        assert self.spec.band is not None
        return self.spec.band

    @property
    def exit_layer(self) -> int:
        assert self.spec.exit_layer is not None
        return self.spec.exit_layer

    @property
    def num_deepstack(self) -> int:
        return len(self.ckpt.config.vision.deepstack_indexes)

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
            embeds, stacked = self.graphs["vision"](torch.from_numpy(pixels),
                                                    *vision_tensors(self.ckpt.config.vision, grid[1], grid[2]))
            deepstack = list(stacked.unbind(0))
            self.counters.calls["vision"] += 1
        tokens = self.template.document(grid_hw, doc.text)
        x = self.model.embed_tokens(torch.tensor(tokens.ids)).clone()
        rows = torch.arange(tokens.image_start, tokens.image_start + tokens.num_image)
        if embeds is not None:
            x[rows] = embeds
        positions, query_start = document_positions(len(self.template.system_ids), tokens)
        return PreparedDocument(tokens.ids, x, positions, rows, deepstack, query_start, grid_hw)

    @torch.no_grad()
    def importance(self, doc: Document, prep: PreparedDocument) -> np.ndarray:
        """The guide's score of each visual token of ``prep`` (unpruned): float64 [Nv]."""
        if self.guide is not None:
            assert prep.grid_hw is not None
            return self.guide.importance(doc.image, doc.text, prep.grid_hw)
        g = self.guide_layer if self.guide_layer is not None else self.spec.guide_layer_for(self.ckpt.config.text.num_layers)
        graph = self.graphs.get("guide") or GuideGraph(self.model, g, self.num_deepstack > 0)
        probs = graph(prep.embeds[None], torch.from_numpy(prep.positions)[:, None], self.system_k[: g + 1],
                      self.system_v[: g + 1], dense_deepstack(prep, self.num_deepstack))
        return probs[len(self.template.system_ids) + prep.visual_rows].double().numpy()

    @torch.no_grad()
    def index(self, doc: Document, kept_visual: np.ndarray | None = None) -> DocumentEntry:
        """Run the document prefix through layers 0..B; keep the K/V of layers A..B.

        ``kept_visual`` imposes the pruning choice (indices among the visual tokens) instead of asking
        the guide: used to compare engines whose lower precision flipped a near-tie of the guide.
        """
        prep = self.prepare(doc)
        if self.spec.keep_ratio < 1.0 and len(prep.visual_rows):
            if kept_visual is None:
                kept_visual = select_kept(self.importance(doc, prep), self.spec.keep_ratio)
            prep = prep.keep(np.asarray(kept_visual, dtype=np.int64))
        start = self.instruction_start(prep.query_start)
        instruction_positions = torch.from_numpy(text_positions(start, len(self.template.instruction_ids)))[:, None]
        k, v, ik, iv = self.graphs["doc_prefix"](prep.embeds[None], torch.from_numpy(prep.positions)[:, None],
                                                 self.system_k, self.system_v, self.instruction_hidden,
                                                 instruction_positions, dense_deepstack(prep, self.num_deepstack))
        self.counters.calls["index"] += 1
        return DocumentEntry(k, v, prep.positions, prep.query_start, prep.kept_visual, doc.label, ik, iv)

    # -- queries (rerank time) --------------------------------------------------------------------
    def query_positions(self, num_tokens: int, entries: list[DocumentEntry]) -> Tensor:
        """[3, N, Q] of the query segment: after each document's instruction segment (Qwen3-VL's rope
        index) or after the instruction at the spec's fixed position."""
        offset = len(self.template.instruction_ids)
        starts = [self.instruction_start(e.query_start) + offset for e in entries]
        pos = np.stack([text_positions(s, num_tokens) for s in starts], axis=1)
        return torch.from_numpy(pos)

    @torch.no_grad()
    def query_head(self, ids: list[int]) -> Tensor:
        """Layers 0..A-1 over the query segment (it sees the system and instruction K/V there): [1, Q, D]."""
        a = self.band[0]
        x = self.model.embed_tokens(torch.tensor(ids))[None]
        if a == 0:
            return x
        assert self.spec.query_position is not None  # guaranteed by RerankSpec validation
        start = self.spec.query_position + len(self.template.instruction_ids)
        positions = torch.from_numpy(text_positions(start, len(ids)))[:, None]
        self.counters.calls["query_head"] += 1
        return self.graphs["query_head"](x, positions, self.system_k[:a], self.system_v[:a],
                                         self.instruction_k, self.instruction_v)

    @torch.no_grad()
    def score(self, query: str, entries: list[DocumentEntry]) -> np.ndarray:
        """Scores (logit yes - logit no) of ``query`` against indexed documents: float64 [N]."""
        if not entries:
            return np.zeros(0)
        ids = self.template.query_text(query)  # the instruction segment is in each entry already
        h = self.query_head(ids)  # once per query, whatever the number of candidates
        out = [self._score_batch(h, ids, entries[i: i + self.batch_size])
               for i in range(0, len(entries), self.batch_size)]
        return torch.cat(out).double().numpy()

    def _score_batch(self, h: Tensor, ids: list[int], entries: list[DocumentEntry]) -> Tensor:
        a, b = self.band
        positions = self.query_positions(len(ids), entries)
        doc_k, doc_v, mask = pad_entries(entries)
        ik, iv = stack_instructions(entries)  # [N, E-A+1, Hkv, I, d]
        nb = b - a + 1
        x = self.graphs["band"](h, positions, doc_k, doc_v, mask, ik[:, :nb], iv[:, :nb],
                                self.system_k[a: b + 1], self.system_v[a: b + 1])
        self.counters.calls["band_batches"] += 1
        e = self.exit_layer
        return self.graphs["tail"](x, positions, ik[:, nb:], iv[:, nb:], self.system_k[b + 1: e + 1],
                                   self.system_v[b + 1: e + 1])

    def rerank(self, query: str, documents: list[Document]) -> np.ndarray:
        """Index ``documents`` (no cache) and score them: the convenience path of ``reference``."""
        return self.score(query, [self.index(d) for d in documents])


def pad_entries(entries: list[DocumentEntry]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad the documents' K/V to the longest: [N, B-A+1, Hkv, T, d] x2 and the mask [N, T]."""
    t = max(e.num_tokens for e in entries)
    nb, hkv, _, d = entries[0].k.shape
    doc_k = torch.zeros(len(entries), nb, hkv, t, d, dtype=entries[0].k.dtype)
    doc_v = torch.zeros_like(doc_k)
    mask = torch.zeros(len(entries), t, dtype=torch.bool)
    for j, e in enumerate(entries):
        doc_k[j, :, :, : e.num_tokens] = e.k
        doc_v[j, :, :, : e.num_tokens] = e.v
        mask[j, : e.num_tokens] = True
    return doc_k, doc_v, mask


def stack_instructions(entries: list[DocumentEntry]) -> tuple[Tensor, Tensor]:
    """The candidates' instruction K/V, one per entry: [N, E-A+1, Hkv, I, d] each (I is the same for all)."""
    if any(e.instruction_k is None for e in entries):
        raise DocumentError("an entry has no instruction K/V; index the document with this pipeline")
    return torch.stack([e.instruction_k for e in entries]), torch.stack([e.instruction_v for e in entries])


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
         "probability": probability(float(scores[i]), pipeline.spec.head)}
        for i in order
    ]
    return {"query": query, "spec": pipeline.spec.to_dict(), "results": results}
