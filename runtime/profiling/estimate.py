"""Predict per-stage rerank latencies on a device you have not got, from FLOPs, bytes and published peaks.

The model (also in ``docs/profile.md`` and ``minireranker profile --help``)::

    stage time = max(FLOPs / (peak_flops x compute_eff), device_bytes / (bandwidth x memory_eff))   roofline
               + link_bytes / link_bandwidth          K/V crossing PCIe to a discrete GPU (0 on Jetson, CPU)
               + host_bytes / host_copy_bandwidth     numpy copies on the host CPU (K/V read into a batch)
               + graph_calls x layers x NODES_PER_LAYER x per_node_overhead     ONNX Runtime launch cost
               + candidates x lookup_overhead         (kv_lookup: open + mmap + header of each entry)
               + candidates x entry_overhead          (kv_read: numpy slicing and padding per entry)

FLOPs and bytes per stage are the cost model's (:mod:`.cost`, where the formulas are written out); this
module holds the devices' published peaks and divides the work by them. Stages are those of
``Reranker.rerank``'s ``timings`` (:data:`.cost.STAGES`). Parameters per graph come from ``bundle.json``
(``graphs[*].parameters``); the query's template tokens and the document's tokens from the bundle's
tokenizer and preprocessing settings; the attention width ``Hq x d`` and the vision tower's width and
depth from ``bundle.json``'s ``model``.
Disk I/O (the store's fsync on index) and image decoding are not modelled.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import MiniRerankerError
from .cost import STAGES, StageCost, Workload, decoder_layer_parameters, index_cost, rerank_cost, stage_parameters

NODES_PER_LAYER = 40     # ONNX nodes of one decoder layer in the portable export (MatMul/Softmax attention)


class EstimateError(MiniRerankerError):
    """An unknown device name, or an estimate that cannot be computed from what it was given."""


@dataclass(frozen=True)
class DeviceSpec:
    """Published peaks of one device and the efficiency factors applied to them (documented below)."""

    name: str
    label: str
    peak_tflops: dict[str, float]   # precision -> dense peak TFLOP/s ("fp32": CUDA cores, "fp16": tensor cores)
    bandwidth_gbs: float            # device memory bandwidth, GB/s
    source: str                     # where the figures come from, in words
    kind: str = "gpu"               # "jetson" (unified memory), "gpu" (discrete, over PCIe), "cpu"
    link_gbs: float | None = None   # host <-> device link for a discrete GPU (effective), GB/s
    host_copy_gbs: float = 20.0     # one host thread's numpy copy rate (assumed unless measured), GB/s
    compute_efficiency: float = 0.5
    memory_efficiency: float = 0.7
    per_node_s: float = 6e-6        # ONNX Runtime cost per graph node launched (assumed unless measured)
    lookup_s: float = 30e-6         # opening one cached entry (open + mmap + header parse)
    entry_s: float = 10e-6          # copying one entry into the padded batch, besides its bytes
    measured: dict[str, float] = field(default_factory=dict)


_JETSON = dict(kind="jetson", compute_efficiency=0.4, memory_efficiency=0.6, per_node_s=15e-6, lookup_s=60e-6,
               entry_s=25e-6)
_DESKTOP = dict(kind="gpu", compute_efficiency=0.5, memory_efficiency=0.7, per_node_s=6e-6, lookup_s=30e-6)

DEVICES: dict[str, DeviceSpec] = {d.name: d for d in (
    DeviceSpec("agx-orin-64gb", "NVIDIA Jetson AGX Orin 64GB", {"fp32": 5.3, "fp16": 42.5}, 204.8,
               "NVIDIA Jetson AGX Orin datasheet / technical brief: 2048-core Ampere GPU, 64 Tensor Cores at up to "
               "1.3 GHz, 5.3 FP32 TFLOPS, 170 sparse INT8 TOPS (GPU); 64 GB 256-bit LPDDR5, 204.8 GB/s. Dense FP16 "
               "derived as 170 / 4 (sparsity doubles, INT8 doubles FP16).", host_copy_gbs=12.0, **_JETSON),
    DeviceSpec("orin-nano-8gb", "NVIDIA Jetson Orin Nano 8GB", {"fp32": 1.28, "fp16": 10.0}, 68.0,
               "NVIDIA Jetson Orin Nano series datasheet: 1024-core Ampere GPU, 32 Tensor Cores at 625 MHz "
               "(FP32 = 1024 x 2 x 0.625 GHz), 40 sparse INT8 TOPS; 8 GB 128-bit LPDDR5, 68 GB/s. Dense FP16 "
               "derived as 40 / 4.", host_copy_gbs=6.0, **_JETSON),
    DeviceSpec("orin-nano-8gb-super", "NVIDIA Jetson Orin Nano 8GB (Super mode, JetPack 6.2)",
               {"fp32": 2.09, "fp16": 16.75}, 102.0,
               "NVIDIA Jetson Orin Nano Super announcement / datasheet update: GPU at 1020 MHz, 67 sparse INT8 TOPS; "
               "LPDDR5 at 102 GB/s. FP32 = 1024 x 2 x 1.02 GHz; dense FP16 derived as 67 / 4.",
               host_copy_gbs=8.0, **_JETSON),
    DeviceSpec("agx-xavier", "NVIDIA Jetson AGX Xavier (JetPack 5)", {"fp32": 1.41, "fp16": 11.0}, 136.5,
               "NVIDIA Jetson AGX Xavier datasheet: 512-core Volta GPU, 64 Tensor Cores at 1377 MHz, 11 FP16 TFLOPS "
               "(FP32 = 512 x 2 x 1.377 GHz); 256-bit LPDDR4x, 136.5 GB/s.", host_copy_gbs=8.0, **_JETSON),
    DeviceSpec("agx-thor", "NVIDIA Jetson AGX Thor (T5000)", {"fp32": 8.0, "fp16": 258.0}, 273.0,
               "NVIDIA Jetson AGX Thor datasheet: 2560-core Blackwell GPU, 96 fifth-generation Tensor Cores at up "
               "to 1.57 GHz, 2070 sparse FP4 TFLOPS; 128 GB 256-bit LPDDR5X, 273 GB/s. FP32 = 2560 x 2 x 1.57 GHz; "
               "dense FP16 derived as 2070 / 8 (sparsity, FP4->FP8, FP8->FP16 each halve).",
               host_copy_gbs=20.0, **_JETSON),
    DeviceSpec("rtx-4090", "NVIDIA GeForce RTX 4090", {"fp32": 82.6, "fp16": 165.2}, 1008.0,
               "NVIDIA Ada Lovelace architecture whitepaper: RTX 4090 82.6 FP32 TFLOPS, 165.2 dense FP16 Tensor "
               "TFLOPS with FP32 accumulate; 24 GB GDDR6X, 1008 GB/s; PCIe 4.0 x16 (about 25 GB/s effective).",
               link_gbs=25.0, **_DESKTOP),
    DeviceSpec("h100-sxm", "NVIDIA H100 SXM5 80GB", {"fp32": 67.0, "fp16": 989.0}, 3350.0,
               "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 67 FP32 TFLOPS, 1979 FP16 Tensor TFLOPS with "
               "sparsity (989 dense); HBM3, 3.35 TB/s; PCIe 5.0 x16 to the host (about 50 GB/s effective).",
               link_gbs=50.0, **_DESKTOP),
    DeviceSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", {"fp32": 51.0, "fp16": 756.0}, 2000.0,
               "NVIDIA H100 Tensor Core GPU datasheet (PCIe): 51 FP32 TFLOPS, 1513 FP16 Tensor TFLOPS with "
               "sparsity (756 dense); HBM2e, 2.0 TB/s; PCIe 5.0 x16 (about 50 GB/s effective).",
               link_gbs=50.0, **_DESKTOP),
)}
ALIASES = {"agx-orin": "agx-orin-64gb", "orin": "agx-orin-64gb", "orin-nano": "orin-nano-8gb", "thor": "agx-thor",
           "4090": "rtx-4090", "h100": "h100-sxm", "xavier": "agx-xavier", "cpu": "this-cpu"}
DEVICE_NAMES = (*DEVICES, "this-cpu")


def measure_this_cpu(seconds: float = 0.5) -> DeviceSpec:
    """This CPU's peaks by micro-measurement: best numpy fp32 matmul GFLOP/s (all BLAS threads) and best
    single-thread copy GB/s (bytes read + bytes written, STREAM's convention), a few repeats each."""
    rng = np.random.default_rng(0)
    n = 512
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    src = np.ones(16 * 2**20, dtype=np.float32)  # 64 MiB: well past the last-level cache
    dst = np.empty_like(src)
    best_flops = best_copy = 0.0
    deadline = time.perf_counter() + seconds
    for i in range(50):
        t0 = time.perf_counter()
        a @ b
        best_flops = max(best_flops, 2 * n**3 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_copy = max(best_copy, 2 * src.nbytes / (time.perf_counter() - t0))
        if i >= 4 and time.perf_counter() > deadline:
            break
    tflops, gbs = best_flops / 1e12, best_copy / 1e9
    return DeviceSpec("this-cpu", "this CPU (measured)", {"fp32": tflops, "fp16": tflops}, gbs,
                      "micro-measured in this run: numpy fp32 matmul 512x512 (best of repeats) and a 64 MiB numpy copy "
                      "(read + write bytes); fp16 bundles on a CPU are assumed to run at the fp32 rate",
                      kind="cpu", host_copy_gbs=gbs, compute_efficiency=0.7, memory_efficiency=0.8, per_node_s=3e-6,
                      lookup_s=20e-6, measured={"matmul_gflops": best_flops / 1e9, "copy_gbs": gbs})


def get_device(name: str) -> DeviceSpec:
    """A device from :data:`DEVICES` (names and aliases, case and ``_``/space insensitive); ``this-cpu`` measures."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key == "this-cpu":
        return measure_this_cpu()
    if key not in DEVICES:
        raise EstimateError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_NAMES)} "
                            f"(aliases: {', '.join(sorted(ALIASES))})")
    return DEVICES[key]


def workload_from_bundle(bundle: Any) -> Workload:
    """A :class:`Workload` from a loaded :class:`~minireranker.runtime.bundle.Bundle` (tokenizer included)."""
    import tokenizers

    from ..template import VisionFirstTemplate

    m, spec = bundle.model, bundle.spec
    a, b = spec.band
    params = {name: int(g.get("parameters") or 0) for name, g in bundle.graphs.items()}
    guide = bundle.guide
    if guide and guide.get("kind") == "embedder":
        for name, g in guide.get("graphs", {}).items():
            params[f"embedder_{name}"] = int(g.get("parameters") or 0)
    template = VisionFirstTemplate(tokenizers.Tokenizer.from_file(str(bundle.path / "tokenizer.json")), spec)
    doc = template.document((1, 1), None)
    vision = m["vision"]
    pre = bundle.preprocess
    return Workload(
        name=str(bundle.path), precision=bundle.precision, hidden=m["hidden_size"],
        attention_width=m["num_attention_heads"] * m["head_dim"], kv_heads=m["num_kv_heads"],
        head_dim=m["head_dim"], band=(a, b), exit_layer=spec.exit_layer, keep_ratio=spec.keep_ratio,
        guide_layers=(guide["layer"] + 1) if guide and spec.keep_ratio < 1 else None,
        system_tokens=len(bundle.template["system_ids"]), query_overhead_tokens=len(template.query_text("")),
        doc_extra_tokens=len(doc.ids) - 1, params=params, vision_width=vision["hidden_size"],
        vision_depth=vision["depth"],
        merge_size=pre.merge_size, patch_factor=pre.factor, min_pixels=pre.min_pixels, max_pixels=pre.max_pixels,
        instruction_tokens=len(bundle.template["instruction_ids"]))


def qwen3_vl_2b_workload(spec: Any = None) -> Workload:
    """Qwen3-VL-2B's published shapes (hidden 2048, 28 layers, 16 heads, 8 KV heads of 128, MLP 6144; vision
    24 blocks of 1024, MLP 4096, 3 DeepStack mergers) under ``spec`` (default exact), fp16, for
    ``--estimate`` without a bundle. Parameter counts are computed from the shapes; the template's token
    counts (46 system, 24 around the query of which 17 are the instruction segment, 6 around an image) are
    estimates of Qwen's tokenizer on the default template, not read from it."""
    from ..spec import RerankSpec

    spec = (spec or RerankSpec.exact()).resolve(28)
    d, width, kv, hd, inter = 2048, 2048, 8, 128, 6144
    layer = decoder_layer_parameters(d, width // hd, kv, hd, inter, norms=False)
    a, b = spec.band
    e = spec.exit_layer
    vision = 24 * (4 * 1024**2 + 2 * 1024 * 4096) + 4 * (4096**2 + 4096 * d) + 3 * 2 * 16 * 16 * 1024
    guide = spec.guide_layer_for(28) + 1 if spec.keep_ratio < 1 else None
    params = {"vision": vision, "doc_prefix": (b + 1) * layer, **stage_parameters(layer, (a, b), e, head=3 * d)}
    if guide:
        params["guide"] = guide * layer
    return Workload("Qwen3-VL-2B (built-in shapes)", "fp16", d, width, kv, hd, (a, b), e, spec.keep_ratio, guide,
                    system_tokens=46, query_overhead_tokens=7, doc_extra_tokens=6, params=params,
                    vision_width=1024, vision_depth=24, merge_size=2, patch_factor=32, min_pixels=65536,
                    max_pixels=16777216, instruction_tokens=17)


def _stage(device: DeviceSpec, precision: str, cost: StageCost) -> dict:
    """One stage's seconds on ``device``: the roofline of its FLOPs and bytes, plus link, host and overheads."""
    peak = device.peak_tflops.get(precision, device.peak_tflops["fp32"]) * 1e12
    compute = cost.flops / (peak * device.compute_efficiency)
    memory = cost.device_bytes / (device.bandwidth_gbs * 1e9 * device.memory_efficiency)
    link = cost.link_bytes / (device.link_gbs * 1e9) if device.link_gbs else 0.0
    host = cost.host_bytes / (device.host_copy_gbs * 1e9)
    overhead = (cost.launched_layers * NODES_PER_LAYER * device.per_node_s + cost.lookups * device.lookup_s
                + cost.entries * device.entry_s)
    parts = {"compute": compute, "memory": memory, "link": link, "host": host, "overhead": overhead}
    bound = max(parts, key=parts.get) if any(parts.values()) else "none"
    return {"flops": cost.flops, "device_bytes": cost.device_bytes, "link_bytes": cost.link_bytes,
            "host_bytes": cost.host_bytes, "seconds": max(compute, memory) + link + host + overhead, "bound": bound,
            "terms_s": parts}


def predict(w: Workload, device: DeviceSpec, candidates: int, query_tokens: int, image_size: tuple[int, int],
            batch_size: int = 32, doc_tokens: float | None = None) -> dict[str, Any]:
    """Predicted seconds per stage for one query over ``candidates`` cached documents (warm), plus the cold
    case (none cached: ``index`` runs for each). Returns ``{"warm": {...}, "cold": {...}, "index_per_document"}``.

    ``doc_tokens`` (optional) is the kept tokens of one document's segment, measured (e.g. a mean over a
    data set, as ``minireranker calibrate`` does); by default it is derived from ``image_size``. The FLOPs
    and bytes are :mod:`.cost`'s; this function only divides them by the device's rates."""
    cost = rerank_cost(w, candidates, query_tokens, image_size, batch_size, doc_tokens, device.kind)
    stages = {name: _stage(device, w.precision, c) for name, c in cost.stages.items()}
    per_doc = _stage(device, w.precision, index_cost(w, image_size, device.kind))
    n = candidates
    cold = {k: dict(v) for k, v in stages.items()}
    cold["index"] = {**{k: per_doc[k] * n for k in ("flops", "device_bytes", "link_bytes", "host_bytes", "seconds")},
                     "bound": per_doc["bound"], "terms_s": {k: v * n for k, v in per_doc["terms_s"].items()}}
    return {"warm": _with_total(stages), "cold": _with_total(cold), "index_per_document": per_doc,
            "query_segment_tokens": cost.query_tokens, "doc_tokens_kept": cost.doc_tokens,
            "kv_bytes_per_query": cost.kv_bytes}


def _with_total(stages: dict[str, dict]) -> dict[str, Any]:
    return {"stages": stages, "total_s": sum(v["seconds"] for v in stages.values())}


def estimate(device: str | DeviceSpec, bundle: Any = None, candidates: tuple[int, ...] = (10, 100, 1000),
             query_tokens: tuple[int, ...] = (4, 16, 64), image_size: tuple[int, int] = (1024, 1024),
             batch_size: int = 32, spec: Any = None) -> dict[str, Any]:
    """Predicted latencies on ``device`` for each (candidates, query tokens); ``bundle`` is a path or a
    :class:`Bundle`, or None for Qwen3-VL-2B's built-in shapes under ``spec`` (default exact)."""
    from ..bundle import Bundle, load_bundle

    dev = device if isinstance(device, DeviceSpec) else get_device(device)
    if bundle is not None:
        w = workload_from_bundle(bundle if isinstance(bundle, Bundle) else load_bundle(bundle))
    else:
        w = qwen3_vl_2b_workload(spec)
    points = [{"candidates": n, "query_tokens": q, **predict(w, dev, n, q, image_size, batch_size)}
              for n in candidates for q in query_tokens]
    return {"device": asdict(dev), "workload": w.to_dict(), "image_size": list(image_size), "batch_size": batch_size,
            "model": MODEL_TEXT, "points": points}


MODEL_TEXT = (
    "per stage: max(FLOPs / (peak x compute_eff), device bytes / (bandwidth x memory_eff)) + PCIe bytes / link "
    "+ host bytes / host copy rate + graph calls x layers x 40 nodes x per-node overhead + candidates x (lookup + "
    "entry copy) overheads; "
    "FLOPs = 2 x params x tokens + 4 x query tokens x keys x attention width x layers; bytes = weights (once per "
    "batch) + K/V + activations")


def format_estimate(report: dict[str, Any]) -> str:
    """A table of predicted milliseconds per stage for each (candidates, query tokens), warm and cold."""
    dev = report["device"]
    lines = [f"estimate for {dev['label']} ({report['workload']['precision']}): peak "
             f"{dev['peak_tflops'].get(report['workload']['precision'], dev['peak_tflops']['fp32']):g} TFLOP/s, "
             f"{dev['bandwidth_gbs']:g} GB/s; efficiency compute {dev['compute_efficiency']:g}, memory "
             f"{dev['memory_efficiency']:g}", f"model: {report['model']}", f"source: {dev['source']}",
             f"{'cache':<5} {'cands':>6} {'qtok':>5} " + " ".join(f"{s:>11}" for s in STAGES)
             + f" {'total':>11}  bound"]
    for p in report["points"]:
        for cache in ("warm", "cold"):
            st = p[cache]["stages"]
            bound = max(st, key=lambda k: st[k]["seconds"])
            lines.append(f"{cache:<5} {p['candidates']:>6} {p['query_tokens']:>5} "
                         + " ".join(f"{1e3 * st[s]['seconds']:>11.3f}" for s in STAGES)
                         + f" {1e3 * p[cache]['total_s']:>11.3f}  {bound}:{st[bound]['bound']}")
    lines.append("(milliseconds; bound = slowest stage: its dominant term)")
    return "\n".join(lines)


def compare_with_estimate(profile: dict[str, Any], predicted: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured p50 beside the prediction for each run and stage; ratio = measured / predicted."""
    points = {(p["candidates"], p["query_tokens"]): p for p in predicted["points"]}
    rows = []
    for chain in profile["providers"]:
        for run in chain["runs"]:
            point = points.get((run["candidates"], run["query_tokens"]))
            if point is None or run["cache"] == "cold-page-cache":
                continue
            pred = point["warm" if run["cache"] == "warm" else "cold"]
            stages = {}
            for s in (*STAGES, "total"):
                measured = run["total"]["p50"] if s == "total" else run["stages"][s]["p50"]
                predicted_ms = 1e3 * (pred["total_s"] if s == "total" else pred["stages"][s]["seconds"])
                stages[s] = {"measured_p50_ms": measured, "predicted_ms": predicted_ms,
                             "ratio": measured / predicted_ms if predicted_ms > 0 else None}
            rows.append({"cache": run["cache"], "candidates": run["candidates"],
                         "query_tokens": run["query_tokens"], "stages": stages})
    return rows


def format_comparison(rows: list[dict[str, Any]] | None) -> str:
    """Measured p50 / predicted (ms) per stage, side by side, for the local estimate."""
    if not rows:
        return ""
    lines = ["measured p50 vs predicted for this CPU (ms: measured / predicted = ratio)",
             f"{'cache':<15} {'cands':>6} {'qtok':>5}  " + "  ".join(f"{s:>24}" for s in (*STAGES, "total"))]
    for row in rows:
        cells = []
        for s in (*STAGES, "total"):
            c = row["stages"][s]
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
            cells.append(f"{c['measured_p50_ms']:.3f}/{c['predicted_ms']:.3f}={ratio}".rjust(24))
        lines.append(f"{row['cache']:<15} {row['candidates']:>6} {row['query_tokens']:>5}  " + "  ".join(cells))
    return "\n".join(lines)
