"""The build's checks: each exported graph against the torch fp32 reference, and the runtime end to end.

Each graph runs in ONNX Runtime (an :mod:`minireranker.engines` runner on the CPU) on *fresh* inputs (other
image sizes, other lengths, another batch size than the export trace) and is compared with the reference's
outputs on the same inputs, recorded while the reference was loaded (:func:`reference_outputs`,
:func:`check_outputs`). The end-to-end check runs the runtime (ONNX Runtime, numpy glue, K/V store) on sample
documents and queries, closes it, and only then opens the reference (:func:`validate_end_to_end`), so the
two never hold their weights at once (docs/memory.md).

Tolerances (max |difference|, scaled by max(1, max |reference|) for hidden states and K/V):

* fp32: 1e-4 on every output, scores included;
* fp16: 3e-2 on hidden states and K/V, 5e-2 on scores. Justification: fp16 keeps 11 significant bits
  (relative step 2^-11 = 4.9e-4); hidden states of O(1-10) accumulate rounding over a few layers and
  K/V are rounded when stored, and the score is a difference of two logits of O(1-10). The observed
  fp16 error on the tiny presets is recorded in ``bundle.json`` under ``validation``.
* fp32 with int8 weights (``--weights int8``: the band and tail only, :mod:`.quantize`; the other
  graphs keep the fp32 tolerance): 0.15 on the band's hidden states (scaled) and on the tail's scores,
  0.5 on scores end to end. Justification: the activations are rounded per call to uint8 over the whole
  tensor's range (step 1/255 of it) and the weights to 7 bits per column (step 1/63 of its largest
  value), so each projection is off by about 1% of its range, and the band's error is carried through
  the tail to the score (a logit difference of O(1-10)). Measured on 2026-12-01 (ONNX Runtime 1.32, AVX2
  CPU), worst over the samples, across the tiny presets (exact and approximate specs) and the demo
  reranker: band 0.018-0.077, tail 0.014-0.071, end to end 0.039-0.222 (the worst: tiny, exact spec);
  each tolerance is about twice the worst. They bound arithmetic, not ranking: ``benchmarks/int8_report.py``
  measures the rank agreement with a float bundle.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..engines import BaseRunner, OnnxRuntimeRunner
from ..runtime.documents import Document
from ..runtime.graph_io import GRAPH_IO
from .build_config import BuildError
from .plugin_attention import PluginCpuRunner
from .reference import ReferencePipeline

TOLERANCES = {"fp32": {"hidden": 1e-4, "score": 1e-4}, "fp16": {"hidden": 3e-2, "score": 5e-2},
              "fp32-int8": {"hidden": 0.15, "score": 0.15, "end_to_end": 0.5}}  # band and tail only; see above


def tolerance_key(precision: str, weights: str = "float") -> str:
    """The :data:`TOLERANCES` entry of a graph (or of the end-to-end check) with these weights."""
    return f"{precision}-int8" if weights == "int8" else precision


def sample_documents(seed: int) -> list[Document]:
    """Drawn images of seed-dependent odd sizes, an image with text, and a text."""
    rng = np.random.default_rng(seed)
    sizes = [(96, 64), (70, 45)] if seed == 0 else [(128, 100), (45, 90)]
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return [Document(image=imgs[0]), Document(image=imgs[1], text="a caption of %d words" % seed),
            Document(text="a plain text document" + " and more" * seed)]


def io_for(kind: str, args: tuple) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """Input names, output names and dynamic axes of one call, from the graph I/O table
    (:mod:`minireranker.runtime.graph_io`); optional trailing inputs the call leaves out (None) are dropped."""
    io = GRAPH_IO[kind]
    inputs = io.input_names[: len([a for a in args if a is not None])]
    names = set(inputs) | set(io.output_names)
    return inputs, io.output_names, {k: v for k, v in io.dynamic_axes().items() if k in names}


def cpu_runner(kind: str, path: Path, plugin: bool = False) -> BaseRunner:
    """The graph in ONNX Runtime on the CPU: validation compares numbers, so no GPU provider's rounding.
    ``plugin``: the graph may hold BandAttention nodes, run by onnxruntime-extensions (export/plugin_attention.py)."""
    if plugin:
        return PluginCpuRunner(kind, path)
    # no pre-packed copy of the weights: a check runs a few calls, and a 2B graph's copy is gigabytes
    return OnnxRuntimeRunner(kind, path, ["CPUExecutionProvider"], prepack=False)


@torch.no_grad()
def reference_outputs(graph: nn.Module, samples: list[tuple]) -> list[list[np.ndarray]]:
    """The torch fp32 graph's outputs on each sample, as float32 arrays (kept while the reference is freed)."""
    outputs = []
    for args in samples:
        got = graph(*(a for a in args if a is not None))
        outputs.append([t.float().numpy() for t in (got if isinstance(got, tuple) else (got,))])
    return outputs


