"""``minireranker calibrate``: sweep exit layer, band and keep ratio; keep the cheapest spec that is faithful.

1. The reference dense model scores every (query, candidate) pair of the calibration set: ``--reference
   trained`` (default) in the order the checkpoint was trained in (:func:`.scoring.trained_dense_scores`:
   query-first for Qwen3-VL-Reranker, the run order for a checkpoint trained as it runs), ``vision-first``
   in the order miniReranker runs (:func:`.scoring.dense_scores`). When the two differ, the other one is
   scored too, and its fidelity is reported as ``format_change`` (what the order alone costs or gains).
2. Every point ``(E, [A, B], keep)`` of the grid (``B <= E``) is scored through :class:`.sweep.SpecSweep`
   (equal to ``ReferencePipeline`` with that spec; K/V computed once per pruning variant, exits in one walk).
3. **Fidelity** of a point: with relevance grades, ``metric(spec) / metric(reference)`` (``--metric``, default
   nDCG@10); without grades, the mean over queries of Spearman's rho between the spec's and the reference's
   scores (rank agreement). Agreement is reported for every point either way. ("dense" in the keys below
   is the reference dense system.)
4. **Cost** per query for ``--candidates`` N: FLOPs and K/V bytes read (:mod:`.cost`).
5. **Choice**: among points with fidelity >= ``--target``, the fewest FLOPs, then the fewest K/V bytes,
   then the highest fidelity. That point is on the Pareto frontier (no point has at most its FLOPs and
   bytes and at least its fidelity, one strictly). None meets the target: no ``minireranker.json``, exit 1.

Specs with ``A > 0`` fix the query's start position P (``RerankSpec.query_position``): ``--query-position``,
else the checkpoint's own spec's, else the longest document sequence of the set (system + document tokens)
rounded up to a multiple of 16. Specs with ``A = 0`` keep Qwen3-VL's own query positions.

Outputs in ``--out``: ``minireranker.json`` (the chosen :class:`RerankSpec`, with the checkpoint's
template strings), ``calibration.json`` (schema below), ``report.md`` and ``pareto.png``.

``calibration.json`` (version 2; version 1 had no ``reference``/``trained``/``reference_system``/
``format_change``, and its reference was always vision-first dense)::

    {"schema_version": 2, "checkpoint", "data", "embedder", "labelled", "metric", "target",
     "reference": "trained" | "vision-first", "trained": "query-first" | template name (spec.trained),
     "reference_system": "dense, trained format" | "dense" (eval's name of the reference dense system),
     "format_change": {"system": the other dense system's name, "fidelity", "agreement_spearman",
                       "metrics" | null} | null (null: the checkpoint was trained as it runs, one dense system),
     "fidelity": {"kind": "metric_fraction" | "rank_agreement", "short", "description"},
     "queries", "query_position", "cost": {"candidates", "precision", "system_tokens", "query_tokens",
     "instruction_tokens"},
     "grid": {"exit_layers", "bands", "keep_ratios", "guide"}, "dense_metrics": {...} (the reference's) | null,
     "exact_cost": {"flops_per_query", "kv_bytes_per_query"},
     "points": [{"label", "spec": {...}, "exit_layer", "band", "keep_ratio", "guide", "metrics" | null,
                 "fraction_of_dense" (of the reference) | null, "agreement_spearman", "agreement_kendall"
                 (with the reference's scores), "fidelity",
                 "flops_per_query", "kv_bytes_per_query", "doc_tokens", "meets_target", "on_frontier"}],
     "chosen": index into points | null, "chosen_check_max_abs_diff": float | null, "wall_s"}
"""

from __future__ import annotations

import json

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.spec import RerankSpec
from .data import LabelledSet, load_labelled_set
from .errors import CalibrationError, require_torch
from .evaluate import DENSE, DENSE_TRAINED, check_reference, format_changed, reference_system_name
from .metrics import METRICS, kendall, spearman, summarize

