"""Train the bundled demo reranker and embedder on real images, on a CPU, reproducibly.

``python -m minireranker.calibration.demo.train OUT_DIR [--steps N] [--embedder-steps N] [--vision-steps N] [--seed N]``
writes::

    OUT_DIR/embedder/   Qwen3-VL-Embedding-style checkpoint (HF layout) + README.md card
    OUT_DIR/reranker/   Qwen3-VL point-wise reranker checkpoint (HF layout) + README.md card
    OUT_DIR/corpus/     the demo corpus (corpus.jsonl, queries.txt, images/)
    OUT_DIR/eval/       heldout.jsonl, calib.jsonl, images/  (the labelled format of demo_data)
    OUT_DIR/DATA_CARD.md, OUT_DIR/train_report.json (times, losses, metrics)

Both models are the Qwen3-VL architecture (patch 16, merge 2, DeepStack) at a few MB, with a tokenizer
trained by ``tokenizer_factory`` on the demo's words. Stage 0 teaches one vision tower what each visual
token shows (which digit, or blank; which photograph); both models start from it. The embedder is trained
next (contrastive, in-batch negatives); its attention then guides the visual-token pruning the reranker
sees in training.

The training forward (:class:`~.trainable.TrainableQwen3VL`, in ``trainable.py``) batches whole sequences
(system, document, query) with one boolean mask per layer, so the miniReranker approximations are trained
exactly as they run:

* band: query rows cannot see document columns outside layers ``A..B`` (``oracle``'s mask) and the query
  starts at the fixed ``query_position``;
* pruning: dropped visual tokens become invisible keys (their positions are kept by construction), which
  is the same arithmetic as removing them;
* early exit: the final norm and the yes/no rows are applied to every layer from ``first_exit``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import summarize
from ...runtime.documents import Document
from ...runtime.errors import CheckpointError
from ...runtime.preprocess import PreprocessConfig, preprocess_image
from ...runtime.spec import RerankSpec
from ...runtime.template import DocumentTokens, VisionFirstTemplate, document_positions, text_positions
from . import data
from ...export.checkpoint import load_state_dict, open_checkpoint
from ...export.config import parse_model_config
from ...export.pruning import EMBEDDER_SYSTEM, EmbedderGuide, select_kept
from ...export.tiny import TinyPreset, build_config, build_preprocessor_config, build_preset_state_dict, padded_vocab_size, \
    write_safetensors
from ...export.tokenizer_factory import QWEN_SPECIAL_TOKENS, build_tokenizer, write_tokenizer
from .trainable import Sample, TrainableQwen3VL, collate

_SHAPE = dict(hidden_size=96, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
              mrope_section=(4, 4, 4), vision_depth=3, vision_hidden_size=48, vision_intermediate_size=96,
              vision_num_heads=2, num_position_embeddings=64, deepstack_visual_indexes=(0, 1),
              min_pixels=32 * 32, max_pixels=128 * 128)
RERANKER_PRESET = TinyPreset(num_hidden_layers=8, **_SHAPE)
EMBEDDER_PRESET = TinyPreset(num_hidden_layers=4, **_SHAPE)  # same vision layout and pixel budget


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the defaults are the shipped models' settings."""

    seed: int = 0
    reranker_steps: int = 750
    embedder_steps: int = 250
    vision_steps: int = 300            # stage 0: the shared vision tower learns digits and photographs
    queries_per_step: int = 8          # reranker: groups of one query and its candidates
    candidates_per_query: int = 6      # 1-2 relevant, 1 partial, hard and random negatives
    embedder_pairs_per_step: int = 24  # embedder: (query, relevant document) pairs, plus one hard negative each
    lr: float = 3e-3
    warmup_steps: int = 40
    temperature: float = 0.05          # InfoNCE
    first_exit: int = 2                # deep supervision from this layer to the last
    band_fraction: float = 0.3         # groups trained with a band and the fixed query position
    prune_fraction: float = 0.3        # groups whose images lose visual tokens
    query_position: int = 128          # P for specs with A > 0: past every demo document's positions
    train_composites: int = 4000
    query_kinds: tuple[tuple[str, float], ...] = (("digit", 0.3), ("ordered", 0.2), ("pair", 0.15),
                                                  ("count", 0.15), ("photo", 0.2))

    @classmethod
    def smoke(cls) -> "TrainConfig":
        """A few small steps: what the tests run."""
        return cls(reranker_steps=24, embedder_steps=12, vision_steps=10, queries_per_step=3, candidates_per_query=4,
                   embedder_pairs_per_step=6, warmup_steps=4, train_composites=200)


# ---------------------------------------------------------------------------------------------------
# the two sequence formats
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """How one query group is run in training: dense, or with a band (and P), and/or pruned."""

    band: tuple[int, int] | None = None
    keep_ratio: float = 1.0
    guided: bool = False  # pruned by the embedder's attention (else at random)


