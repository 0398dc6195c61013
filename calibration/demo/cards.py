"""The README.md card of each trained demo checkpoint, written from the run's report (measured numbers only)."""

from __future__ import annotations

import json
from pathlib import Path

from ...export.tiny import TinyPreset
from .reranker_stage import CAPTION_WEIGHT, GROUND_LAYER, GROUND_WEIGHT
from .evaluation import DENSE_ROW, TRAINED_ROW
from .train_config import EMBEDDER_PRESET, RERANKER_PRESET, TrainConfig


SHIPPED_REPORT = Path(__file__).resolve().parent / "assets" / "train_report.json"  # the shipped models' run


def _shipped_embedder_loss() -> str:
    """The shipped embedder's last-tenth loss, read from the shipped run's report."""
    report = json.loads(SHIPPED_REPORT.read_text(encoding="utf-8"))
    return f"{report['loss']['embedder']['last']:.3f}"


def _reference(by_name: dict) -> str:
    """The dense system the shares are taken against: the trained order's when it was measured."""
    return TRAINED_ROW if TRAINED_ROW in by_name else DENSE_ROW


def metrics_table(metrics: dict) -> str:
    """A markdown table of ``metrics[split][model or spec]``, each row also as a share of the reference dense
    system's nDCG@10 (dense in the trained order for a query-first model, else dense); then nDCG@10 per query
    kind on each split whose rows carry kinds."""
    rows = ["| model / spec | split | Hit@1 | MRR | nDCG@5 | nDCG@10 | % of reference nDCG@10 |",
            "|---|---|---|---|---|---|---|"]
    for split, by_name in metrics.items():
        dense = by_name[_reference(by_name)]["ndcg@10"]
        for name, m in by_name.items():
            rows.append(f"| {name} | {split} ({m['queries']} queries) | {m['hit@1']:.3f} | {m['mrr']:.3f} | "
                        f"{m['ndcg@5']:.3f} | {m['ndcg@10']:.3f} | {100 * m['ndcg@10'] / dense:.1f} |")
    rows.append(f"\nThe reference: {', '.join(f'{split}: {_reference(b)}' for split, b in metrics.items())}.")
    for split, by_name in metrics.items():
        kinds = next((list(m["by_kind"]) for m in by_name.values() if m.get("by_kind")), None)
        if not kinds:
            continue
        first = next(m for m in by_name.values() if m.get("by_kind"))["by_kind"]
        rows += ["", f"nDCG@10 per query kind, {split} split:", "",
                 "| model / spec | " + " | ".join(f"{k} ({first[k]['queries']} q)" for k in kinds) + " |",
                 "|---|" + "---:|" * len(kinds)]
        for name, m in by_name.items():
            rows.append(f"| {name} | " + " | ".join(f"{m['by_kind'][k]['ndcg@10']:.3f}" for k in kinds) + " |")
    return "\n".join(rows)


def _regenerate(kind: str, cfg: TrainConfig) -> str:
    if kind == "reranker-query-first":
        return (f"Regenerate it with `python -m minireranker.calibration.demo.train OUT --seed {cfg.seed} --order "
                "query-first`, then copy `OUT/reranker-query-first/` and `OUT/train_report-query-first.json` into "
                "`calibration/demo/assets/` (the run also trains a vision stage and an embedder to start from and "
                "writes the data files; only the reranker is kept). See `DATA_CARD.md` for the data.")
    return ("Regenerate both models, the corpus and the labelled sets with\n`python -m minireranker.calibration.demo."
            f"train calibration/demo/assets --seed {cfg.seed}` (see `DATA_CARD.md` for the data).")


def _shape(preset: TinyPreset) -> str:
    return (f"text: {preset.num_hidden_layers} layers, hidden {preset.hidden_size}, MLP {preset.intermediate_size}, "
            f"{preset.num_attention_heads} query / {preset.num_key_value_heads} KV heads of {preset.head_dim}, "
            f"MRoPE sections {list(preset.mrope_section)}; vision: {preset.vision_depth} blocks, hidden "
            f"{preset.vision_hidden_size}, patch {preset.patch_size}, merge {preset.spatial_merge_size}, DeepStack "
            f"from blocks {list(preset.deepstack_visual_indexes)} into text layers 0..{len(preset.deepstack_visual_indexes) - 1}; "
            f"images {preset.min_pixels}..{preset.max_pixels} pixels")


