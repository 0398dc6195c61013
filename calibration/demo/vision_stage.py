"""Stage 0 of the demo training: the shared vision tower learns what each merged visual token shows."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...runtime.errors import CheckpointError
from ...runtime.preprocess import PreprocessConfig, preprocess_image
from . import data, images, pools
from .train_config import TrainConfig, lr_factor
from .trainable import TrainableQwen3VL

BLANK, IGNORE = 10, -100  # token classes beyond the ten digits (IGNORE: cross_entropy's ignore_index)


def token_labels(doc: data.DocSpec, grid: tuple[int, int, int], merge: int = 2, patch: int = 16) -> np.ndarray:
    """What each merged visual token of a digit image shows: the digit of the cell it lies in, or
    ``BLANK`` over a margin; ``IGNORE`` everywhere when the image was resized (cells no longer align).

    Cells (DIGIT_SIDE pixels) and margins (multiples of 32) fall on whole merged tokens (patch*merge = 32
    pixels), so every token is one cell or one margin. Tokens come row-major over the merged grid.
    """
    side = patch * merge
    rows, cols = grid[1] // merge, grid[2] // merge
    labels = np.full(cols, IGNORE, dtype=np.int64)
    width = sum(doc.margins) + data.DIGIT_SIDE * len(doc.sources)
    if cols * side == width and rows * side == data.DIGIT_SIDE:
        at = 0
        for i, digit in enumerate(doc.digits):
            labels[at: at + doc.margins[i] // side] = BLANK
            at += doc.margins[i] // side
            labels[at: at + data.DIGIT_SIDE // side] = digit
            at += data.DIGIT_SIDE // side
        labels[at:] = BLANK
    return np.tile(labels, rows)


def digit_word_ids(tokenizer) -> torch.Tensor:
    """[2, 10] token ids of each digit as queries spell it: the numeral ("7") and the word (" seven")."""
    ids = [[tokenizer.token_to_id(str(d)) for d in range(10)],
           [tokenizer.token_to_id(f"\u0120{w}") for w in data.NUMBER_WORDS]]
    if any(i is None for row in ids for i in row):
        raise CheckpointError("the demo tokenizer must hold every numeral and ' zero'..' nine' as single tokens")
    return torch.tensor(ids)


def pretrain_vision(model: TrainableQwen3VL, digits: images.Digits, preprocess: PreprocessConfig, cfg: TrainConfig,
                    progress: bool = True, words: torch.Tensor | None = None) -> list[float]:
    """Stage 0: every merged visual token of a training digit image (single or composite) learns which
    digit it shows, or that it is blank (:func:`token_labels`); photographs are classified from the mean of
    their tokens.

    ``words`` (:func:`digit_word_ids`, what ``train_demo`` passes) makes the digit classifier's rows the digit
    words' token embeddings; without it a separate linear classifier is used (the untied ablation, whose
    embedder reached held-out nDCG@10 0.57 in development, against 0.62-0.68 tied). The other classifiers
    are thrown away; the vision tower they trained is where both models start (as
    the real Qwen3-VL-Embedding and -Reranker start from one Qwen3-VL, whose visual tokens already say
    what lies where). Without it the reranker's ranking loss sits on a plateau where it only learns which
    kinds of document a kind of query prefers. Token-level rather than image-level targets: an image-level
    stage (singles only, mean of tokens) left both models unable to find a digit inside a composite
    (held-out digit queries ranked composites holding the digit below random negatives).
    """
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed + 5)
    photos = list(data.PHOTOS)
    pool = pools.digit_documents(digits, "train", 2000, cfg.seed + 6)  # singles and composites
    tokens_head, photo_head = nn.Linear(model.hidden_size, 11), nn.Linear(model.hidden_size, len(photos))
    blank = nn.Parameter(torch.randn(1, model.hidden_size) * 0.02)
    params = [*model.core.vision.parameters(), *tokens_head.parameters(), *photo_head.parameters(), blank]
    if words is not None:
        params.append(model.core.embed)
    optimizer, losses = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01), []
    for step in tqdm(range(cfg.vision_steps), desc="vision", disable=not progress):
        docs = [pool[int(i)] for i in rng.integers(len(pool), size=40)]
        shots = [photos[int(i)] for i in rng.integers(len(photos), size=12)]
        inputs = [preprocess_image(images.render(d, digits, rng), preprocess) for d in docs]
        inputs += [preprocess_image(images.render_photo(name, rng), preprocess) for name in shots]
        embeds, _ = model.vision([p for p, _ in inputs], [g for _, g in inputs])
        counts = [g[1] * g[2] // 4 for _, g in inputs]
        split = sum(counts[: len(docs)])
        labels = torch.from_numpy(np.concatenate([token_labels(d, g) for d, (_, g) in zip(docs, inputs)]))
        if words is None:
            loss = F.cross_entropy(tokens_head(embeds[:split]), labels, ignore_index=IGNORE)
        else:  # the classifier's rows are the digit words' own embeddings (cosine, scale 10)
            visual = F.normalize(embeds[:split], dim=-1)
            loss = sum(F.cross_entropy(10 * visual @ F.normalize(torch.cat([model.core.embed[row], blank]), dim=-1).T,
                                       labels, ignore_index=IGNORE) for row in words) / len(words)
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(counts[len(docs):])])
        pooled = torch.zeros(len(shots), embeds.shape[1]).index_add(0, owner, embeds[split:])
        pooled = pooled / torch.bincount(owner)[:, None]
        loss = loss + F.cross_entropy(photo_head(pooled), torch.tensor([photos.index(n) for n in shots]))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.vision_steps, cfg.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
