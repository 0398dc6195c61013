"""Train the bundled demo reranker and embedder on real images, on a CPU, reproducibly.

``python -m minireranker.calibration.demo.train OUT_DIR [--steps N] [--embedder-steps N] [--vision-steps N] [--seed N]
[--order vision-first|query-first] [--no-eval] [--evaluate-only]``
writes::

    OUT_DIR/embedder/   Qwen3-VL-Embedding-style checkpoint (HF layout) + README.md card
    OUT_DIR/reranker/   Qwen3-VL point-wise reranker checkpoint (HF layout) + README.md card
                        (with ``--order query-first``: OUT_DIR/reranker-query-first/, trained in Qwen3-VL-Reranker's
                        order, dense, scored at the last layer: the stock checkpoint ``minireranker adapt`` is for)
    OUT_DIR/corpus/     the demo corpus (corpus.jsonl, queries.txt, images/)
    OUT_DIR/eval/       heldout.jsonl, calib.jsonl, images/  (the labelled format of demo_data)
    OUT_DIR/DATA_CARD.md, OUT_DIR/train_report.json (times, losses, metrics)

Both models are the Qwen3-VL architecture (patch 16, merge 2, DeepStack) at a few MB, with a tokenizer
trained by ``tokenizer_factory`` on the demo's words. Stage 0 teaches one vision tower what each visual
token shows (which digit, or blank; which photograph); both models start from it. The embedder is trained
next (contrastive, in-batch negatives); its attention then guides the visual-token pruning the reranker
sees in training.

One module per stage: ``vision_stage`` (stage 0), ``embedder_stage``, ``reranker_stage``; beside them
``train_config`` (presets, :class:`TrainConfig`, the shared schedule), ``checkpoints`` (tokenizer, fresh
models, Hugging Face layout), ``evaluation`` (the labelled sets) and ``cards`` (the model cards); this module
runs them in order. The training forward (:class:`~.trainable.TrainableQwen3VL`, in ``trainable.py``)
batches whole sequences (system, document, query) with one boolean mask per layer, so the miniReranker
approximations are trained exactly as they run:

* band: query rows cannot see document columns outside layers ``A..B`` (``oracle``'s mask) and the query
  starts at the fixed ``query_position``;
* pruning: dropped visual tokens become invisible keys (their positions are kept by construction), which
  is the same arithmetic as removing them;
* early exit: the final norm and the yes/no rows are applied to every layer from ``first_exit``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ...runtime.preprocess import PreprocessConfig
from ...runtime.spec import RerankSpec
from ...runtime.template import VisionFirstTemplate
from ...export.checkpoint import open_checkpoint
from ...export.pruning import EmbedderGuide
from ...export.tiny import build_preprocessor_config
from . import data_card, data_files, images, pools
from .cards import metrics_table, model_card
from .checkpoints import demo_tokenizer, new_model, save_checkpoint, to_bfloat16, write_json
from .embedder_stage import EmbedderTemplate, train_embedder
from .evaluation import evaluate_all
from .reranker_stage import init_from_embedder, train_reranker
from .train_config import EMBEDDER_PRESET, RERANKER_PRESET, TrainConfig
from .vision_stage import digit_word_ids, pretrain_vision


def train_demo(out_dir: Path, cfg: TrainConfig = TrainConfig(), progress: bool = True, evaluate: bool = True) -> dict:
    """Regenerate the data files, train the embedder then the reranker, evaluate, and write the cards."""
    import shutil

    torch.set_num_threads(2)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    for sub in ("eval", "corpus"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    digits = images.split_digits(cfg.seed)
    data_files.write_labelled_set(out_dir / "eval", "heldout", digits, cfg.seed + 1)
    data_files.write_labelled_set(out_dir / "eval", "calib", digits, cfg.seed + 2)
    data_files.write_corpus(out_dir / "corpus", digits, cfg.seed + 3)
    tokenizer = demo_tokenizer()
    pool = pools.build_pool(digits, "train", cfg.train_composites, cfg.seed)
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
    name = reranker_dir(cfg)
    save_checkpoint(reranker, RERANKER_PRESET, tokenizer, out_dir / name)  # the guide checks its preprocessing
    guide = EmbedderGuide(str(out_dir / "embedder"), open_checkpoint(out_dir / name), None)
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    losses = train_reranker(reranker, template, preprocess, pool, digits, cfg, guide, progress)
    save_checkpoint(reranker, RERANKER_PRESET, tokenizer, out_dir / name)
    if cfg.order == "query-first":
        to_bfloat16(out_dir / name)  # shipped as Qwen3-VL-Reranker ships (and small): evaluated as shipped
    report["seconds"]["reranker"], report["loss"]["reranker"] = time.perf_counter() - t, _loss_summary(losses)
    report["seconds"]["total_training"] = time.perf_counter() - start

    report["machine"] = _machine()
    write_json(out_dir / report_name(cfg), report)
    if evaluate:
        report = evaluate_trained(out_dir, cfg)
    else:
        _write_cards(out_dir, cfg, report)
    data_card.write_data_card(out_dir / "DATA_CARD.md", digits, cfg.seed)
    return report


def reranker_dir(cfg: TrainConfig) -> str:
    """The reranker's folder: ``reranker`` (vision-first) or ``reranker-query-first``."""
    return "reranker" if cfg.order == "vision-first" else "reranker-query-first"