SCHEMA_VERSION = 2
POSITION_MULTIPLE = 16


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``minireranker calibrate`` sweeps; every default is defined here once.

    ``exit_layers`` / ``bands`` None: :func:`default_grid` for the checkpoint's depth.
    """

    checkpoint: str
    data: str
    embedder: str | None = None
    target: float = 0.96
    metric: str = "ndcg@10"
    exit_layers: tuple[int, ...] | None = None
    bands: tuple[tuple[int, int], ...] | None = None
    keep_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    query_position: int | None = None
    candidates: int = 100
    precision: str = "fp16"
    out: str = "calibration-out"
    batch_size: int = 32
    threads: int | None = 1           # torch intra-op threads (None: torch's default); see scoring.torch_threads
    reference: str = "trained"        # evaluate.REFERENCES: the dense system fidelity is measured against
    exit_head: bool = False           # also fit a linear exit head for the chosen spec: OUT/checkpoint/ (adapt.py)
    progress: bool = True

    def __post_init__(self) -> None:
        check_reference(self.reference, CalibrationError)
        if self.threads is not None and self.threads < 1:
            raise CalibrationError(f"--threads must be at least 1, got {self.threads}")
        if self.batch_size < 1:
            raise CalibrationError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (isinstance(self.target, (int, float)) and 0 < self.target <= 2):
            raise CalibrationError(f"--target must be a fraction of the reference dense system in (0, 2], e.g. 0.96; "
                                   f"got {self.target!r}")
        if self.metric not in METRICS:
            raise CalibrationError(f"--metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if self.candidates < 1:
            raise CalibrationError(f"--candidates must be at least 1, got {self.candidates}")
        if self.precision not in ("fp16", "fp32"):
            raise CalibrationError(f"--precision must be fp16 or fp32, got {self.precision!r}")
        bad = [r for r in self.keep_ratios if not 0 < r <= 1]
        if not self.keep_ratios or bad:
            raise CalibrationError(f"--keep-ratios must be in (0, 1]; got {list(self.keep_ratios)}")
        if self.exit_layers is not None and (not self.exit_layers or min(self.exit_layers) < 0):
            raise CalibrationError(f"--exit-layers must be non-negative layer indices; got {list(self.exit_layers)}")
        for band in self.bands or ():
            if len(band) != 2 or band[0] < 0 or band[0] > band[1]:
                raise CalibrationError(f"--bands entries must be A:B with 0 <= A <= B; got {band}")
        if self.query_position is not None and self.query_position < 0:
            raise CalibrationError(f"--query-position must be non-negative, got {self.query_position}")
        object.__setattr__(self, "keep_ratios", tuple(sorted(set(float(r) for r in self.keep_ratios))))

    @classmethod
    def tiny(cls, checkpoint: str, data: str, out: str) -> "CalibrationConfig":
        """A small grid for 4-layer test models."""
        return cls(checkpoint, data, exit_layers=(2, 3), bands=((0, 3), (0, 2), (1, 1), (1, 2), (2, 3)),
                   keep_ratios=(0.5, 1.0), out=out, progress=False)


def default_grid(num_layers: int) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Exit layers at about L/4, L/2, 3L/4 and L-1; bands of width 0..2 starting anywhere up to the last
    exit (every 1/12 of it for deep models), plus the full band [0, E] of each exit (early exit alone)."""
    last = num_layers - 1
    exits = tuple(sorted({min(last, max(0, round(num_layers * f))) for f in (0.25, 0.5, 0.75)} | {last}))
    top = max(exits)
    step = max(1, math.ceil(top / 12))
    bands = {(a, min(a + w, top)) for a in range(0, top + 1, step) for w in (0, 1, 2)}
    bands |= {(0, e) for e in exits}
    return exits, tuple(sorted(bands))


def _fidelity(labelled: bool, metric: str, reference: str) -> dict:
    """How fidelity is measured; ``reference`` is the reference dense system's name."""
    if labelled:
        return {"kind": "metric_fraction", "short": f"{metric} / {reference}",
                "description": f"{metric} of the spec as a fraction of {metric} of {reference}"}
    return {"kind": "rank_agreement", "short": f"Spearman vs {reference}",
            "description": f"mean over queries of Spearman's rho between the spec's scores and those of {reference} "
                           "(label-free set)"}


def frontier(points: list[dict]) -> list[bool]:
    """True for points no other point dominates in (fewer FLOPs, fewer K/V bytes, higher fidelity)."""
    def dominates(p: dict, q: dict) -> bool:
        le = (p["flops_per_query"] <= q["flops_per_query"] and p["kv_bytes_per_query"] <= q["kv_bytes_per_query"]
              and p["fidelity"] >= q["fidelity"])
        lt = (p["flops_per_query"] < q["flops_per_query"] or p["kv_bytes_per_query"] < q["kv_bytes_per_query"]
              or p["fidelity"] > q["fidelity"])
        return le and lt
    return [not any(dominates(p, q) for p in points) for q in points]


