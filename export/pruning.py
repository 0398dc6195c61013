"""Embedder-guided pruning of visual tokens.

A guide ranks the visual tokens of one image by the attention that a *last token* pays them at one
layer, averaged over heads after the softmax; the ``keep_ratio`` best are kept (``ceil(r * n)``, at least
one), in their original order, with their original 3-D positions and their DeepStack rows. Ties go to
the earlier token (a stable sort), so the choice is deterministic.

Guides:

* ``self`` — the reranker itself, on ``system + document`` (unpruned), attention of the document's last
  token (the ``\\n`` that closes the document segment) at ``guide_layer`` (default ``A``).
* ``embedder:<dir>`` — a Qwen3-VL-Embedding-style checkpoint (same architecture, its own tokenizer and
  weights) on its image-document sequence (the embedder template of :mod:`minireranker.runtime.template`);
  attention of its last token (the one it pools) at its last layer unless ``guide_layer`` says otherwise.
  Its image grid must equal the reranker's (same patch, merge and pixel bounds).
"""

from __future__ import annotations


import numpy as np
import torch

from ..runtime.errors import CheckpointError
from ..runtime.preprocess import preprocess_image
from ..runtime.pruning import num_kept, select_kept  # noqa: F401  (re-exported)
from ..runtime.template import EMBEDDER_IMAGE_HEAD, DocumentTokens, document_positions, embedder_image_tail_ids
from .checkpoint import Checkpoint, load_state_dict, open_checkpoint
from .graphs import GuideGraph, VisionGraph, system_kv, vision_tensors
from .modeling import build_model


class EmbedderGuide:
    """Ranks visual tokens with a Qwen3-VL-Embedding-style checkpoint (see the module docstring).

    The embedder's sequence is cut like the reranker's: its constant head (system prompt through
    ``<|vision_start|>``) plays the system segment, with K/V computed once; the rest is the document.
    """

    def __init__(self, path: str, reranker: Checkpoint, guide_layer: int | None) -> None:
        self.ckpt = open_checkpoint(path)
        mine, theirs = self.ckpt.preprocess, reranker.preprocess
        if (mine.patch_size, mine.merge_size, mine.min_pixels, mine.max_pixels) != (
            theirs.patch_size, theirs.merge_size, theirs.min_pixels, theirs.max_pixels
        ):
            raise CheckpointError(
                f"embedder {path}: its image preprocessing (patch, merge, min/max pixels) differs from the "
                "reranker's, so its visual tokens would not line up; use an embedder of the same family"
            )
        n = self.ckpt.config.text.num_layers
        self.layer = n - 1 if guide_layer is None else guide_layer
        if not 0 <= self.layer < n:
            raise CheckpointError(f"guide_layer={self.layer} is outside the embedder's layers 0..{n - 1}")
        config = self.ckpt.config.first_layers(self.layer + 1)  # the guide reads no layer past its own
        self.model = build_model(config, load_state_dict(self.ckpt, config=config)).eval()
        self.tokenizer = self.ckpt.load_tokenizer()
        self.system_ids = self.encode(EMBEDDER_IMAGE_HEAD)
        self.system_k, self.system_v = system_kv(self.model, self.system_ids, self.layer + 1)
        self.num_deepstack = len(self.ckpt.config.vision.deepstack_indexes)
        self.graph = GuideGraph(self.model, self.layer, self.num_deepstack > 0)
        self.vision_graph = VisionGraph(self.model)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def document(self, grid_hw: tuple[int, int], text: str | None) -> DocumentTokens:
        """The embedder's document part: image pads first, then ``<|vision_end|>{text}`` and the closing."""
        n = grid_hw[0] * grid_hw[1]
        tail = embedder_image_tail_ids(self.tokenizer, text)  # the text is plain text
        return DocumentTokens([self.ckpt.config.image_token_id] * n + tail, 0, n, (grid_hw[0], grid_hw[1]))

    @torch.no_grad()
    def importance(self, image, text: str | None, grid_hw: tuple[int, int]) -> np.ndarray:
        """Head-averaged attention of the embedder's last token over the visual tokens: float64 [Nv]."""
        pixels, grid = preprocess_image(image, self.ckpt.preprocess)
        merge = self.ckpt.config.vision.spatial_merge_size
        if (grid[1] // merge, grid[2] // merge) != tuple(grid_hw):
            raise CheckpointError(f"embedder grid {(grid[1] // merge, grid[2] // merge)} differs from the "
                                  f"reranker's {tuple(grid_hw)}")
        embeds, stacked = self.vision_graph(torch.from_numpy(pixels),
                                            *vision_tensors(self.ckpt.config.vision, grid[1], grid[2]))
        deepstack = list(stacked.unbind(0))
        doc = self.document(grid_hw, text)
        x = self.model.embed_tokens(torch.tensor(doc.ids)).clone()
        x[: doc.num_image] = embeds
        positions, _ = document_positions(len(self.system_ids), doc)
        dense = None
        if self.num_deepstack:
            dense = x.new_zeros((self.num_deepstack, *x.shape))
            dense[:, : doc.num_image] = torch.stack(deepstack)
        probs = self.graph(x[None], torch.from_numpy(positions)[:, None], self.system_k, self.system_v, dense)
        start = len(self.system_ids)
        return probs[start: start + doc.num_image].double().numpy()
