"""Post-training INT8 with explicit Q/DQ nodes for the band and tail: ``minireranker quantize``.

TensorRT 11 has no implicit INT8 calibrators; it takes INT8 only where the graph says so, as
QuantizeLinear/DequantizeLinear pairs. This writes those graphs from a float bundle::

    bundle (fp32) ─Reranker on a JSONL set─▶ the band's and tail's real inputs (calibration feeds)
        ─onnxruntime.quantization.quantize_static (QDQ, MinMax ranges)─▶ band.onnx, tail.onnx
        ─▶ a new bundle: the same files, those two graphs replaced, bundle.json "weights": "int8-qdq"

    x float ─Q(s_x, 0)─DQ─▶ x'    W float ─Q(s_W[col], 0)─DQ─▶ W'     MatMul(x', W') ─▶ y float

Choices, and why:

* **ONNX Runtime's static quantizer**, not NVIDIA ModelOpt: it is already installed (the runtime's ONNX
  Runtime), runs on a CPU, writes standard Q/DQ ONNX that ONNX Runtime runs here, so fidelity is measured on
  this machine; ModelOpt would add a large NVIDIA-only dependency for the same graph form.
* **Symmetric int8 activations and weights** (zero points 0): TensorRT's Q/DQ layers take zero zero-points
  only. Weights per output column (``per_channel``), activations per tensor.
* **MatMul only**, as the dynamic int8 weights (export/quantize.py): the projections are the band's and
  tail's cost; the attention products, norms and softmax stay float.
* **Calibration data** are the inputs the float bundle's band and tail receive when the runtime reranks
  the set's queries (labels are not needed; a labelled set works too), so the ranges are those of real
  queries and documents of the deployment, not of samples.
* **The band and tail only.** They run once per pair; query_head, the vision tower and doc_prefix stay float,
  so the K/V entries, and the store's namespace, are those of the float bundle (runtime/bundle.py).

Float bundles (fp32) only: the quantizer takes float32 graphs. The new bundle's bundle.json records the
source bundle, the calibration set and method, and under ``validation.end_to_end`` the largest score
difference to the float bundle on calibration pairs held out of the calibration feeds.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.bundle import BUNDLE_FILE, STAMP_FILE, load_bundle, meta_checksum, sha256_file
from ..runtime.errors import MiniRerankerError

QDQ_WEIGHTS = "int8-qdq"
QDQ_GRAPHS = ("band", "tail")
# ONNX Runtime's Entropy and Percentile calibrators stack each tensor's values across calls and fail on
# feeds of different shapes ("inhomogeneous shape"), which the band's and tail's are (batch, document and
# query lengths vary); MinMax keeps a running range, so it is the one that works here.
METHODS = ("minmax",)


class QuantizeError(MiniRerankerError):
    """The bundle or the calibration data cannot be quantized as asked."""


@dataclass(frozen=True)
class QDQConfig:
    """``queries``: how many of the set's queries feed the calibration (the rest, up to ``check_queries``,
    measure the result against the float bundle); ``method``: the quantizer's activation range method."""

    bundle: str
    data: str
    out: str
    queries: int = 24
    check_queries: int = 8
    method: str = "minmax"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"--method must be one of {list(METHODS)}, got {self.method!r}")
        for name in ("queries", "check_queries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise QuantizeError(f"--{name.replace('_', '-')} must be a positive integer")


def record_feeds(reranker, queries, graphs: tuple[str, ...] = QDQ_GRAPHS) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every feed the ``graphs`` receive while ``reranker`` reranks ``queries`` (LabelledQuery objects)."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}
    originals = {}
    for name in graphs:
        runner = reranker.encoder.runners[name]
        originals[name] = runner.infer

        def record(feed, name=name, infer=runner.infer):
            feeds[name].append({k: np.array(v) for k, v in feed.items()})
            return infer(feed)
        runner.infer = record
    try:
        for q in queries:
            out = reranker.rerank(q.query, q.candidates)
            if out.failed:
                raise QuantizeError(f"calibration query {q.qid!r}: document {out.failed[0].document} failed: "
                                    f"{out.failed[0].error}")
    finally:
        for name, infer in originals.items():
            reranker.encoder.runners[name].infer = infer
    return feeds


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], method: str) -> int:
    """Write the Q/DQ form of the graph at ``src`` to ``dst``; returns its QuantizeLinear node count."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    methods = {"minmax": CalibrationMethod.MinMax}
    import logging

    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its root-logger advice to pre-process the model is noise here
    try:
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    except Exception as exc:  # the quantizer raises many types; all mean the same to the user
        raise QuantizeError(f"quantizing graph '{src.stem}' to Q/DQ failed: {type(exc).__name__}: {exc}") from exc
    finally:
        logging.disable(quiet)
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(dst)).graph.node)


def quantize_bundle(config: QDQConfig, log: Callable[[str], None] = print) -> dict:
    """Write the Q/DQ bundle ``config.out`` (module docstring); returns bundle.json's ``quantization``."""
    import tempfile

    from ..runtime.reranker import Reranker
    from .data import load_labelled_set

    source = load_bundle(config.bundle)
    if source.precision != "fp32" or source.data.get("weights", "float") != "float":
        raise QuantizeError(f"{config.bundle} is a {source.precision} bundle with {source.data.get('weights')} "
                            "weights; quantize an fp32 bundle with float weights (build --precision fp32)")
    data = load_labelled_set(config.data, require_labels=False)
    if len(data.queries) < 2:
        raise QuantizeError(f"{config.data} has {len(data.queries)} query; give at least 2 (calibration and check)")
    n = min(config.queries, len(data.queries) - 1)
    calibration, check = data.queries[:n], data.queries[n: n + config.check_queries]
    out = Path(config.out)
    if out.exists():
        raise QuantizeError(f"output {out} exists; choose another -o")
    staging = out.parent / f".{out.name}.quantizing"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="qdq-cache-") as cache, Reranker(source, cache) as reranker:
            log(f"recording band and tail inputs on {len(calibration)} calibration queries")
            feeds = record_feeds(reranker, calibration)
            expected = [reranker.rerank(q.query, q.candidates) for q in check]
        shutil.copytree(source.path, staging, ignore=shutil.ignore_patterns("engines", STAMP_FILE, "*.tmp"))
        counts = {}
        for name in QDQ_GRAPHS:
            rel = source.graphs[name]["file"]
            log(f"quantizing {name} (Q/DQ, {config.method}, {len(feeds[name])} calibration calls)")
            tmp = staging / (rel + ".qdq")
            counts[name] = quantize_graph(source.path / rel, tmp, feeds[name], config.method)
            (staging / rel).unlink()
            tmp.rename(staging / rel)
        quantization = {"format": "qdq", "graphs": counts, "method": config.method, "data": str(config.data),
                        "calibration_queries": len(calibration), "source_bundle": str(source.path)}
        _rewrite_meta(staging, quantization)
        diff = _compare(staging, check, expected)
        meta = json.loads((staging / BUNDLE_FILE).read_text(encoding="utf-8"))
        meta["validation"] = {**meta.get("validation", {}), "end_to_end": {"scores": {
            "max_abs_diff_vs_float": diff, "pairs": sum(len(q.candidates) for q in check), "queries": len(check)}}}
        (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(out)
    log(f"Q/DQ bundle written to {out}: score difference to the float bundle at most {diff:.3g} on "
        f"{len(check)} held-aside queries")
    return quantization


def _rewrite_meta(staging: Path, quantization: dict) -> None:
    """bundle.json of the copy: the new weights, sizes, checksums and meta checksum (runtime/bundle.py)."""
    import onnx

    path = staging / BUNDLE_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["weights"] = QDQ_WEIGHTS
    meta["quantization"] = quantization
    for name in QDQ_GRAPHS:
        rel = meta["graphs"][name]["file"]
        model = onnx.load(str(staging / rel), load_external_data=False)
        meta["graphs"][name]["parameters"] = int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    files = [p for p in sorted(staging.rglob("*")) if p.is_file() and p.name != BUNDLE_FILE]
    meta["files"] = {str(p.relative_to(staging)): p.stat().st_size for p in files}
    meta["sha256"] = {str(p.relative_to(staging)): sha256_file(p) for p in files}
    meta["meta_sha256"] = meta_checksum(meta)
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _compare(bundle: Path, queries, expected) -> float:
    """Largest |Q/DQ score - float score| over the held-aside queries."""
    import tempfile

    from ..runtime.reranker import Reranker

    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="qdq-check-") as cache, Reranker(bundle, cache) as reranker:
        for q, float_out in zip(queries, expected):
            got = {r.index: r.score for r in reranker.rerank(q.query, q.candidates).results}
            worst = max(worst, max(abs(got[r.index] - r.score) for r in float_out.results))
    return worst