def choose(points: list[dict], target: float) -> int | None:
    """The fewest FLOPs among points meeting ``target``, then fewest K/V bytes, then highest fidelity."""
    ok = [i for i, p in enumerate(points) if p["fidelity"] >= target]
    if not ok:
        return None
    return min(ok, key=lambda i: (points[i]["flops_per_query"], points[i]["kv_bytes_per_query"],
                                  -points[i]["fidelity"]))


def run_calibration(config: CalibrationConfig, log: Callable[[str], None] = print) -> dict:
    """Sweep, write minireranker.json (when a spec meets the target), calibration.json, report.md and
    pareto.png into ``config.out``, and return the result (``result["chosen"]`` None: target not met)."""
    require_torch("calibrate")
    from .scoring import torch_threads

    with torch_threads(config.threads):
        return _run_calibration(config, log)


def _run_calibration(config: CalibrationConfig, log: Callable[[str], None]) -> dict:
    from .scoring import LoadedReranker

    t0 = time.perf_counter()
    data = load_labelled_set(config.data, require_labels=False)
    loaded = LoadedReranker(config.checkpoint)
    exits, bands = _grid(config, loaded.num_layers)
    base = loaded.pipeline(loaded.exact_spec(), config.batch_size)
    position = _query_position(config, loaded, base, data)
    guide = f"embedder:{config.embedder}" if config.embedder else "self"
    if config.embedder:
        loaded.embedder_guide(config.embedder, None)  # a bad embedder fails now, not after the dense pass
    log(f"{data.path}: {len(data.queries)} queries, {data.num_pairs} pairs ({'graded' if data.labelled else 'label-free'}); "
        f"grid: exits {list(exits)}, {len(bands)} bands, keep {list(config.keep_ratios)} ({guide}); P = {position}")
    from .cost import CostInputs

    cost_in = CostInputs(len(base.template.system_ids),
                         float(np.mean([len(base.template.query_text(q.query)) for q in data.queries])),
                         config.candidates, config.precision, len(base.template.instruction_ids))
    dense = _dense(base, data, config.progress, trained=config.reference == "trained")
    points = _sweep(config, loaded, base, data, exits, bands, position, guide, dense, cost_in)
    result = _result(config, loaded, base, data, points, dense, exits, bands, position, guide, cost_in)
    result["format_change"] = _format_change(config, base, data, dense)
    if result["chosen"] is not None:
        result["chosen_check_max_abs_diff"] = _check_chosen(loaded, data, points[result["chosen"]], config)
    if config.exit_head and result["chosen"] is not None:
        trained = config.reference == "trained" or not format_changed(base.spec)
        teacher = dense if trained else None  # the sweep's dense scores are adapt's teacher: not labelled twice
        result["exit_head"] = _exit_head(config, result["points"][result["chosen"]]["spec"], log, teacher)
    result["wall_s"] = time.perf_counter() - t0
    _write(Path(config.out), result, log)
    return result


def _exit_head(config: CalibrationConfig, spec: dict, log: Callable[[str], None],
               teacher: list[np.ndarray] | None) -> dict:
    """``--exit-head``: a linear head on the chosen exit layer's normed hidden state, least squares to the
    dense scores in the checkpoint's trained order (``teacher``, when the sweep's reference computed them),
    the body untouched (``adapt`` with no training steps), written with the base's weights as the checkpoint
    ``OUT/checkpoint/`` that every command reads."""
    from .adapt import AdaptConfig, run_adapt

    target = Path(config.out) / "checkpoint"
    report = run_adapt(AdaptConfig(config.checkpoint, config.data, str(target), spec=json.dumps(spec), steps=0,
                                   exit_head=True, resume=False, threads=config.threads, progress=config.progress),
                       log=log, teacher=teacher)
    return {"checkpoint": str(target), "tensors": report["exit_head"], "yes_no_rows": report["before"],
            "exit_head": report["after"]}


def _grid(config: CalibrationConfig, num_layers: int) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    exits, bands = default_grid(num_layers)
    exits = tuple(sorted(set(config.exit_layers))) if config.exit_layers else exits
    if max(exits) >= num_layers:
        raise CalibrationError(f"--exit-layers {list(exits)}: the model has layers 0..{num_layers - 1}; "
                               f"pick exit layers below {num_layers}")
    bands = tuple(sorted(set(config.bands))) if config.bands else tuple(b for b in bands if b[1] <= max(exits))
    usable = [b for b in bands if b[1] <= max(exits)]
    if not usable:
        raise CalibrationError(f"no band [A, B] of {list(bands)} ends at or before the last exit layer {max(exits)}; "
                               "each spec needs B <= E")
    return exits, tuple(usable)


