"""First-stage scoring with a Qwen3-VL-Embedding-style checkpoint: cosine of pooled last-token states.

Sequences: the embedder template of :mod:`minireranker.runtime.template` (image documents cut exactly as
:class:`~minireranker.export.pruning.EmbedderGuide` cuts them, so the embedder that retrieves is the
embedder that guides pruning; a query is a text document). Positions follow Qwen3-VL's rope index (image
tokens 3-D, text after the image at max position + 1); DeepStack features are added after the first
layers as in the reranker. **Pooling**: the hidden state of the last token (the ``\\n`` after
``assistant``) at the output of the last layer, through the final RMS norm, L2-normalised; the score of a
(query, document) pair is the dot product of the two unit vectors (their cosine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..export.checkpoint import load_state_dict, open_checkpoint
from ..export.modeling import build_model
from ..runtime.documents import Document
from ..runtime.preprocess import preprocess_image
from ..runtime.template import (EMBEDDER_IMAGE_HEAD, DocumentTokens, document_positions, embedder_image_tail_ids,
                                embedder_text_ids, text_positions)
from .scoring import run_causal


class Embedder:
    """Embeds queries and documents with an embedder checkpoint (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.ckpt = open_checkpoint(path)
        self.model = build_model(self.ckpt.config, load_state_dict(self.ckpt)).eval()
        self.tokenizer = self.ckpt.load_tokenizer()
        self.num_layers = self.ckpt.config.text.num_layers
        self.num_deepstack = len(self.ckpt.config.vision.deepstack_indexes)
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def text_ids(self, text: str) -> list[int]:
        """A text document's or a query's ids."""
        return embedder_text_ids(self.tokenizer, text)  # the text is plain text

    def image_ids(self, grid_hw: tuple[int, int], text: str | None) -> tuple[list[int], DocumentTokens]:
        """(head ids through ``<|vision_start|>``, the document part), as EmbedderGuide cuts them."""
        n = grid_hw[0] * grid_hw[1]
        tail = embedder_image_tail_ids(self.tokenizer, text)
        doc = DocumentTokens([self.ckpt.config.image_token_id] * n + tail, 0, n, (grid_hw[0], grid_hw[1]))
        return self.encode(EMBEDDER_IMAGE_HEAD), doc

    @torch.no_grad()
    def _pool(self, x: torch.Tensor, positions: np.ndarray, deepstack: torch.Tensor | None) -> np.ndarray:
        hidden = run_causal(self.model, x[None], positions, deepstack, self.num_layers)
        v = self.model.norm(hidden[0, -1]).double().numpy()
        return v / max(np.linalg.norm(v), 1e-12)

    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        """Unit vector [D] of a query or a text-only document."""
        ids = self.text_ids(text)
        return self._pool(self.model.embed_tokens(torch.tensor(ids)), text_positions(0, len(ids)), None)

    @torch.no_grad()
    def embed_document(self, doc: Document) -> np.ndarray:
        """Unit vector [D] of a document (memoised by id when it has one)."""
        if doc.id is not None and doc.id in self.cache:
            return self.cache[doc.id]
        if doc.image is None:
            vec = self.embed_text(doc.text or "")
        else:
            pixels, grid = preprocess_image(doc.image, self.ckpt.preprocess)
            embeds, deepstack = self.model.vision(torch.from_numpy(pixels), grid[1], grid[2])
            merge = self.ckpt.config.vision.spatial_merge_size
            head, tokens = self.image_ids((grid[1] // merge, grid[2] // merge), doc.text)
            x = self.model.embed_tokens(torch.tensor(head + tokens.ids)).clone()
            s = len(head)
            x[s: s + tokens.num_image] = embeds
            doc_pos, _ = document_positions(s, tokens)
            positions = np.concatenate([text_positions(0, s), doc_pos], axis=1)
            dense = None
            if self.num_deepstack:
                dense = x.new_zeros((self.num_deepstack, *x.shape))
                dense[:, s: s + tokens.num_image] = torch.stack(deepstack)
            vec = self._pool(x, positions, dense)
        if doc.id is not None:
            self.cache[doc.id] = vec
        return vec

    def scores(self, query: str, documents: list[Document]) -> np.ndarray:
        """Cosine of the query with each document: float64 [N]."""
        q = self.embed_text(query)
        return np.asarray([float(q @ self.embed_document(d)) for d in documents])
