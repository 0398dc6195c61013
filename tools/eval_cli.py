"""``minireranker eval``: flags -> :class:`~minireranker.calibration.evaluate.EvalConfig` -> ``run_eval``."""

from __future__ import annotations

import argparse

from .args import SPEC_FORMS, needs_export

DESCRIPTION = """\
Run a labelled set (JSONL: one query per line with its candidates and their relevance grades, images by
path; see docs/eval.md) through: the first stage alone (the embedder's cosine order, with --embedder);
dense (the checkpoint's plain model in the order miniReranker runs it, the document before the query, every
pair from scratch through every layer); 'dense, trained format' (the same in the order the checkpoint was
trained in, when that is another: query-first for Qwen3-VL-Reranker; a checkpoint trained as it runs has
the dense row only); exact (miniReranker's exact spec, document K/V computed once and cached; the ONNX
Runtime engines when --bundle holds an exact bundle); and each --spec (the torch reference with that
spec). Reports Hit@1, MRR, nDCG@5 and nDCG@10 per system (relevant = grade > 0, gains 2^grade - 1;
queries without a relevant candidate are excluded and counted), each system's fraction of the --reference
dense system (metric / its metric) and paired nDCG@10 difference from it, and max |exact - dense| as a
consistency check (always the vision-first dense). Writes eval.json, eval.md and eval.png to --out and
prints the table. Needs torch (the 'export' extra)."""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..calibration.evaluate import EvalConfig

    d = EvalConfig("", "")
    p = subparsers.add_parser("eval", help="measure ranking quality of dense, exact and specs on a labelled set",
                              description=DESCRIPTION)
    p.add_argument("checkpoint", help="reranker checkpoint directory (Qwen3-VL, Qwen2-VL or Qwen2.5-VL; Hugging Face layout)")
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="the labelled set (docs/eval.md)")
    p.add_argument("--embedder", default=None, metavar="DIR",
                   help="a Qwen3-VL-Embedding-style checkpoint: adds the 'first stage' system")
    p.add_argument("--spec", action="append", dest="specs", default=None, metavar="FILE_OR_JSON",
                   help=f"a spec to evaluate (repeatable): {SPEC_FORMS}; template strings it leaves out come from "
                   "the checkpoint; guide 'embedder:DIR' works")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="a bundle built from this checkpoint: if its spec is exact it computes 'exact' with ONNX "
                   "Runtime, otherwise it is one more system ('bundle')")
    p.add_argument("--out", default=d.out, help=f"folder for eval.json, eval.md and eval.png (default {d.out})")
    add_reference_flag(p, d, "fractions and differences")
    add_run_flags(p, d)
    needs_export(p)
    p.set_defaults(func=cmd_eval)
    return p


def add_reference_flag(p: argparse.ArgumentParser, d, what: str) -> None:
    """--reference: the dense system that ``what`` (eval's fractions, calibrate's fidelity) is measured against."""
    from ..calibration.evaluate import REFERENCES

    p.add_argument("--reference", choices=REFERENCES, default=d.reference,
                   help=f"the dense system {what} are measured against: 'trained' is dense scoring in the order "
                   "the checkpoint was trained in (its spec's \"trained\": query-first, Qwen3-VL-Reranker's order, "
                   "unless its minireranker.json says it was trained in the order it runs, and then both choices "
                   "are the same); 'vision-first' is dense scoring in the order miniReranker runs, the document "
                   f"before the query (default {d.reference})")


def add_run_flags(p: argparse.ArgumentParser, d) -> None:
    """--batch-size, --threads, --quiet: how eval and calibrate run the torch reference (``d``: defaults)."""
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"candidates per band batch (default {d.batch_size})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"torch intra-op threads (default {d.threads}: a small model runs many small matmuls, and "
                   "idle-spinning threads cost more than they give on busy cores; raise it for large models)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    from ..calibration.evaluate import EvalConfig, run_eval

    run_eval(EvalConfig(args.checkpoint, args.data, embedder=args.embedder, specs=tuple(args.specs or ()),
                        bundle=args.bundle, out=args.out, batch_size=args.batch_size, threads=args.threads,
                        reference=args.reference, progress=not args.quiet))
    return 0
