"""The demo embedder: its sequences (documents as ``pruning.EmbedderGuide`` builds them), first-stage
retrieval with a trained checkpoint, and its contrastive training (stage 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime.documents import Document
from ...runtime.preprocess import PreprocessConfig, preprocess_image
from ...runtime.template import (EMBEDDER_IMAGE_HEAD, DocumentTokens, document_positions, embedder_image_tail_ids,
                                 embedder_text_ids, text_positions)
from ...export.checkpoint import load_state_dict, open_checkpoint
from . import data, images, pools
from .train_config import TrainConfig, lr_factor, new_optimizer, optimizer_step
from .trainable import Sample, TrainableQwen3VL, collate


class EmbedderTemplate:
    """The embedder's sequences: documents as ``pruning.EmbedderGuide`` builds them, queries as text."""

    def __init__(self, tokenizer, preprocess: PreprocessConfig) -> None:
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.prefix_ids = self.encode(EMBEDDER_IMAGE_HEAD)
        self.image_pad = tokenizer.token_to_id("<|image_pad|>")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def text(self, text: str) -> Sample:
        """A query, or a text-only document: the text is the user turn."""
        ids = embedder_text_ids(self.tokenizer, text)  # the text is plain text
        return Sample(ids, text_positions(0, len(ids)))

    def document(self, image, text: str | None) -> Sample:
        if image is None:
            return self.text(text or "")
        pixels, grid = preprocess_image(image, self.preprocess)
        m = self.preprocess.merge_size
        n = grid[1] * grid[2] // (m * m)
        tail = embedder_image_tail_ids(self.tokenizer, text)
        doc = DocumentTokens([self.image_pad] * n + tail, 0, n, (grid[1] // m, grid[2] // m))
        positions, _ = document_positions(len(self.prefix_ids), doc)
        return Sample(self.prefix_ids + doc.ids, np.concatenate([text_positions(0, len(self.prefix_ids)), positions], 1),
                      pixels, grid, len(self.prefix_ids))


class DemoEmbedder:
    """First-stage retrieval with an embedder checkpoint: L2-normalised last-token embeddings (numpy)."""

    def __init__(self, path: str | Path, batch_size: int = 32) -> None:
        ckpt = open_checkpoint(path)
        self.model = TrainableQwen3VL(ckpt.config, load_state_dict(ckpt), None).eval()
        self.template = EmbedderTemplate(ckpt.load_tokenizer(), ckpt.preprocess)
        self.batch_size = batch_size

    @torch.no_grad()
    def _run(self, samples: list[Sample]) -> np.ndarray:
        layers = self.model.core.config.text.num_layers
        out = [self.model.embed(self.model(collate(samples[i: i + self.batch_size], layers))[0][-1])
               for i in range(0, len(samples), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.hidden_size), np.float32)

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """[N, D] float32, unit norm."""
        return self._run([self.template.text(q) for q in queries])

    def embed_documents(self, documents: list[Document]) -> np.ndarray:
        """[N, D] float32, unit norm (an image, a text, or an image followed by its text)."""
        return self._run([self.template.document(d.image, d.text) for d in documents])


def train_embedder(model: TrainableQwen3VL, template: EmbedderTemplate, pool: pools.DocPool, digits: images.Digits,
                   cfg: TrainConfig, progress: bool = True) -> list[float]:
    """InfoNCE over in-batch documents (each query's relevant document and one hard negative per query)."""
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed + 11)
    optimizer, losses = new_optimizer(model, cfg), []
    layers = model.core.config.text.num_layers
    bar = tqdm(range(cfg.embedder_steps), desc="embedder", disable=not progress)
    for step in bar:
        queries, docs, positive = [], [], []
        while len(queries) < cfg.embedder_pairs_per_step:
            q = pools.sample_query(rng, dict(cfg.query_kinds))
            picked = pools.select_candidates(q, pool, rng, (1, 1, 1, 0), hard_singles=True)
            relevant = [d for d, g in picked if g == 2]
            if relevant:
                queries.append(q)
                positive.append(len(docs))
                docs += relevant[:1] + [d for d, g in picked if g < 2]
        samples = [template.text(q.text) for q in queries]
        samples += [template.document(images.render(d, digits, rng), d.text) for d in docs]
        emb = model.embed(model(collate(samples, layers))[0][-1])
        eq, ed = emb[: len(queries)], emb[len(queries):]
        positive = torch.tensor(positive)
        logits = eq @ ed.T / cfg.temperature
        others = torch.tensor([[data.relevance(q, d) == 2 for d in docs] for q in queries])
        others[torch.arange(len(queries)), positive] = False
        loss = F.cross_entropy(logits.masked_fill(others, -1e4), positive)
        optimizer_step(model, optimizer, loss, cfg.lr * lr_factor(step, cfg.embedder_steps, cfg.warmup_steps))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses
