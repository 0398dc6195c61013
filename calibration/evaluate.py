"""``minireranker eval``: a labelled set through the first stage, dense, exact and the given specs.

Systems (``docs/eval.md``):

* ``first stage`` — the embedder alone (cosine, :mod:`.embedder`), when ``--embedder`` is given;
* ``dense`` — the checkpoint's plain model in the order miniReranker runs it (vision-first: the document
  before the query), every pair from scratch through every layer (:func:`.scoring.dense_scores`: one causal
  forward of system + document + query);
* ``dense, trained format`` — the plain model in the order the checkpoint was trained in, when that is
  another one (the spec's ``trained`` resolves to ``query-first``, Qwen3-VL-Reranker's own order: system,
  instruction, query, then the document; :func:`.scoring.trained_dense_scores`). A checkpoint trained in
  the format it runs has one dense system, ``dense``, which is then its trained-format reference too;
* ``exact`` — miniReranker's exact spec with document K/V cached: each document indexed once
  (``ReferencePipeline.index``), every query scored against the cached entries (``score``); with
  ``--bundle`` of an exact bundle, the ONNX Runtime engines and the K/V store do it instead;
* each ``--spec`` — ``ReferencePipeline`` with that spec (document K/V cached the same way); a bundle
  whose spec is approximate is one more system, ``bundle``.

Every fidelity figure (``fraction_of_dense``, ``vs_dense``) is taken against one *reference* system,
``--reference``: ``trained`` (default) is dense in the trained format (``dense, trained format``, or
``dense`` for a checkpoint trained as it runs), ``vision-first`` is ``dense``. The keys keep their names;
``reference`` and ``reference_system`` say which dense system they are fractions of. ``consistency`` always
compares exact with ``dense`` (vision-first): the cached path must reproduce the sequence it caches.

``eval.json`` schema (version 2; version 1 had no ``reference``/``trained``/``reference_system``, and its
fractions were always of ``dense``)::

    {"schema_version": 2, "checkpoint", "data", "embedder", "bundle", "created", "wall_s",
     "reference": "trained" | "vision-first",      # the --reference asked for
     "trained": "query-first" | template name,      # the order the checkpoint was trained in (spec.trained)
     "reference_system": "dense, trained format" | "dense",   # the system the fractions are of
     "queries": [{"qid", "query", "candidates": [ids], "grades": [int]}],
     "systems": [{"name", "kind": "embedder" | "dense" | "dense_trained" | "exact" | "spec" | "bundle",
                  "spec": {...} | null, "metrics": {"hit@1", "mrr", "ndcg@5", "ndcg@10", "queries", "excluded"},
                  "fraction_of_dense": {metric: value / the reference system's value},
                  "vs_dense": {"delta", "ci95": [low, high], "queries", "wins", "losses"} (nDCG@10 minus the
                  reference's, paired bootstrap; null for the reference system itself), "wall_s",
                  "scores": [[float per candidate] per query]}],
     "consistency": {"max_abs_exact_minus_dense": float (exact vs vision-first dense), "pairs": int,
                     "exact_system": str}}
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

SCHEMA_VERSION = 2
REFERENCES = ("trained", "vision-first")   # what --reference accepts: the dense system fidelity is a fraction of
DENSE = "dense"                            # vision-first dense: the order miniReranker runs
DENSE_TRAINED = "dense, trained format"    # query-first dense, for a checkpoint trained query-first


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
    reference: str = "trained"         # one of REFERENCES: the dense system every fraction is of
    progress: bool = True

    def __post_init__(self) -> None:
        check_reference(self.reference, SpecError)
        if self.batch_size < 1:
            raise SpecError(f"batch size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"threads must be at least 1, got {self.threads}")
        object.__setattr__(self, "specs", tuple(self.specs))


def check_reference(reference: str, error: type[Exception]) -> None:
    """Raise ``error`` unless ``reference`` is one of :data:`REFERENCES`."""
    if reference not in REFERENCES:
        raise error(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}: 'trained' measures "
                    "against dense scoring in the order the checkpoint was trained in, 'vision-first' against "
                    "dense scoring in the order miniReranker runs")


def format_changed(spec: RerankSpec) -> bool:
    """True when the checkpoint was trained in another order than it runs: ``trained`` is query-first
    (Qwen3-VL-Reranker's own), miniReranker runs it vision-first. Then the two dense systems differ."""
    return spec.trained == "query-first"


def reference_system_name(reference: str, spec: RerankSpec) -> str:
    """The name of the dense system that ``reference`` means for a checkpoint whose resolved spec is ``spec``:
    trained-format dense, which is vision-first dense itself for a checkpoint trained as it runs."""
    return DENSE_TRAINED if reference == "trained" and format_changed(spec) else DENSE


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


def _cached_system(pipeline, data: LabelledSet, name: str, progress: bool) -> tuple[list[np.ndarray], float]:
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


def _dense_systems(exact, data: LabelledSet, progress: bool) -> list[dict]:
    """``dense`` (vision-first), and ``dense, trained format`` beside it when the checkpoint was trained in
    another order (:func:`format_changed`); otherwise ``dense`` is the trained format and is not computed twice."""
    from .scoring import dense_scores, trained_dense_scores

    scores, sec = _per_query(data, DENSE, progress, lambda q: dense_scores(exact, q.query, q.candidates))
    out = [_system(DENSE, "dense", None, scores, sec, data)]
    if format_changed(exact.spec):
        scores, sec = _per_query(data, DENSE_TRAINED, progress,
                                 lambda q: trained_dense_scores(exact, q.query, q.candidates))
        out.append(_system(DENSE_TRAINED, "dense_trained", None, scores, sec, data))
    return out


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
    from .scoring import LoadedReranker

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
    systems += _dense_systems(exact, data, config.progress)
    bundle_exact = bundle is not None and bundle.spec.is_exact(loaded.num_layers)
    if bundle_exact:
        scores, sec = _bundle_system(config.bundle, data, config.progress, config.batch_size)
        systems.append(_system("exact (ONNX Runtime)", "exact", bundle.spec, scores, sec, data))
    else:
        scores, sec = _cached_system(exact, data, "exact", config.progress)
        systems.append(_system("exact", "exact", exact.spec, scores, sec, data))
    for spec, source in specs:
        name = spec_label(spec)
        scores, sec = _cached_system(loaded.pipeline(spec, config.batch_size), data, name, config.progress)
        systems.append({**_system(name, "spec", spec, scores, sec, data), "source": source})
    if bundle is not None and not bundle_exact:
        scores, sec = _bundle_system(config.bundle, data, config.progress, config.batch_size)
        systems.append(_system(f"bundle (ONNX Runtime) {spec_label(bundle.spec)}", "bundle", bundle.spec,
                               scores, sec, data))
    result = _finish(config, data, systems, time.perf_counter() - t_start, exact.spec)
    _write(out, result, log)
    return result


def _finish(config: EvalConfig, data: LabelledSet, systems: list[dict], wall: float, spec: RerankSpec) -> dict:
    """Fractions and paired differences against the reference system; the consistency of exact with dense."""
    name = reference_system_name(config.reference, spec)
    ref = next(s for s in systems if s["name"] == name)
    grades = [q.grades for q in data.queries]
    ref_ndcg = per_query(ref["scores"], grades, "ndcg@10")
    for s in systems:
        s["fraction_of_dense"] = {m: (s["metrics"][m] / ref["metrics"][m] if ref["metrics"][m] else None)
                                  for m in METRICS}
        s["vs_dense"] = None if s is ref or not len(ref_ndcg) else \
            paired_difference(per_query(s["scores"], grades, "ndcg@10"), ref_ndcg)
    dense = next(s for s in systems if s["kind"] == "dense")  # vision-first, whatever the reference
    exact = next(s for s in systems if s["kind"] == "exact")
    diff = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(exact["scores"], dense["scores"]))
    return {
        "schema_version": SCHEMA_VERSION, "checkpoint": str(config.checkpoint), "data": str(data.path),
        "embedder": config.embedder, "bundle": config.bundle,
        "reference": config.reference, "trained": spec.trained, "reference_system": name,
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