def model_card(kind: str, report: dict, cfg: TrainConfig) -> str:
    """The README.md of one trained checkpoint, from the run's report (measured numbers only)."""
    preset = EMBEDDER_PRESET if kind == "embedder" else RERANKER_PRESET
    stage = "embedder" if kind == "embedder" else "reranker"
    loss, seconds, machine = report["loss"][stage], report["seconds"], report["machine"]
    steps = cfg.reranker_steps if stage == "reranker" else cfg.embedder_steps
    metrics = metrics_table(report["metrics"]) if "metrics" in report else "(not evaluated in this run)"
    return f"""# miniReranker demo {kind} (Qwen3-VL architecture, trained from scratch)

{_PURPOSE[kind]}

{_regenerate(kind, cfg)}

- Shape: {_shape(preset)}.
- Weights: {_WEIGHTS.get(kind, "float32")} safetensors in transformers' names (`Qwen3VLForConditionalGeneration`); tokenizer:
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
                       embedder_last=f"{report['loss']['embedder']['last']:.3f}",
                       shipped_last=_shipped_embedder_loss() if kind == "reranker-query-first" else "",
                       GROUND_LAYER=GROUND_LAYER)}

## Metrics (measured by this run)

Labelled sets of `eval/` (held-out and calibration digit sources, never seen in training; the photographs
are the same 17 in every split, so photo queries measure recall of photographs seen in training), graded 0/1/2.
The reranker's rows are scored by `ReferencePipeline` (dense = the exact spec, vision-first; "trained order" =
the whole query-first sequence, `trained_dense_scores`); the embedder ranks the same
candidates by cosine similarity. The metrics are `minireranker eval`'s (`calibration/metrics.py`): Hit@1 and MRR
count the first relevant candidate (grade > 0); nDCG uses gain 2^g - 1.
Specs with A > 0 use `query_position` {cfg.query_position}; "embedder-guided" means `guide: "embedder:<embedder dir>"`.

{metrics}
"""


_WEIGHTS = {"reranker-query-first": "bfloat16 (trained in float32, rounded once by `to_bfloat16` as Qwen3-VL-Reranker "
                                           "ships its weights, and so that the demo assets stay small; every metric here "
                                           "is of the rounded weights)"}

_PURPOSE = {
    "reranker": "A point-wise yes/no reranker: score = logit(\"yes\") - logit(\"no\") at the last token of the "
                "vision-first sequence (system, document, query; `runtime/template.py`), read through the final "
                "norm and the two LM-head rows at the exit layer. It is the bundled demo model of `minireranker demo`.",
    "reranker-query-first": "The same point-wise yes/no reranker trained the way Qwen3-VL-Reranker is: in its own "
                            "query-first order (system, instruction, query, then the document; "
                            "`VisionFirstTemplate.query_first`), dense pairs, scored at the last layer only. It "
                            "stands for the stock checkpoint a user brings: run vision-first, with an early exit "
                            "and a band, it meets layouts it never saw, which `minireranker adapt` pays back "
                            "(docs/adapt.md has the measured table). Like a stock Qwen3-VL-Reranker it has no "
                            "minireranker.json and is read as trained query-first; `calibration.md` beside it is "
                            "`minireranker calibrate --target 0.98` on the calibration split, which finds no spec "
                            "that close to its query-first dense model.",
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
    "reranker-query-first": """- The same data as the vision-first reranker: the same sampler and seed draw groups of
  {cfg.queries_per_step} queries x ~{cfg.candidates_per_query} candidates from the training split, with the same
  kinds of relevant, partial, hard and random candidates; the same steps, learning rate and schedule; the same
  start procedure (stage 0, then the embedder, then `init_from_embedder`), run again by this training run. With
  two torch threads float sums are not reproducible bit for bit, and over the embedder's steps the two runs
  diverged (embedder loss at the end: {embedder_last}, the shipped embedder's {shipped_last}): the two rerankers start from
  equally made but not identical weights.
- Every pair is one dense sequence in the query-first order; no band, no pruning, no fixed query position.
- Loss: the same pointwise BCE against graded targets and listwise softmax, at the last layer only (no deep
  supervision): Qwen3-VL-Reranker is a fine-tuned language model read at its last token.
- Off, because they need the document before the query: the caption loss (the document predicting the query's
  words) and the grounding loss (a query digit attending to the visual tokens that show it).""",
    "embedder": """- InfoNCE with temperature {cfg.temperature}: {cfg.embedder_pairs_per_step} (query, fully relevant document)
  pairs per step, each query's document competing with every other document of the batch, plus one hard
  negative per query (the right digits in the wrong order, a composite that only shares a digit, a single digit
  of another label); documents of grade 2 for another query are masked out of its negatives.
- 4 text layers (the reranker has 8): as a bi-encoder it only needs a summary of each document; it is the
  cheap first stage and the pruning guide, where its last-token attention ranks the visual tokens.""",
}
