"""Cost per query of a spec, from the checkpoint's shapes: :mod:`minireranker.runtime.profiling.estimate`'s model.

For one query over ``N`` cached candidates (warm: indexing is paid once per document, not per query)::

    FLOPs/query = query_head + band + tail, with (2 x parameters x tokens + attention) per stage:
      query_head  2 P_layer A q + 4 q (S + q/2) W A                      (once per query; 0 when A = 0)
      band        N [2 P_layer (B-A+1) q + 4 q (S + T + q/2) W (B-A+1)]  (each candidate's K/V)
      tail        N [2 (P_layer (E-B) + 3 D) q + 4 q (S + q/2) W (E-B)]  (system K/V only; norm + yes/no rows)
    K/V bytes/query = N x T x (B-A+1) x 2 x Hkv x d x bytes per value

``P_layer`` = parameters of one decoder layer (q, k, v, o projections, the MLP, four norms); ``q`` = the
query segment's tokens (template + query text; mean over the set); ``S`` = system tokens; ``T`` = kept
tokens of one document segment (mean over the set after pruning: ``ceil(keep x visual) + text``);
``W`` = attention width (heads x head dim); ``D`` = hidden size. Bytes use the deployment precision
(fp16 by default). Index-time cost (vision tower, guide, document prefix) is not per query and is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..export.config import ModelConfig
from ..runtime.profiling.estimate import DEVICES, Workload, predict


def layer_parameters(config: ModelConfig) -> int:
    """Parameters of one decoder layer: attention projections, q/k norms, gated MLP, two RMS norms."""
    t = config.text
    q, kv = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    return 2 * t.hidden_size * q + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size \
        + 2 * t.head_dim + 2 * t.hidden_size


@dataclass(frozen=True)
class CostInputs:
    """What the cost model needs of a data set: token counts (means) and the candidate count."""

    system_tokens: int
    query_tokens: float         # the whole query segment (template + text), mean
    candidates: int
    precision: str = "fp16"


def query_cost(config: ModelConfig, inputs: CostInputs, exit_layer: int, band: tuple[int, int],
               doc_tokens: float) -> dict[str, float]:
    """``{"flops_per_query", "kv_bytes_per_query", "doc_tokens"}`` of one spec (see the module docstring)."""
    t = config.text
    a, b = band
    layer = layer_parameters(config)
    params = {"query_head": a * layer, "band": (b - a + 1) * layer, "tail": (exit_layer - b) * layer + 3 * t.hidden_size}
    w = Workload(
        name="calibration", precision=inputs.precision, hidden=t.hidden_size,
        attention_width=t.num_heads * t.head_dim, kv_heads=t.num_kv_heads, head_dim=t.head_dim, band=band,
        exit_layer=exit_layer, keep_ratio=1.0, guide_layers=None, system_tokens=inputs.system_tokens,
        query_overhead_tokens=0, doc_extra_tokens=0, params=params, vision_width=config.vision.hidden_size,
        vision_depth=config.vision.depth, merge_size=config.vision.spatial_merge_size,
        patch_factor=config.vision.patch_size * config.vision.spatial_merge_size, min_pixels=1, max_pixels=1 << 24)
    # predict() wants a device for its seconds; FLOPs and bytes do not depend on which one
    out = predict(w, DEVICES["agx-orin-64gb"], inputs.candidates, math.ceil(inputs.query_tokens), (64, 64),
                  doc_tokens=doc_tokens)
    stages = out["warm"]["stages"]
    flops = sum(stages[s]["flops"] for s in ("query_head", "band", "tail"))
    return {"flops_per_query": float(flops), "kv_bytes_per_query": float(out["kv_bytes_per_query"]),
            "doc_tokens": float(doc_tokens)}