def check_outputs(kind: str, samples: list[tuple], expected: list[list[np.ndarray]], runner: BaseRunner,
                  precision: str, weights: str = "float") -> dict:
    """The graph in ``runner`` on ``samples`` vs the reference's ``expected`` outputs (:func:`reference_outputs`);
    raises BuildError past the tolerance. Returns bundle.json's validation record of the graph."""
    np_dtype = np.float16 if precision == "fp16" else np.float32
    worst: dict[str, float] = {}
    for args, refs in zip(samples, expected):
        args = tuple(a for a in args if a is not None)
        names, outputs, _ = io_for(kind, args)
        feed = {n: (a.numpy().astype(np_dtype) if a.is_floating_point() else a.numpy())
                for n, a in zip(names, args)}
        result = runner.infer(feed)  # checks the feed; leaves out inputs the exporter dropped
        for name, ref in zip(outputs, refs):
            mine = result[name]
            if mine.shape != ref.shape:
                raise BuildError(f"graph '{kind}' output '{name}': shape {mine.shape} != reference {ref.shape}")
            scale = 1.0 if kind == "tail" else max(1.0, float(np.abs(ref).max(initial=0.0)))
            worst[name] = max(worst.get(name, 0.0), float(np.abs(mine.astype(np.float32) - ref).max(initial=0.0)) / scale)
    key = tolerance_key(precision, weights)
    tol = TOLERANCES[key]["score" if kind == "tail" else "hidden"]
    for name, diff in worst.items():
        if not np.isfinite(diff) or diff > tol:
            raise BuildError(f"graph '{kind}' output '{name}' differs from the torch reference by {diff:.3g} "
                             f"(tolerance {tol:g}, {key}); the export is wrong, not the input")
    return {name: {"max_abs_diff": diff, "tolerance": tol, "scaled": kind != "tail"} for name, diff in worst.items()}


def validate_end_to_end(open_reference: Callable[[], ReferencePipeline], bundle_dir: Path, precision: str,
                        weights: str = "float") -> dict:
    """Scores through the runtime (ONNX Runtime, numpy glue, K/V store) vs the torch reference, which
    ``open_reference`` opens once the runtime is closed, so their weights are never in memory together."""
    import tempfile

    from ..runtime.reranker import Reranker

    docs = sample_documents(1) + sample_documents(0)
    queries = ["a longer query, with seven words", "q"]
    with tempfile.TemporaryDirectory() as cache, Reranker(bundle_dir, cache) as runtime:
        side = runtime_side(runtime, docs, queries)
    del runtime
    gc.collect()  # the runtime's sessions and weight mapping go before the reference opens
    report = compare_sides(open_reference(), docs, queries, side)
    key = tolerance_key(precision, weights)
    tol = TOLERANCES[key].get("end_to_end", TOLERANCES[key]["score"])
    if not report["max_abs_diff"] <= tol:
        raise BuildError(f"end-to-end check: runtime scores differ from the torch reference by "
                         f"{report['max_abs_diff']:.3g} (tolerance {tol:g}, {key})")
    return {"scores": {**report, "tolerance": tol}}


def compare_runtime(pipeline: ReferencePipeline, runtime, docs: list[Document], queries: list[str]) -> dict:
    """Max |runtime - reference| score over docs x queries, and how often the pruning choices agree.

    The reference is given the runtime's kept tokens, so the score difference measures arithmetic; the
    choice itself (a top-k over attention, where fp16 can flip a near-tie) is reported as the mean
    Jaccard overlap of the kept sets and the fraction of documents whose kept set is identical.
    """
    return compare_sides(pipeline, docs, queries, runtime_side(runtime, docs, queries))


def runtime_side(runtime, docs: list[Document], queries: list[str]) -> dict:
    """What :func:`compare_runtime` needs of the runtime: each document's kept visual tokens (None: not
    pruned) and each query's scores in document order."""
    runtime.index(docs)  # cache every document once; each query then reads the same entries
    runtime.release_document_graphs()  # a 2B model's vision and prefix sessions, freed before the band's open
    kept = [runtime.store.get(runtime.key(doc)).meta.get("kept_visual") for doc in docs]
    scores = []
    for query in queries:
        out = runtime.rerank(query, docs)
        if out.failed:
            raise BuildError(f"end-to-end check: the runtime failed on {out.failed[0].document}: {out.failed[0].error}")
        scores.append(np.array([r.score for r in sorted(out.results, key=lambda r: r.index)]))
    return {"kept": kept, "scores": scores}


def compare_sides(pipeline: ReferencePipeline, docs: list[Document], queries: list[str], side: dict) -> dict:
    """:func:`compare_runtime`'s report from the runtime's side (:func:`runtime_side`) and the reference."""
    entries, overlaps = [], []
    for doc, kept in zip(docs, side["kept"]):
        entries.append(pipeline.index(doc, None if kept is None else np.asarray(kept)))
        if kept is not None:
            own = set(pipeline.index(doc).kept_visual.tolist())
            overlaps.append(len(set(kept) & own) / len(set(kept) | own))
    worst = max((float(np.abs(got - pipeline.score(query, entries)).max())
                 for query, got in zip(queries, side["scores"])), default=0.0)
    return {"max_abs_diff": worst, "pairs": len(docs) * len(queries),
            "kept_jaccard": float(np.mean(overlaps)) if overlaps else None,
            "kept_identical": float(np.mean([o == 1.0 for o in overlaps])) if overlaps else None}