def reranker_sample(template: VisionFirstTemplate, preprocess: PreprocessConfig, query: str, image, text: str | None,
                    view: View = View(), query_position: int = 0, guide: EmbedderGuide | None = None,
                    rng: np.random.Generator | None = None, caption: bool = False,
                    ground: data.DocSpec | None = None) -> Sample:
    """The vision-first sequence ``system + document + query`` exactly as ReferencePipeline builds it.

    ``caption`` marks the query's words for the language-model loss (a relevant document predicts them).
    ``ground``, the digit image's description, marks for a dense unpruned view which visual tokens
    (:func:`token_labels`) each digit the query names should find (the grounding loss of :func:`reranker_loss`).
    """
    pixels, grid, grid_hw = None, None, None
    if image is not None:
        pixels, grid = preprocess_image(image, preprocess)
        grid_hw = (grid[1] // preprocess.merge_size, grid[2] // preprocess.merge_size)
    doc = template.document(grid_hw, text)
    s = len(template.system_ids)
    doc_positions, query_start = document_positions(s, doc)
    q = template.query(query)
    start = query_position if view.band is not None else query_start
    positions = np.concatenate([text_positions(0, s), doc_positions, text_positions(start, len(q))], axis=1)
    sample = Sample(template.system_ids + doc.ids + q, positions, pixels, grid,
                    s + doc.image_start if image is not None else -1, (s, s + len(doc.ids)), view.band)
    if view.keep_ratio < 1.0 and image is not None:
        n = sample.num_visual
        importance = guide.importance(image, text, grid_hw) if view.guided and guide else rng.random(n)
        sample.dropped = np.setdiff1d(np.arange(n), select_kept(importance, view.keep_ratio))
    if ground is not None and ground.digits and grid is not None and view.band is None and view.keep_ratio == 1.0:
        visual_labels = token_labels(ground, grid)
        digit_of = _digit_tokens(template.tokenizer)
        first = len(sample.ids) - len(q)
        for j, token in enumerate(q):
            hits = np.flatnonzero(visual_labels == digit_of.get(token, -1))
            if len(hits):
                sample.ground.append((first + j, sample.image_start + hits))
    if caption:
        head = template.encode(f"<Instruct>: {template.spec.instruction}\n<Query>:")
        tail = template.encode("<|im_end|>\n<|im_start|>assistant\n")
        start = len(sample.ids) - len(q) + len(head)
        if q[: len(head)] == head and q[len(q) - len(tail):] == tail:
            sample.caption = (start, len(sample.ids) - len(tail))
    return sample


@lru_cache(maxsize=4)
def _digit_tokens(tokenizer) -> dict[int, int]:
    """Token id -> digit, for the numerals and the number words of :func:`digit_word_ids`."""
    return {int(i): d for row in digit_word_ids(tokenizer) for d, i in enumerate(row)}


class EmbedderTemplate:
    """The embedder's sequences: documents as ``pruning.EmbedderGuide`` builds them, queries as text."""

    def __init__(self, tokenizer, preprocess: PreprocessConfig) -> None:
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.head = f"<|im_start|>system\n{EMBEDDER_SYSTEM}<|im_end|>\n<|im_start|>user\n"
        self.prefix_ids = self.encode(self.head + "<|vision_start|>")
        self.image_pad = tokenizer.token_to_id("<|image_pad|>")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def text(self, text: str) -> Sample:
        """A query, or a text-only document: the text is the user turn."""
        ids = self.encode(f"{self.head}{text}<|im_end|>\n<|im_start|>assistant\n")
        return Sample(ids, text_positions(0, len(ids)))

    def document(self, image, text: str | None) -> Sample:
        if image is None:
            return self.text(text or "")
        pixels, grid = preprocess_image(image, self.preprocess)
        m = self.preprocess.merge_size
        n = grid[1] * grid[2] // (m * m)
        tail = self.encode(f"<|vision_end|>{text or ''}<|im_end|>\n<|im_start|>assistant\n")
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


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _initial_state(preset: TinyPreset, seed: int, vocab_size: int) -> dict[str, Tensor]:
    """tiny.py's seeded weights, with residual output projections scaled by 1/sqrt(2L) (GPT-2 style) so the
    residual stream starts at the same scale whatever the depth."""
    state = build_preset_state_dict(preset, seed, vocab_size)
    scale = (2 * preset.num_hidden_layers) ** -0.5
    for name in state:
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            state[name] = state[name] * scale
    return state


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


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


def pretrain_vision(model: TrainableQwen3VL, digits: data.Digits, preprocess: PreprocessConfig, cfg: TrainConfig,
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
    pool = data.digit_documents(digits, "train", 2000, cfg.seed + 6)  # singles and composites
    tokens_head, photo_head = nn.Linear(model.hidden_size, 11), nn.Linear(model.hidden_size, len(photos))
    blank = nn.Parameter(torch.randn(1, model.hidden_size) * 0.02)
    params = [*model.core.vision.parameters(), *tokens_head.parameters(), *photo_head.parameters(), blank]
    if words is not None:
        params.append(model.core.embed)
    optimizer, losses = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01), []
    for step in tqdm(range(cfg.vision_steps), desc="vision", disable=not progress):
        docs = [pool[int(i)] for i in rng.integers(len(pool), size=40)]
        shots = [photos[int(i)] for i in rng.integers(len(photos), size=12)]
        inputs = [preprocess_image(data.render(d, digits, rng), preprocess) for d in docs]
        inputs += [preprocess_image(data.render_photo(name, rng), preprocess) for name in shots]
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
            group["lr"] = cfg.lr * _lr_factor(step, cfg.vision_steps, cfg.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_embedder(model: TrainableQwen3VL, template: EmbedderTemplate, pool: data.DocPool, digits: data.Digits,
                   cfg: TrainConfig, progress: bool = True) -> list[float]:
    """InfoNCE over in-batch documents (each query's relevant document and one hard negative per query)."""
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed + 11)
    optimizer, losses = _optimizer(model, cfg), []
    layers = model.core.config.text.num_layers
    bar = tqdm(range(cfg.embedder_steps), desc="embedder", disable=not progress)
    for step in bar:
        queries, docs, positive = [], [], []
        while len(queries) < cfg.embedder_pairs_per_step:
            q = data.sample_query(rng, dict(cfg.query_kinds))
            picked = data.select_candidates(q, pool, rng, (1, 1, 1, 0), hard_singles=True)
            relevant = [d for d, g in picked if g == 2]
            if relevant:
                queries.append(q)
                positive.append(len(docs))
                docs += relevant[:1] + [d for d, g in picked if g < 2]
        samples = [template.text(q.text) for q in queries]
        samples += [template.document(data.render(d, digits, rng), d.text) for d in docs]
        emb = model.embed(model(collate(samples, layers))[0][-1])
        eq, ed = emb[: len(queries)], emb[len(queries):]
        positive = torch.tensor(positive)
        logits = eq @ ed.T / cfg.temperature
        others = torch.tensor([[data.relevance(q, d) == 2 for d in docs] for q in queries])
        others[torch.arange(len(queries)), positive] = False
        loss = F.cross_entropy(logits.masked_fill(others, -1e4), positive)
        _step(model, optimizer, loss, cfg.lr * _lr_factor(step, cfg.embedder_steps, cfg.warmup_steps))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


def _sample_view(rng: np.random.Generator, cfg: TrainConfig, num_layers: int) -> View:
    """A dense or banded view (A in 0..2, B = A or A+1), pruned or not (keep 1/4, 1/2 or 3/4)."""
    band = None
    if rng.random() < cfg.band_fraction:
        a = int(rng.integers(0, 3))
        band = (a, min(num_layers - 1, a + int(rng.integers(0, 2))))
    if rng.random() < cfg.prune_fraction:
        return View(band, float(rng.choice([0.25, 0.5, 0.75])), bool(rng.random() < 0.5))
    return View(band)


GRADE_TARGET = {2: 1.0, 1: 0.3, 0: 0.0}  # pointwise targets: partial matches sit between yes and no
CAPTION_WEIGHT = 0.3                     # language-model loss on the query words of relevant, dense pairs
GROUND_LAYER, GROUND_WEIGHT = 1, 0.5     # attention supervision: layer, weight (head 0; see reranker_loss)


def reranker_loss(model: TrainableQwen3VL, samples: list[Sample], grades: list[int], groups: list[int],
                  cfg: TrainConfig) -> Tensor:
    """Deep-supervised loss: at each exit layer e >= first_exit (and >= the sample's band end),
    pointwise BCE against graded targets plus a listwise softmax loss within each query's candidates."""
    num_layers = model.core.config.text.num_layers
    batch = collate(samples, num_layers)
    model.keep_qk_layer = GROUND_LAYER
    hidden, states = model(batch)
    target = torch.tensor([GRADE_TARGET[g] for g in grades])
    gains = torch.tensor([2.0 ** g - 1 for g in grades])
    band_end = torch.tensor([s.band[1] if s.band else 0 for s in samples])
    group = torch.tensor(groups)
    total, weights = 0.0, 0.0
    for e in range(cfg.first_exit, num_layers):
        valid = band_end <= e
        if not valid.any():
            continue
        score = model.score(hidden[e])
        loss = F.binary_cross_entropy_with_logits(score[valid], target[valid])
        members = [valid & (group == g) for g in group[valid].unique()]
        listwise = [-(torch.log_softmax(score[m], 0) * gains[m]).sum() / gains[m].sum()
                    for m in members if gains[m].sum() > 0]
        if listwise:
            loss = loss + 0.5 * torch.stack(listwise).mean()
        w = 1.0 if e == num_layers - 1 else 0.5
        total, weights = total + w * loss, weights + w
    total = total / weights
    if batch.ground:  # one head of one early layer: a digit the query names attends to where the image shows it
        q, k = model.kept_qk
        terms = []
        for i, row, columns in batch.ground:
            logits = (k[i, 0] @ q[i, 0, row]) / math.sqrt(q.shape[-1])
            logits = logits.masked_fill(~batch.visible[GROUND_LAYER][i, 0, row], float("-inf"))
            terms.append(torch.logsumexp(logits[columns], 0) - torch.logsumexp(logits, 0))
        total = total - GROUND_WEIGHT * torch.stack(terms).mean()
    if batch.predict is not None:  # relevant documents predict the query's words: it teaches reading
        rows, at, target = batch.predict
        logits = model.core.norm(states[rows, at]) @ model.lm_head.T
        total = total + CAPTION_WEIGHT * F.cross_entropy(logits, target)
    return total


def train_reranker(model: TrainableQwen3VL, template: VisionFirstTemplate, preprocess: PreprocessConfig,
                   pool: data.DocPool, digits: data.Digits, cfg: TrainConfig, guide: EmbedderGuide | None,
                   progress: bool = True) -> list[float]:
    """Groups of (query, candidates) under sampled views; see :func:`reranker_loss`."""
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed + 23)
    optimizer, losses = _optimizer(model, cfg), []
    num_layers = model.core.config.text.num_layers
    bar = tqdm(range(cfg.reranker_steps), desc="reranker", disable=not progress)
    c = cfg.candidates_per_query
    for step in bar:
        samples, grades, groups = [], [], []
        for g in range(cfg.queries_per_step):
            q = data.sample_query(rng, dict(cfg.query_kinds))
            view = _sample_view(rng, cfg, num_layers)
            counts = (1 + int(rng.random() < 0.3), 1, 2, max(0, c - 5))
            picked = data.select_candidates(q, pool, rng, counts, hard_singles=True)
            # one photograph or text document, as every labelled query has: rare among random negatives
            other = pool.photos if rng.random() < 0.5 else pool.texts
            extra = other[int(rng.integers(len(other)))]
            if all(extra.id != doc.id for doc, _ in picked):
                picked.append((extra, data.relevance(q, extra)))
            for doc, grade in picked:
                image = data.render(doc, digits, rng)
                samples.append(reranker_sample(template, preprocess, q.text, image, doc.text, view,
                                               cfg.query_position, guide, rng, grade == 2 and view.band is None,
                                               doc))
                grades.append(grade)
                groups.append(g)
        loss = reranker_loss(model, samples, grades, groups, cfg)
        _step(model, optimizer, loss, cfg.lr * _lr_factor(step, cfg.reranker_steps, cfg.warmup_steps))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------
