"""``minireranker adapt``: flags -> :class:`~minireranker.calibration.adapt.AdaptConfig` -> ``run_adapt``."""

from __future__ import annotations

import argparse

from .args import needs_export

DESCRIPTION = """\
Self-distil a checkpoint into its spec's vision-first format with LoRA (calibration/adapt.py,
docs/adapt.md). Teacher: the checkpoint, dense, in the order it was trained in (query-first for
Qwen3-VL-Reranker); it labels every pair of --data (the JSONL of docs/eval.md; grades optional). Student:
the same weights plus LoRA adapters on layers 0..E, run as the spec runs (band, early exit, pruned
tokens). Writes a merged checkpoint to -o (every command reads it), its minireranker.json, a card
(README.md) with the before/after table, adapt.json, and adapt-state.pt every --save-every steps:
rerunning the same command resumes from it. Needs torch and peft (the 'export' extra)."""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``adapt`` subcommand to ``subparsers``."""
    from ..calibration.adapt import AdaptConfig

    d = AdaptConfig("", "", "")
    p = subparsers.add_parser("adapt", help="LoRA self-distillation of a checkpoint into its spec's format",
                              description=DESCRIPTION)
    p.add_argument("checkpoint", help="Qwen3-VL reranker checkpoint directory (Hugging Face layout)")
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="pairs to adapt on (docs/eval.md format)")
    p.add_argument("--spec", default=None, metavar="FILE_OR_JSON",
                   help="the spec to adapt to (default: the checkpoint's minireranker.json)")
    p.add_argument("-o", "--output", required=True, help="folder for the adapted checkpoint")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"training steps (default {d.steps}, 6 passes over 130 queries; aim for 6-8 passes over "
                   "the data, about 4 x its queries at 2 queries per step (below 5 passes a note suggests more); "
                   "0 with --exit-head fits the head alone)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate of the LoRA weights (default {d.lr})")
    p.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"LoRA alpha (default {d.alpha:g})")
    p.add_argument("--queries-per-step", type=int, default=d.queries_per_step,
                   help=f"queries (each with all its candidates) per step (default {d.queries_per_step})")
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help=f"write the resumable state every N steps (default {d.save_every})")
    p.add_argument("--label-weight", type=float, default=d.label_weight,
                   help=f"weight of the listwise loss on the file's grades, when it has them (default {d.label_weight})")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout,
                   help="dropout on the LoRA branch's input while training, a regulariser for small data "
                   f"(default {d.lora_dropout:g}: none)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--exit-head", action="store_true",
                   help="also fit a linear exit head on layer E to the teacher's scores (minireranker.exit_head.*), "
                   "used instead of the yes/no rows")
    p.add_argument("--no-resume", action="store_true", help="start over even if -o holds a saved state")
    p.add_argument("--threads", type=int, default=d.threads, help=f"torch intra-op threads (default {d.threads})")
    p.add_argument("--device", default=d.device,
                   help="where the student trains: auto (CUDA where torch has it, else the CPU), cpu, cuda or "
                        f"cuda:N (default {d.device}; the CUDA path is unverified on hardware, docs/adapt.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    needs_export(p)
    p.set_defaults(func=cmd_adapt)
    return p


def cmd_adapt(args: argparse.Namespace) -> int:
    from ..calibration.adapt import AdaptConfig, run_adapt

    run_adapt(AdaptConfig(args.checkpoint, args.data, args.output, spec=args.spec, steps=args.steps, lr=args.lr,
                          rank=args.rank, alpha=args.alpha, queries_per_step=args.queries_per_step,
                          save_every=args.save_every, label_weight=args.label_weight,
                          lora_dropout=args.lora_dropout, seed=args.seed, exit_head=args.exit_head,
                          resume=not args.no_resume, threads=args.threads, progress=not args.quiet,
                          device=args.device))
    return 0
