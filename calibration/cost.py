"""Cost per query of a spec from the checkpoint's shapes, by the runtime's cost model (``runtime/profiling/cost.py``).

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
from ..runtime.profiling.cost import Workload, decoder_layer_parameters, rerank_cost, stage_parameters


def layer_parameters(config: ModelConfig) -> int:
    """Parameters of one decoder layer: attention projections, q/k norms, gated MLP, two RMS norms."""
    t = config.text
    return decoder_layer_parameters(t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.intermediate_size)


@dataclass(frozen=True)
class CostInputs:
    """What the cost model needs of a data set: token counts (means) and the candidate count."""

    system_tokens: int
    query_tokens: float         # the whole query segment (template + text), mean
    candidates: int
    precision: str = "fp16"
    instruction_tokens: int = 0  # the instruction segment, cached with each document (keys of layers 0..E)


def spec_workload(config: ModelConfig, inputs: CostInputs, exit_layer: int, band: tuple[int, int]) -> Workload:
    """The cost model's :class:`Workload` of one swept spec: parameters per stage from the config's shapes,
    the query segment counted whole (no template overhead on top), no pruning guide (the sweep measures the
    kept tokens itself and passes them as ``doc_tokens``)."""
    t = config.text
    params = stage_parameters(layer_parameters(config), band, exit_layer, head=3 * t.hidden_size)
    return Workload(
        name="calibration", precision=inputs.precision, hidden=t.hidden_size,
        attention_width=t.num_heads * t.head_dim, kv_heads=t.num_kv_heads, head_dim=t.head_dim, band=band,
        exit_layer=exit_layer, keep_ratio=1.0, guide_layers=None, system_tokens=inputs.system_tokens,
        query_overhead_tokens=0, doc_extra_tokens=0, params=params, vision_width=config.vision.hidden_size,
        vision_depth=config.vision.depth, merge_size=config.vision.spatial_merge_size,
        patch_factor=config.vision.patch_size * config.vision.spatial_merge_size, min_pixels=1, max_pixels=1 << 24,
        instruction_tokens=inputs.instruction_tokens)


def query_cost(config: ModelConfig, inputs: CostInputs, exit_layer: int, band: tuple[int, int],
               doc_tokens: float) -> dict[str, float]:
    """``{"flops_per_query", "kv_bytes_per_query", "doc_tokens"}`` of one spec (see the module docstring)."""
    w = spec_workload(config, inputs, exit_layer, band)
    cost = rerank_cost(w, inputs.candidates, math.ceil(inputs.query_tokens), doc_tokens=doc_tokens)
    return {"flops_per_query": float(cost.flops_per_query), "kv_bytes_per_query": float(cost.kv_bytes),
            "doc_tokens": float(doc_tokens)}
