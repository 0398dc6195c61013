"""FLOPs of one ``minireranker adapt`` training step, counted by torch, and the 2B estimate made from them.

    python benchmarks/adapt_flops.py [--checkpoint DIR] [--data FILE] [--queries 2] [--out FILE.json]

Counts (``torch.utils.flop_counter.FlopCounterMode``: matrix products and attention) the student's forward
and backward on a few queries of the adaptation data under adapt_sweep.py's default spec, and the teacher's dense
forward in its trained order on the same pairs. Reports FLOPs per training pair and per token, and their
ratio to ``2 x (parameters the token passes through)``, the rule the 2B estimate in docs/adapt.md uses;
the measured ratio is what makes the estimate a measured one rather than a formula alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from minireranker.calibration import adapt
from minireranker.calibration.data import load_labelled_set
from minireranker.calibration.scoring import LoadedReranker, torch_threads, trained_dense_scores
from minireranker.runtime.spec import RerankSpec

from adapt_sweep import demo_spec_layers  # benchmarks/ is this script's directory

ASSETS = Path(__file__).resolve().parents[1] / "calibration" / "demo" / "assets"


def layer_parameters(loaded: LoadedReranker) -> int:
    """Parameters of one decoder layer's projections (what a token's matrix products read)."""
    t = loaded.ckpt.config.text
    attn = t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim + t.num_heads * t.head_dim * t.hidden_size
    return attn + 3 * t.hidden_size * t.intermediate_size


def main() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ASSETS / "reranker-query-first"))
    parser.add_argument("--data", default="bench-out/adapt/adapt-data/train.jsonl")
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with torch_threads(1):
        loaded = LoadedReranker(args.checkpoint)
        spec = loaded.with_template(RerankSpec.from_dict(json.loads(demo_spec_layers())), set())
        spec = spec.resolve(loaded.num_layers)  # adapt_sweep.py's default spec
        data = load_labelled_set(args.data, require_labels=False)
        data = dataclasses.replace(data, queries=data.queries[: args.queries])
        base = loaded.pipeline(spec)
        config = adapt.AdaptConfig(args.checkpoint, args.data, "/dev/null", progress=False)
        model, samples = adapt._student(loaded, spec, base, data, config)
        for p in adapt._lora_parameters(model).values():
            p.requires_grad_(True)
        targets = [np.zeros(len(row)) for row in samples]
        with FlopCounterMode(display=False) as forward:
            with torch.no_grad():
                adapt._loss(model, samples, targets, [None] * len(samples), spec, 0.0)
        with FlopCounterMode(display=False) as step:
            adapt._loss(model, samples, targets, [None] * len(samples), spec, 0.0).backward()
        teacher = loaded.pipeline(loaded.exact_spec())
        with FlopCounterMode(display=False) as dense:
            for q in data.queries:
                trained_dense_scores(teacher, q.query, q.candidates)
    pairs = sum(len(row) for row in samples)
    tokens = sum(len(s.ids) for row in samples for s in row)
    per_layer = layer_parameters(loaded)
    student_layers = spec.exit_layer + 1
    out = {
        "checkpoint": args.checkpoint, "spec": spec.to_dict(), "pairs": pairs, "tokens": tokens,
        "layer_parameters": per_layer, "student_layers": student_layers, "teacher_layers": loaded.num_layers,
        "student_forward_flops": forward.get_total_flops(), "student_step_flops": step.get_total_flops(),
        "teacher_forward_flops": dense.get_total_flops(),
    }
    out["step_over_forward"] = out["student_step_flops"] / out["student_forward_flops"]
    out["student_forward_over_rule"] = out["student_forward_flops"] / (2 * per_layer * student_layers * tokens)
    out["per_pair"] = {"student_step": out["student_step_flops"] / pairs, "teacher": out["teacher_forward_flops"] / pairs}
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