def report_name(cfg: TrainConfig) -> str:
    return "train_report.json" if cfg.order == "vision-first" else "train_report-query-first.json"


def evaluate_trained(out_dir: Path, cfg: TrainConfig) -> dict:
    """Evaluate the models of a finished run on the current labelled sets and rewrite the report and the cards
    (``--evaluate-only``: after the labelled sets changed, without training again)."""
    report = json.loads((out_dir / report_name(cfg)).read_text(encoding="utf-8"))
    t = time.perf_counter()
    report["metrics"] = evaluate_all(out_dir, cfg, reranker=reranker_dir(cfg))
    report["seconds"]["evaluation"] = time.perf_counter() - t
    write_json(out_dir / report_name(cfg), report)
    _write_cards(out_dir, cfg, report)
    return report


def _write_cards(out_dir: Path, cfg: TrainConfig, report: dict) -> None:
    name = reranker_dir(cfg)
    (out_dir / name / "README.md").write_text(model_card(name, report, cfg), encoding="utf-8")
    if cfg.order == "vision-first" or not (out_dir / "embedder" / "README.md").exists():
        # a query-first run writes its own embedder's card; its evaluation leaves the shipped embedder's alone
        (out_dir / "embedder" / "README.md").write_text(model_card("embedder", report, cfg), encoding="utf-8")


def _loss_summary(losses: list[float]) -> dict[str, float]:
    """Mean loss over the first and the last tenth of the steps (the curve's ends), and the step count."""
    tenth = max(1, len(losses) // 10)
    return {"first": float(np.mean(losses[:tenth])), "last": float(np.mean(losses[-tenth:])), "steps": len(losses)}


def _machine() -> dict[str, str | int]:
    """The keys the model cards record, from the one machine_info (plus torch's own thread count)."""
    from ...runtime.profiling.telemetry import machine_info

    info = machine_info()
    return {"platform": info["platform"], "processor": info["cpu"], "cpus": info["cores"] or 0,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    """`python -m minireranker.calibration.demo.train OUT_DIR [--steps N] [--embedder-steps N] [--vision-steps N]
    [--seed N] [--order ORDER] [--no-eval] [--evaluate-only]`."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m minireranker.calibration.demo.train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write embedder/, reranker/, corpus/, eval/")
    parser.add_argument("--steps", type=int, default=defaults.reranker_steps, help="reranker training steps")
    parser.add_argument("--embedder-steps", type=int, default=defaults.embedder_steps)
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="shared vision stage")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--order", choices=["vision-first", "query-first"], default=defaults.order,
                        help="the reranker's training order: vision-first (reranker/, the shipped demo model) or "
                             "query-first (reranker-query-first/: Qwen3-VL-Reranker's order, dense, last layer)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out / calibration metrics")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="train nothing: evaluate OUT_DIR's trained models on its labelled sets and rewrite "
                             "the report and the cards (after the labelled sets changed)")
    args = parser.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, reranker_steps=args.steps, embedder_steps=args.embedder_steps,
                      vision_steps=args.vision_steps, order=args.order)
    if args.evaluate_only:
        saved = json.loads((args.out_dir / report_name(cfg)).read_text(encoding="utf-8"))["config"]
        saved["query_kinds"] = tuple(tuple(k) for k in saved["query_kinds"])
        saved.setdefault("order", cfg.order)
        cfg = TrainConfig(**saved)  # the run's own settings, for its cards
        report = evaluate_trained(args.out_dir, cfg)
        print(metrics_table(report["metrics"]))
        return 0
    report = train_demo(args.out_dir, cfg, evaluate=not args.no_eval)
    print(json.dumps({k: report[k] for k in ("seconds", "loss")}, indent=2))
    if "metrics" in report:
        print(metrics_table(report["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