def _query_position(config: CalibrationConfig, loaded, base, data: LabelledSet) -> int:
    if config.query_position is not None:
        return config.query_position
    if loaded.spec.query_position is not None:
        return loaded.spec.query_position
    s = len(base.template.system_ids)
    longest = max(s + len(base.prepare(d).ids) for d in data.documents.values())
    return -(-longest // POSITION_MULTIPLE) * POSITION_MULTIPLE


def _dense(base, data: LabelledSet, progress: bool, trained: bool) -> list[np.ndarray]:
    """Dense scores of every query: in the trained format (``trained``; the run order for a checkpoint
    trained as it runs) or vision-first."""
    from ..runtime.progress import progress as with_progress

    from .scoring import dense_scores, trained_dense_scores

    score = trained_dense_scores if trained else dense_scores
    name = DENSE_TRAINED if trained and format_changed(base.spec) else DENSE
    return [score(base, q.query, q.candidates)
            for q in with_progress(data.queries, name, "query", disable=not progress, leave=False)]


def _format_change(config, base, data: LabelledSet, reference: list[np.ndarray]) -> dict | None:
    """The other dense system's fidelity against the reference: the price (or gain) of the order change alone;
    None when the checkpoint was trained as it runs (one dense system)."""
    if not format_changed(base.spec):
        return None
    other = _dense(base, data, config.progress, trained=config.reference != "trained")
    f = _fidelity_of(other, reference, data, config)
    return {"system": DENSE if config.reference == "trained" else DENSE_TRAINED, "fidelity": f["fidelity"],
            "agreement_spearman": f["agreement_spearman"], "metrics": f["metrics"]}


def _variants(config: CalibrationConfig, bands, guide: str):
    """(variant, bands it serves): keep 1 serves every band; a self guide ranks tokens at A."""
    from .sweep import Variant

    out = []
    for keep in config.keep_ratios:
        if keep == 1.0:
            out.append((Variant(1.0, "self", None), list(bands)))
        elif guide == "self":
            for a in sorted({b[0] for b in bands}):
                out.append((Variant(keep, "self", a), [b for b in bands if b[0] == a]))
        else:
            out.append((Variant(keep, guide, None), list(bands)))
    return out


def _sweep(config, loaded, base, data: LabelledSet, exits, bands, position, guide, dense, cost_in) -> list[dict]:
    from ..runtime.progress import progress_bar

    from .cost import query_cost
    from .sweep import SpecSweep

    sweep = SpecSweep(base, position, config.batch_size)
    variants = _variants(config, bands, guide)
    points = []
    bar = progress_bar(len(variants) * len(data.queries), "sweep", "query", disable=not config.progress,
                       leave=False)
    for variant, served in variants:
        last = max(b[1] for b in served)
        entries = {key: sweep.document_kv(doc, variant, last) for key, doc in data.documents.items()}
        doc_tokens = float(np.mean([e.num_tokens for e in entries.values()]))
        scores: dict[tuple, list[np.ndarray]] = {}
        by_start: dict[int, list[int]] = {}
        for a, b in served:
            by_start.setdefault(a, []).append(b)
        for q in data.queries:
            cands = [entries[d.id] for d in q.candidates]
            for a, ends in by_start.items():
                for (b, e), s in sweep.score(q.query, cands, a, ends, list(exits)).items():
                    scores.setdefault(((a, b), e), []).append(s)
            bar.update(1)
        for (band, e), s in scores.items():
            spec = _spec(loaded, e, band, variant.keep_ratio, guide, position)
            points.append({**_fidelity_of(s, dense, data, config), "label": _label(spec),
                           "spec": spec.to_dict(), "exit_layer": e, "band": list(band), "keep_ratio": variant.keep_ratio,
                           "guide": spec.guide, **query_cost(loaded.ckpt.config, cost_in, e, band, doc_tokens),
                           "_scores": s})  # kept in memory for the check of the chosen spec, not written
    bar.close()
    return points


def _spec(loaded, exit_layer: int, band: tuple[int, int], keep: float, guide: str, position: int) -> RerankSpec:
    spec = RerankSpec(exit_layer=exit_layer, band=band, keep_ratio=keep, guide=guide if keep < 1 else "self",
                      query_position=position if band[0] > 0 else None)
    return loaded.with_template(spec)


def _label(spec: RerankSpec) -> str:
    from .evaluate import spec_label

    return spec_label(spec)


def _fidelity_of(scores: list[np.ndarray], dense: list[np.ndarray], data: LabelledSet, config) -> dict:
    rho = float(np.mean([spearman(s, d) for s, d in zip(scores, dense)]))
    tau = float(np.mean([kendall(s, d) for s, d in zip(scores, dense)]))
    out = {"agreement_spearman": rho, "agreement_kendall": tau, "metrics": None, "fraction_of_dense": None,
           "fidelity": rho}
    if data.labelled:
        grades = [q.grades for q in data.queries]
        mine, ref = summarize(scores, grades).means, summarize(dense, grades).means
        out["metrics"] = mine
        out["fraction_of_dense"] = {m: mine[m] / ref[m] if ref[m] else None for m in METRICS}
        out["fidelity"] = out["fraction_of_dense"][config.metric]
        if out["fidelity"] is None:
            raise CalibrationError(f"the reference dense model's {config.metric} is 0 on {data.path}: no fraction "
                                   "of it can be measured; check the labels or the checkpoint, or try the other "
                                   "--reference")
    return out


def _result(config, loaded, base, data, points, dense, exits, bands, position, guide, cost_in) -> dict:
    from .cost import query_cost

    for p, on in zip(points, frontier(points)):
        p["on_frontier"] = on
        p["meets_target"] = p["fidelity"] >= config.target
    last = loaded.num_layers - 1
    tokens = float(np.mean([len(base.prepare(d).ids) for d in data.documents.values()]))
    exact = query_cost(loaded.ckpt.config, cost_in, last, (0, last), tokens)
    grades = [q.grades for q in data.queries]
    return {
        "schema_version": SCHEMA_VERSION, "checkpoint": str(config.checkpoint), "data": str(data.path),
        "embedder": config.embedder, "labelled": data.labelled, "metric": config.metric, "target": config.target,
        "reference": config.reference, "trained": base.spec.trained,
        "reference_system": reference_system_name(config.reference, base.spec),
        "fidelity": _fidelity(data.labelled, config.metric, reference_system_name(config.reference, base.spec)),
        "queries": len(data.queries),
        "query_position": position,
        "cost": {"candidates": config.candidates, "precision": config.precision,
                 "system_tokens": cost_in.system_tokens, "query_tokens": cost_in.query_tokens,
                 "instruction_tokens": cost_in.instruction_tokens},
        "grid": {"exit_layers": list(exits), "bands": [list(b) for b in bands],
                 "keep_ratios": list(config.keep_ratios), "guide": guide},
        "dense_metrics": summarize(dense, grades).to_dict() if data.labelled else None,
        "exact_cost": {k: exact[k] for k in ("flops_per_query", "kv_bytes_per_query")},
        "points": points, "chosen": choose(points, config.target), "chosen_check_max_abs_diff": None,
    }


def _check_chosen(loaded, data: LabelledSet, point: dict, config) -> float:
    """Score the chosen spec again through ReferencePipeline's own index/score: the sweep must agree."""
    pipeline = loaded.pipeline(RerankSpec.from_dict(point["spec"]), config.batch_size)
    entries = {key: pipeline.index(doc) for key, doc in data.documents.items()}
    return max(float(np.max(np.abs(pipeline.score(q.query, [entries[d.id] for d in q.candidates]) - s)))
               for q, s in zip(data.queries, point["_scores"]))


def _write(out: Path, result: dict, log: Callable[[str], None]) -> None:
    from ..runtime.profiling.report import write_report
    from .report import calibration_markdown, pareto_plot

    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "minireranker.json"
    if spec_file.exists():
        spec_file.unlink()  # never leave a stale choice beside a report that did not choose it
    if result["chosen"] is not None:
        RerankSpec.from_dict(result["points"][result["chosen"]]["spec"]).save(spec_file)
    for p in result["points"]:
        p.pop("_scores", None)
    report = calibration_markdown(result)
    written = write_report(out, result, report, "calibration.json", "report.md", "pareto.png", pareto_plot)
    log("\n" + report)
    log(written.summary(also=(spec_file,) if result["chosen"] is not None else ()))
