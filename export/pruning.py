"""Embedder-guided pruning of visual tokens.

A guide ranks the visual tokens of one image by the attention that a *last token* pays them at one
layer, averaged over heads after the softmax; the ``keep_ratio`` best are kept (``ceil(r * n)``, at least
one), in their original order, with their original 3-D positions and their DeepStack rows. Ties go to
the earlier token (a stable sort), so the choice is deterministic.

Guides:

* ``self`` — the reranker itself, on ``system + document`` (unpruned), attention of the document's last
  token (the ``\\n`` that closes the document segment) at ``guide_layer`` (default ``A``).
* ``embedder:<dir>`` — a Qwen3-VL-Embedding-style checkpoint (same architecture, its own tokenizer and
  weights) on its document sequence ``<|im_start|>system\\nRepresent the user's input.<|im_end|>\\n
  <|im_start|>user\\n<|vision_start|><|image_pad|>*n<|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n``;
  attention of its last token (the one it pools) at its last layer unless ``guide_layer`` says otherwise.
  Its image grid must equal the reranker's (same patch, merge and pixel bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..runtime.errors import CheckpointError
from ..runtime.preprocess import preprocess_image
from ..runtime.template import DocumentTokens, document_positions, text_positions
from .checkpoint import Checkpoint, load_state_dict, open_checkpoint
from .modeling import Qwen3VLTorch

EMBEDDER_SYSTEM = "Represent the user's input."


def num_kept(num_visual: int, keep_ratio: float) -> int:
    return max(1, min(num_visual, math.ceil(keep_ratio * num_visual - 1e-9)))


def select_kept(importance: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Indices (ascending) of the ``ceil(r * n)`` most important tokens; ties to the earlier token."""
    order = np.lexsort((np.arange(len(importance)), -np.asarray(importance, dtype=np.float64)))
    return np.sort(order[: num_kept(len(importance), keep_ratio)])


@dataclass
class GuideSequence:
    """A whole sequence to run without cache: ids [T], embeds [T, D], positions [3, T], visual rows."""

    embeds: Tensor
    positions: Tensor
    visual_rows: Tensor
    deepstack: list[Tensor]


@torch.no_grad()
def last_token_attention(model: Qwen3VLTorch, seq: GuideSequence, layer: int) -> np.ndarray:
    """Head-averaged softmax attention of the last token over the visual tokens at ``layer``: [Nv]."""
    x = seq.embeds[None]
    cos, sin = model.rotary(seq.positions[:, None])
    for i in range(layer):
        x, _, _ = model.layers[i](x, cos, sin, None, None, None)
        if i < len(seq.deepstack):
            x[0, seq.visual_rows] += seq.deepstack[i]
    q, k, _ = model.layers[layer].project_qkv(x, cos, sin)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    scores = (q[:, :, -1:] @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [1, Hq, 1, T]
    probs = torch.softmax(scores.float(), dim=-1)[0, :, 0]  # [Hq, T]
    return probs.mean(0)[seq.visual_rows].double().numpy()


class EmbedderGuide:
    """Ranks visual tokens with a Qwen3-VL-Embedding-style checkpoint (see the module docstring)."""

    def __init__(self, path: str, reranker: Checkpoint, guide_layer: int | None) -> None:
        self.ckpt = open_checkpoint(path)
        if (self.ckpt.preprocess.patch_size, self.ckpt.preprocess.merge_size) != (
            reranker.preprocess.patch_size, reranker.preprocess.merge_size
        ) or (self.ckpt.preprocess.min_pixels, self.ckpt.preprocess.max_pixels) != (
            reranker.preprocess.min_pixels, reranker.preprocess.max_pixels
        ):
            raise CheckpointError(
                f"embedder {path}: its image preprocessing (patch, merge, min/max pixels) differs from the "
                "reranker's, so its visual tokens would not line up; use an embedder of the same family"
            )
        self.model = Qwen3VLTorch(self.ckpt.config, load_state_dict(self.ckpt)).eval()
        tok = self.ckpt.load_tokenizer()
        enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
        self.head = enc(f"<|im_start|>system\n{EMBEDDER_SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>")
        self.enc = enc
        self.pad_id = self.ckpt.config.image_token_id
        n = self.ckpt.config.text.num_layers
        self.layer = n - 1 if guide_layer is None else guide_layer
        if not 0 <= self.layer < n:
            raise CheckpointError(f"guide_layer={self.layer} is outside the embedder's layers 0..{n - 1}")

    @torch.no_grad()
    def importance(self, image, text: str | None, grid_hw: tuple[int, int]) -> np.ndarray:
        pixels, grid = preprocess_image(image, self.ckpt.preprocess)
        merge = self.ckpt.config.vision.spatial_merge_size
        gh, gw = grid[1] // merge, grid[2] // merge
        if (gh, gw) != tuple(grid_hw):
            raise CheckpointError(f"embedder grid {(gh, gw)} differs from the reranker's {tuple(grid_hw)}")
        embeds, deepstack = self.model.vision(torch.from_numpy(pixels), grid[1], grid[2])
        tail = self.enc(f"<|vision_end|>{text or ''}<|im_end|>\n<|im_start|>assistant\n")
        ids = torch.tensor(self.head + [self.pad_id] * (gh * gw) + tail)
        x = self.model.embed_tokens(ids).clone()
        rows = torch.arange(len(self.head), len(self.head) + gh * gw)
        x[rows] = embeds
        # The embedder's sequence: positions as the reranker's template computes them, system length 0.
        doc = DocumentTokens(ids.tolist(), len(self.head), gh * gw, (gh, gw))
        pos, _ = document_positions(0, doc)
        seq = GuideSequence(x, torch.from_numpy(pos), rows, deepstack)
        return last_token_attention(self.model, seq, self.layer)


def self_guide_sequence(model: Qwen3VLTorch, system_ids: list[int], doc_embeds: Tensor, doc_positions: np.ndarray,
                        visual_rows: Tensor, deepstack: list[Tensor]) -> GuideSequence:
    """``system + document`` as one uncached sequence for the ``self`` guide."""
    s = len(system_ids)
    embeds = torch.cat([model.embed_tokens(torch.tensor(system_ids)), doc_embeds], dim=0)
    positions = torch.from_numpy(np.concatenate([text_positions(0, s), doc_positions], axis=1))
    return GuideSequence(embeds, positions, visual_rows + s, deepstack)