def demo_tokenizer():
    """The demo models' tokenizer: tokenizer_factory's BPE, trained with the demo's words added."""
    return build_tokenizer(data.vocabulary_lines())


def new_model(preset: TinyPreset, tokenizer, seed: int, answers: bool) -> TrainableQwen3VL:
    """A freshly initialised model; ``answers`` adds the trainable yes/no rows (the reranker)."""
    vocab = padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True))
    token_ids = {t: tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    config = parse_model_config(build_config(preset, token_ids, vocab))
    answer_ids = (tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")) if answers else None
    return TrainableQwen3VL(config, _initial_state(preset, seed, vocab), answer_ids)


def save_checkpoint(model: TrainableQwen3VL, preset: TinyPreset, tokenizer, directory: Path) -> Path:
    """Write the model in Hugging Face layout, as tiny.py writes its checkpoints (float32, one file)."""
    from ...export.tiny import parameter_specs

    state = model.transformers_state_dict()
    vocab = state["lm_head.weight"].shape[0]
    expected = set(parameter_specs(preset, vocab))
    if set(state) != expected:
        raise CheckpointError(f"trained weights do not map onto transformers' names: missing "
                              f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    directory.mkdir(parents=True, exist_ok=True)
    write_tokenizer(directory, tokenizer)
    token_ids = {t: tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    _write_json(directory / "config.json", build_config(preset, token_ids, vocab))
    _write_json(directory / "preprocessor_config.json", build_preprocessor_config(preset))
    write_safetensors(directory, state, 1)
    return directory


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# evaluation on the labelled sets (dense reranker through ReferencePipeline; embedder as first stage)
# ---------------------------------------------------------------------------------------------------
def load_labelled(path: Path) -> list[dict]:
    """The rows of a labelled JSONL file, each candidate with a ``document`` (image paths resolved)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        for c in row["candidates"]:
            image = path.parent / c["image"] if c["image"] else None
            c["document"] = Document(image=image, text=c["text"], id=c["id"])
    return rows


def evaluate_reranker(checkpoint: Path, labelled: Path, spec: RerankSpec | None = None) -> dict[str, float]:
    """The reranker's metrics on a labelled set; each document is indexed once, as the runtime would."""
    from ...export.reference import ReferencePipeline

    pipeline = ReferencePipeline(checkpoint, spec or RerankSpec.exact())
    entries: dict = {}
    rows, scores = load_labelled(labelled), []
    for row in rows:
        for c in row["candidates"]:
            if c["id"] not in entries:
                entries[c["id"]] = pipeline.index(c["document"])
        scores.append(pipeline.score(row["query"], [entries[c["id"]] for c in row["candidates"]]))
    return _summary(rows, scores)


def evaluate_embedder(checkpoint: Path, labelled: Path) -> dict[str, float]:
    """The embedder as first stage: candidates ranked by cosine similarity to the query."""
    embedder = DemoEmbedder(checkpoint)
    rows = load_labelled(labelled)
    unique = {c["id"]: c["document"] for row in rows for c in row["candidates"]}
    ids = list(unique)
    docs = dict(zip(ids, embedder.embed_documents([unique[i] for i in ids])))
    queries = embedder.embed_queries([row["query"] for row in rows])
    scores = [np.array([docs[c["id"]] @ q for c in row["candidates"]]) for row, q in zip(rows, queries)]
    return _summary(rows, scores)


def _summary(rows: list[dict], scores: list[np.ndarray]) -> dict[str, float]:
    """``minireranker eval``'s metrics (calibration.metrics: Hit@1, MRR, nDCG@5/10, relevant = grade > 0)."""
    grades = [np.array([c["relevance"] for c in row["candidates"]]) for row in rows]
    return summarize(scores, grades).to_dict()


def reported_specs(embedder: Path, query_position: int) -> dict[str, RerankSpec]:
    """The approximate specs whose metrics go into the model card (8-layer reranker)."""
    guide = f"embedder:{embedder}"
    return {
        "E3 band[1,2] keep0.5 embedder-guided": RerankSpec(3, (1, 2), 0.5, guide, query_position=query_position),
        "E3 band[1,1] keep0.5 self-guided": RerankSpec(3, (1, 1), 0.5, "self", query_position=query_position),
        "E4 band[2,3] keep0.5 embedder-guided": RerankSpec(4, (2, 3), 0.5, guide, query_position=query_position),
    }


def evaluate_all(out_dir: Path, cfg: TrainConfig) -> dict:
    """Embedder, dense reranker and the reported specs on the held-out and calibration sets."""
    results: dict = {}
    for split in ("heldout", "calib"):
        labelled = out_dir / "eval" / f"{split}.jsonl"
        results[split] = {"embedder (first stage)": evaluate_embedder(out_dir / "embedder", labelled),
                          "reranker dense (exact spec)": evaluate_reranker(out_dir / "reranker", labelled)}
        for name, spec in reported_specs(out_dir / "embedder", cfg.query_position).items():
            results[split][name] = evaluate_reranker(out_dir / "reranker", labelled, spec)
    return results


# ---------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------
def train_demo(out_dir: Path, cfg: TrainConfig = TrainConfig(), progress: bool = True, evaluate: bool = True) -> dict:
    """Regenerate the data files, train the embedder then the reranker, evaluate, and write the cards."""
    import shutil

    torch.set_num_threads(2)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    for sub in ("eval", "corpus"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    digits = data.split_digits(cfg.seed)
    data.write_labelled_set(out_dir / "eval", "heldout", digits, cfg.seed + 1)
    data.write_labelled_set(out_dir / "eval", "calib", digits, cfg.seed + 2)
    data.write_corpus(out_dir / "corpus", digits, cfg.seed + 3)
    tokenizer = demo_tokenizer()
    pool = data.build_pool(digits, "train", cfg.train_composites, cfg.seed)
    preprocess = PreprocessConfig.from_dict(build_preprocessor_config(RERANKER_PRESET))
    report: dict = {"config": asdict(cfg), "seconds": {}, "loss": {}}

    t = time.perf_counter()
    reranker = new_model(RERANKER_PRESET, tokenizer, cfg.seed + 2, answers=True)
    losses = pretrain_vision(reranker, digits, preprocess, cfg, progress, digit_word_ids(tokenizer))
    report["seconds"]["vision"], report["loss"]["vision"] = time.perf_counter() - t, _loss_summary(losses)

    t = time.perf_counter()
    embedder = new_model(EMBEDDER_PRESET, tokenizer, cfg.seed + 1, answers=False)
    embedder.core.vision.load_state_dict(reranker.core.vision.state_dict())  # same layout, shared start
    with torch.no_grad():
        embedder.core.embed.copy_(reranker.core.embed)  # the digit words stage 0 aligned with the visual tokens
    losses = train_embedder(embedder, EmbedderTemplate(tokenizer, preprocess), pool, digits, cfg, progress)
    save_checkpoint(embedder, EMBEDDER_PRESET, tokenizer, out_dir / "embedder")
    report["seconds"]["embedder"], report["loss"]["embedder"] = time.perf_counter() - t, _loss_summary(losses)

    t = time.perf_counter()
    init_from_embedder(reranker, embedder)
    save_checkpoint(reranker, RERANKER_PRESET, tokenizer, out_dir / "reranker")  # the guide checks its preprocessing
    guide = EmbedderGuide(str(out_dir / "embedder"), open_checkpoint(out_dir / "reranker"), None)
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    losses = train_reranker(reranker, template, preprocess, pool, digits, cfg, guide, progress)
    save_checkpoint(reranker, RERANKER_PRESET, tokenizer, out_dir / "reranker")
    report["seconds"]["reranker"], report["loss"]["reranker"] = time.perf_counter() - t, _loss_summary(losses)
    report["seconds"]["total_training"] = time.perf_counter() - start

    if evaluate:
        t = time.perf_counter()
        report["metrics"] = evaluate_all(out_dir, cfg)
        report["seconds"]["evaluation"] = time.perf_counter() - t
    report["machine"] = _machine()
    _write_json(out_dir / "train_report.json", report)
    (out_dir / "reranker" / "README.md").write_text(model_card("reranker", report, cfg), encoding="utf-8")
    (out_dir / "embedder" / "README.md").write_text(model_card("embedder", report, cfg), encoding="utf-8")
    data.write_data_card(out_dir / "DATA_CARD.md", digits, cfg.seed)
    return report


@torch.no_grad()
def init_from_embedder(reranker: TrainableQwen3VL, embedder: TrainableQwen3VL) -> None:
    """The reranker starts from the trained embedder: its vision tower, token embeddings and text layers
    (the embedder's layers fill the reranker's first ones; the deeper layers and the yes/no rows keep their
    fresh initialisation).

    Why: trained from the vision stage alone, the 8-layer reranker stayed below the 4-layer embedder in
    the CPU budget (held-out nDCG@10 0.41 vs 0.57 after 750 steps). The embedder has already aligned
    query words with visual tokens; the reranker then only has to learn the cross-attention judgement.
    Qwen's own Qwen3-VL-Reranker and -Embedding likewise share one pretrained start.
    """
    reranker.core.vision.load_state_dict(embedder.core.vision.state_dict())
    reranker.core.embed.copy_(embedder.core.embed)
    for mine, theirs in zip(reranker.core.layers, embedder.core.layers):
        mine.load_state_dict(theirs.state_dict())


def _loss_summary(losses: list[float]) -> dict[str, float]:
    """Mean loss over the first and the last tenth of the steps (the curve's ends), and the step count."""
    tenth = max(1, len(losses) // 10)
    return {"first": float(np.mean(losses[:tenth])), "last": float(np.mean(losses[-tenth:])), "steps": len(losses)}


def _machine() -> dict[str, str | int]:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _metrics_table(metrics: dict) -> str:
    rows = ["| model / spec | split | Hit@1 | MRR | nDCG@5 | nDCG@10 | % of dense nDCG@10 |",
            "|---|---|---|---|---|---|---|"]
    for split, by_name in metrics.items():
        dense = by_name["reranker dense (exact spec)"]["ndcg@10"]
        for name, m in by_name.items():
            rows.append(f"| {name} | {split} ({m['queries']} queries) | {m['hit@1']:.3f} | {m['mrr']:.3f} | "
                        f"{m['ndcg@5']:.3f} | {m['ndcg@10']:.3f} | {100 * m['ndcg@10'] / dense:.1f} |")
    return "\n".join(rows)


def _shape(preset: TinyPreset) -> str:
    return (f"text: {preset.num_hidden_layers} layers, hidden {preset.hidden_size}, MLP {preset.intermediate_size}, "
            f"{preset.num_attention_heads} query / {preset.num_key_value_heads} KV heads of {preset.head_dim}, "
            f"MRoPE sections {list(preset.mrope_section)}; vision: {preset.vision_depth} blocks, hidden "
            f"{preset.vision_hidden_size}, patch {preset.patch_size}, merge {preset.spatial_merge_size}, DeepStack "
            f"from blocks {list(preset.deepstack_visual_indexes)} into text layers 0..{len(preset.deepstack_visual_indexes) - 1}; "
            f"images {preset.min_pixels}..{preset.max_pixels} pixels")


def model_card(kind: str, report: dict, cfg: TrainConfig) -> str:
    """The README.md of one trained checkpoint, from the run's report (measured numbers only)."""
    preset = RERANKER_PRESET if kind == "reranker" else EMBEDDER_PRESET
    loss, seconds, machine = report["loss"][kind], report["seconds"], report["machine"]
    steps = cfg.reranker_steps if kind == "reranker" else cfg.embedder_steps
    metrics = _metrics_table(report["metrics"]) if "metrics" in report else "(not evaluated in this run)"
    return f"""# miniReranker demo {kind} (Qwen3-VL architecture, trained from scratch)

{_PURPOSE[kind]}

Regenerate both models, the corpus and the labelled sets with
`python -m minireranker.calibration.demo.train calibration/demo/assets --seed {cfg.seed}` (see `DATA_CARD.md` for the data).

- Shape: {_shape(preset)}.
- Weights: float32 safetensors in transformers' names (`Qwen3VLForConditionalGeneration`); tokenizer:
  `tokenizer_factory`'s byte-level BPE trained with the demo's words added (`yes` / `no` single tokens).
- Training: seed {cfg.seed}, {steps} steps, AdamW lr {cfg.lr} (warm-up {cfg.warmup_steps}, cosine to 1/10),
  grad-norm clip 1; loss {loss['first']:.3f} (first tenth of the steps) -> {loss['last']:.3f} (last tenth).
- Wall time: shared vision stage {seconds['vision']:.0f} s, embedder {seconds['embedder']:.0f} s, reranker
  {seconds['reranker']:.0f} s, whole training run (data files included) {seconds['total_training']:.0f} s, on {machine['processor']} with {machine['cpus']} CPUs visible and
  torch {machine['torch']} using {machine['torch_threads']} threads; other jobs shared these cores, so the
  times are upper bounds.

## What was chosen, and why

- Stage 0, shared by both models ({cfg.vision_steps} steps): every merged visual token of a training digit image
  (single digits and composites) learns which digit it shows or that it is blank margin, and photographs are
  classified from the mean of their tokens. The digit classifier's rows are the token embeddings of the
  numerals ("7") and the number words (" seven"), compared by cosine, so a visual token showing a seven
  starts out pointing where the query's "7" and "seven" point; the photo classifier is thrown away. Both
  models start from that tower and those token embeddings, as Qwen3-VL-Embedding and -Reranker start from
  one Qwen3-VL whose visual tokens already say what lies where (it takes about a minute). In development
  runs an image-level stage (single digits only, separate classifier) left both models unable to map a
  query's digit to an image (embedder: 10% query-to-digit accuracy on held-out singles, chance; held-out
  nDCG@10 0.57); with the token-level, word-tied stage the same embedder training reached 0.68 in a
  development run and 0.62 in the shipped run, which differs only in its random draws (one seed and 48
  queries are that noisy).
{_CHOICES[kind].format(cfg=cfg, CAPTION_WEIGHT=CAPTION_WEIGHT, GROUND_WEIGHT=GROUND_WEIGHT,
                       GROUND_LAYER=GROUND_LAYER)}

## Metrics (measured by this run)

Labelled sets of `eval/` (held-out and calibration digit sources, never seen in training), graded 0/1/2.
The reranker's rows are scored by `ReferencePipeline` (dense = the exact spec); the embedder ranks the same
candidates by cosine similarity. The metrics are `minireranker eval`'s (`calibration/metrics.py`): Hit@1 and MRR
count the first relevant candidate (grade > 0); nDCG uses gain 2^g - 1.
Specs with A > 0 use `query_position` {cfg.query_position}; "embedder-guided" means `guide: "embedder:<embedder dir>"`.

{metrics}
"""


_PURPOSE = {
    "reranker": "A point-wise yes/no reranker: score = logit(\"yes\") - logit(\"no\") at the last token of the "
                "vision-first sequence (system, document, query; `runtime/template.py`), read through the final "
                "norm and the two LM-head rows at the exit layer. It is the bundled demo model of `minireranker demo`.",
    "embedder": "A Qwen3-VL-Embedding-style embedder: the final norm's output at the last token, L2-normalised. "
                "Documents follow `export/pruning.py` (`EmbedderGuide.document`, system prompt "
                "\"Represent the user's input.\"); a query is the user turn of the same template. It is the demo's "
                "first-stage retriever and its pruning guide (`guide: \"embedder:<this dir>\"`); its preprocessor "
                "equals the reranker's, so their visual tokens line up.",
}

_CHOICES = {
    "reranker": """- Groups of {cfg.queries_per_step} queries x ~{cfg.candidates_per_query} candidates per step: one or two fully
  relevant, one partial (e.g. the right digits in the wrong order), two hard negatives sharing a digit (for
  a single-digit query: single digits of other labels), random ones, and one photograph or text document,
  as every labelled query has one (random draws almost never pick them, and a reranker that never saw a
  photograph beside a digit query ranked photographs first for it).
- Loss: binary cross-entropy on the score against graded targets (2 -> 1, 1 -> 0.3, 0 -> 0) so the score
  stays a calibrated yes/no logit, plus a listwise softmax loss within each query's candidates for the ranking,
  plus (weight {CAPTION_WEIGHT}) a language-model loss on the query's words for fully relevant dense pairs: the
  document must predict what the query says about it, which teaches the query tokens to read the image.
  In pilot runs during development (200-300 steps, digit queries, no band or pruning) the reranker without it
  sat on a plateau where it only learned which kind of document each kind of query prefers (held-out dense
  nDCG@10 0.37); with it 0.52, and 0.53 with stage 0.
- Grounding (weight {GROUND_WEIGHT}): in dense, unpruned pairs whose image shows a digit the query names
  ("7", " seven"), head 0 of layer {GROUND_LAYER} at that query token is trained to attend to the visual tokens
  showing it (a log-likelihood on the attention mass there; the cells are known from the rendering). A
  cross-encoder must learn to compare the query's digit with the image's; without help, in development
  runs (150 steps, digit queries only) it never did: its score did not depend on which digit was asked
  (spread over ten queries 0.015 logits; numeral-to-image accuracy on held-out singles 2.5%, chance is 10%).
  With this loss the spread was 0.80 and the accuracy 29% after the same 150 steps. The embedder has the
  comparison built in (a dot product), which is why it had been ahead.
- Deep supervision: the same loss at every exit layer from {cfg.first_exit} to the last (weight 0.5, the last 1),
  through the same final norm and yes/no rows, so early exit needs no separate head.
- Band: {cfg.band_fraction:.0%} of the groups run with query rows cut off the document outside layers A..B
  (A in 0..2, B = A or A+1, exactly `oracle`'s mask) and the query at the fixed position {cfg.query_position}
  (what a spec with A > 0 requires); those groups are supervised only at exits >= B.
- Pruning: {cfg.prune_fraction:.0%} of the groups lose 1/4, 1/2 or 3/4 of each image's visual tokens, half at
  random and half by the trained embedder's attention (the deployment guide), keeping positions.
- Start: the trained embedder's vision tower, token embeddings and its 4 text layers (as the reranker's layers
  0-3; layers 4-7 and the yes/no rows fresh), `init_from_embedder`. Trained from stage 0 alone, the full
  mix of queries, bands and pruning left the reranker below the embedder (held-out dense nDCG@10 0.41 vs 0.57
  after 750 steps); the embedder has already aligned the query's words with the visual tokens.
- Depth 8 so that early exit and a narrow band skip most of the model. The embedder has 4 layers and
  {cfg.embedder_steps} steps (the reranker {cfg.reranker_steps}), from the same vision start and the same data;
  its real limit is that it is a bi-encoder: one vector per document cannot say which digit is left of which,
  while the reranker reads the query and the document together.""",
    "embedder": """- InfoNCE with temperature {cfg.temperature}: {cfg.embedder_pairs_per_step} (query, fully relevant document)
  pairs per step, each query's document competing with every other document of the batch, plus one hard
  negative per query (the right digits in the wrong order, a composite that only shares a digit, a single digit
  of another label); documents of grade 2 for another query are masked out of its negatives.
- 4 text layers (the reranker has 8): as a bi-encoder it only needs a summary of each document; it is the
  cheap first stage and the pruning guide, where its last-token attention ranks the visual tokens.""",
}


def main(argv: list[str] | None = None) -> int:
    """`python -m minireranker.calibration.demo.train OUT_DIR [--steps N] [--embedder-steps N] [--vision-steps N]
    [--seed N] [--no-eval]`."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m minireranker.calibration.demo.train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write embedder/, reranker/, corpus/, eval/")
    parser.add_argument("--steps", type=int, default=defaults.reranker_steps, help="reranker training steps")
    parser.add_argument("--embedder-steps", type=int, default=defaults.embedder_steps)
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="shared vision stage")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out / calibration metrics")
    args = parser.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, reranker_steps=args.steps, embedder_steps=args.embedder_steps,
                      vision_steps=args.vision_steps)
    report = train_demo(args.out_dir, cfg, evaluate=not args.no_eval)
    print(json.dumps({k: report[k] for k in ("seconds", "loss")}, indent=2))
    if "metrics" in report:
        print(_metrics_table(report["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
