"""``minireranker eval``: a labelled set through the first stage, dense, exact and the given specs.

Systems (``docs/eval.md``):

* ``first stage`` — the embedder alone (cosine, :mod:`.embedder`), when ``--embedder`` is given;
* ``dense`` — the checkpoint's plain model, every pair from scratch through every layer
  (:func:`.scoring.dense_scores`: one causal forward of system + document + query);
* ``exact`` — miniReranker's exact spec with document K/V cached: each document indexed once
  (``ReferencePipeline.index``), every query scored against the cached entries (``score``); with
  ``--bundle`` of an exact bundle, the ONNX Runtime engines and the K/V store do it instead;
* each ``--spec`` — ``ReferencePipeline`` with that spec (document K/V cached the same way); a bundle
  whose spec is approximate is one more system, ``bundle``.

``eval.json`` schema (version 1)::

    {"schema_version": 1, "checkpoint", "data", "embedder", "bundle", "created", "wall_s",
     "queries": [{"qid", "query", "candidates": [ids], "grades": [int]}],
     "systems": [{"name", "kind", "spec": {...} | null, "metrics": {"hit@1", "mrr", "ndcg@5", "ndcg@10",
                  "queries", "excluded"}, "fraction_of_dense": {metric: value / dense value},
                  "vs_dense": {"delta", "ci95": [low, high], "queries", "wins", "losses"} (nDCG@10, paired
                  bootstrap; null for dense itself), "wall_s", "scores": [[float per candidate] per query]}],
     "consistency": {"max_abs_exact_minus_dense": float, "pairs": int, ...}}
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.errors import SpecError
from ..runtime.spec import RerankSpec, read_spec
from .data import LabelledSet, load_labelled_set
from .errors import require_torch
from .metrics import METRICS, paired_difference, per_query, summarize

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """What ``minireranker eval`` runs; every default is defined here once."""

    checkpoint: str
    data: str
    embedder: str | None = None
    specs: tuple[str, ...] = ()        # minireranker.json files or inline JSON objects
    bundle: str | None = None
    out: str = "eval-out"
    batch_size: int = 32
    threads: int | None = 1            # torch intra-op threads (None: torch's default); see torch_threads
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SpecError(f"batch size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"threads must be at least 1, got {self.threads}")
        object.__setattr__(self, "specs", tuple(self.specs))


def read_spec_arg(value: str) -> tuple[RerankSpec, set[str], str]:
    """A ``--spec`` value, read by :func:`~minireranker.runtime.spec.read_spec` as everywhere: a file, inline
    JSON (``{...}``) or ``exact``. Returns (spec, keys given, source)."""
    parsed = read_spec(value)
    return parsed.spec, set(parsed.given), parsed.source


def spec_label(spec: RerankSpec) -> str:
    """A short name: ``E2 [1,2] keep 0.5 self P64``."""
    a, b = spec.band
    guide = "" if spec.keep_ratio == 1.0 else (" self" if spec.guide == "self" else " embedder")
    pos = f" P{spec.query_position}" if spec.query_position is not None else ""
    return f"E{spec.exit_layer} [{a},{b}] keep {spec.keep_ratio:g}{guide}{pos}"


def _per_query(data: LabelledSet, name: str, progress: bool, score: Callable) -> tuple[list[np.ndarray], float]:
    from ..runtime.progress import progress as with_progress

    t0 = time.perf_counter()
    out = [np.asarray(score(q), dtype=np.float64)
           for q in with_progress(data.queries, name, "query", disable=not progress, leave=False)]
    return out, time.perf_counter() - t0


def _reference_system(pipeline, data: LabelledSet, name: str, progress: bool) -> tuple[list[np.ndarray], float]:
    """Index every distinct document once, then score each query against the cached entries."""
    from ..runtime.progress import progress as with_progress

    t0 = time.perf_counter()
    docs = data.documents
    entries = {key: pipeline.index(doc) for key, doc in
               with_progress(docs.items(), f"{name}: index", "doc", disable=not progress, leave=False)}
    scores, _ = _per_query(data, name, progress,
                           lambda q: pipeline.score(q.query, [entries[d.id] for d in q.candidates]))
    return scores, time.perf_counter() - t0


def _bundle_system(bundle: str, data: LabelledSet, progress: bool, batch_size: int) -> tuple[list[np.ndarray], float]:
    from ..runtime.reranker import Reranker

    with tempfile.TemporaryDirectory(prefix="minireranker-eval-cache-") as cache:
        with Reranker(bundle, cache, batch_size=batch_size) as reranker:
            def score(q):
                out = reranker.rerank(q.query, q.candidates)
                if out.failed:
                    f = out.failed[0]
                    raise SpecError(f"bundle {bundle}: document {f.document} failed: {f.error}")
                s = np.empty(len(q.candidates))
                for r in out.results:
                    s[r.index] = r.score
                return s
            return _per_query(data, "bundle", progress, score)


def _system(name: str, kind: str, spec: RerankSpec | None, scores: list[np.ndarray], seconds: float,
            data: LabelledSet) -> dict:
    summary = summarize(scores, [q.grades for q in data.queries])
    return {"name": name, "kind": kind, "spec": spec.to_dict() if spec else None, "metrics": summary.to_dict(),
            "wall_s": seconds, "scores": [s.tolist() for s in scores]}


def run_eval(config: EvalConfig, log: Callable[[str], None] = print) -> dict:
    """Run every system over the set, write eval.json / eval.md / eval.png to ``config.out``; return the result."""
    require_torch("eval")
    from .scoring import torch_threads

    with torch_threads(config.threads):
        return _run_eval(config, log)


def _run_eval(config: EvalConfig, log: Callable[[str], None]) -> dict:
    from ..runtime.bundle import load_bundle
    from .scoring import LoadedReranker, dense_scores

    t_start = time.perf_counter()
    data = load_labelled_set(config.data, require_labels=True)
    specs = [read_spec_arg(s) for s in config.specs]  # bad flags fail before the model loads
    loaded = LoadedReranker(config.checkpoint)
    specs = [(loaded.with_template(s, given).resolve(loaded.num_layers), src) for s, given, src in specs]
    bundle = load_bundle(config.bundle) if config.bundle else None
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"{data.path}: {len(data.queries)} queries, {data.num_pairs} pairs, {len(data.documents)} documents")
    systems = []
    if config.embedder:
        from .embedder import Embedder

        embedder = Embedder(config.embedder)
        scores, sec = _per_query(data, "first stage", config.progress,
                                 lambda q: embedder.scores(q.query, q.candidates))
        systems.append(_system("first stage", "embedder", None, scores, sec, data))
    exact = loaded.pipeline(loaded.exact_spec(), config.batch_size)
    scores, sec = _per_query(data, "dense", config.progress, lambda q: dense_scores(exact, q.query, q.candidates))
    systems.append(_system("dense", "dense", None, scores, sec, data))
    bundle_exact = bundle is not None and bundle.spec.is_exact(loaded.num_layers)
    if bundle_exact:
        scores, sec = _bundle_system(config.bundle, data, config.progress, config.batch_size)
        systems.append(_system("exact (ONNX Runtime)", "exact", bundle.spec, scores, sec, data))
    else:
        scores, sec = _reference_system(exact, data, "exact", config.progress)
        systems.append(_system("exact", "exact", exact.spec, scores, sec, data))
    for spec, source in specs:
        name = spec_label(spec)
        scores, sec = _reference_system(loaded.pipeline(spec, config.batch_size), data, name, config.progress)
        systems.append({**_system(name, "spec", spec, scores, sec, data), "source": source})
    if bundle is not None and not bundle_exact:
        scores, sec = _bundle_system(config.bundle, data, config.progress, config.batch_size)
        systems.append(_system(f"bundle (ONNX Runtime) {spec_label(bundle.spec)}", "bundle", bundle.spec,
                               scores, sec, data))
    result = _finish(config, data, systems, time.perf_counter() - t_start)
    _write(out, result, log)
    return result


def _finish(config: EvalConfig, data: LabelledSet, systems: list[dict], wall: float) -> dict:
    dense = next(s for s in systems if s["kind"] == "dense")
    grades = [q.grades for q in data.queries]
    dense_ndcg = per_query(dense["scores"], grades, "ndcg@10")
    for s in systems:
        s["fraction_of_dense"] = {m: (s["metrics"][m] / dense["metrics"][m] if dense["metrics"][m] else None)
                                  for m in METRICS}
        s["vs_dense"] = None if s is dense or not len(dense_ndcg) else \
            paired_difference(per_query(s["scores"], grades, "ndcg@10"), dense_ndcg)
    exact = next(s for s in systems if s["kind"] == "exact")
    diff = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(exact["scores"], dense["scores"]))
    return {
        "schema_version": SCHEMA_VERSION, "checkpoint": str(config.checkpoint), "data": str(data.path),
        "embedder": config.embedder, "bundle": config.bundle,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": wall,
        "queries": [{"qid": q.qid, "query": q.query, "candidates": [d.id for d in q.candidates],
                     "grades": q.grades.tolist()} for q in data.queries],
        "systems": systems,
        "consistency": {"max_abs_exact_minus_dense": diff, "pairs": data.num_pairs, "exact_system": exact["name"]},
    }


def _write(out: Path, result: dict, log: Callable[[str], None]) -> None:
    from ..runtime.profiling.report import write_report
    from .report import eval_markdown, eval_plot

    table = eval_markdown(result)
    written = write_report(out, result, table, "eval.json", "eval.md", "eval.png", eval_plot)
    log("\n" + table)
    log(written.summary())
