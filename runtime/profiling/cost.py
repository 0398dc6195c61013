"""The cost model: FLOPs and bytes of each stage of a rerank, from a model's shapes and a spec (torch-free).

The one place work is counted. The roofline estimate (:func:`.estimate.predict`) turns these figures into
seconds on a device; calibration (:func:`minireranker.calibration.cost.query_cost`) ranks specs by their
FLOPs and K/V bytes per query; the bench (:func:`minireranker.calibration.bench.harness.warm_rerank_flops`)
sets a warm rerank's FLOPs against this machine's GEMM rate. Each builds a :class:`Workload` (from a
bundle, a checkpoint's config or a tiny preset) and asks this module::

    FLOPs  = 2 x parameters x tokens (every weight is one multiply-add per token)
           + 4 x query_tokens x keys x attention_width x layers (QK^T and AV; causal halves the self part)
           (the exit layer runs the last row only, but for its K and V projections of every row)
    bytes  = weights read (once per graph call, so once per batch) + K/V read + activations
             (tokens x layers x ACTIVATION_WIDTHS x hidden x bytes per value)

Stages (those of ``Reranker.rerank``'s ``timings``), for one query of ``q`` segment tokens over ``N``
cached candidates of ``T`` kept tokens each, system segment ``S`` tokens, instruction segment ``I``
tokens (cached with each document for layers A..E), attention width ``W``::

    query_head  layers 0..A-1, once per query          2 P_qh q + 4 q (S + I + q/2) W A
    kv_lookup   open + mmap + header of each entry     N lookups
    kv_read     numpy copies into the padded batch     2 x N x (T + I x (E-A+1)/(B-A+1)) x K/V bytes per
                                                       token, N entries
    band        layers A..B, batched over candidates   2 P_band N q + 4 N q (S + T + I + q/2) W (B-A+1)
    tail        layers B+1..E, final norm, yes/no rows 2 N (P_tail q - (P_l - P_kv)(q - 1))
                                                       + 4 N W ((E-B-1) q (S + I + q/2) + S + I + q)
    index       vision tower, pruning guide, document prefix and the instruction after it

``P_*`` are the parameters each stage's graph multiplies by every token (``Workload.params``); ``P_l`` one
decoder layer's (``P_band / (B-A+1)``), ``P_kv`` its K and V projections.
Where the memory sits changes the byte terms only: ``memory="gpu"`` (discrete: K/V crosses the link),
``"jetson"`` (unified: a host buffer is copied to a device buffer in the same DRAM) or ``"cpu"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

ACTIVATION_WIDTHS = 10   # activation tensors of width ~hidden written and read per layer per token
STAGES = ("query_head", "kv_lookup", "index", "kv_read", "band", "tail")


def decoder_layer_parameters(hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                             norms: bool = True) -> int:
    """Parameters of one decoder layer: q, k, v, o projections and the gated MLP, plus (``norms``) the
    q/k norms and the two RMS norms."""
    linear = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    return linear + 2 * head_dim + 2 * hidden if norms else linear


def stage_parameters(layer: int, band: tuple[int, int], exit_layer: int, head: int = 0) -> dict[str, int]:
    """Parameters of the warm stages' graphs for decoder layers of ``layer`` parameters each: the query head
    holds layers 0..A-1, the band A..B, the tail B+1..E plus ``head`` (final norm and yes/no rows)."""
    a, b = band
    return {"query_head": a * layer, "band": (b - a + 1) * layer, "tail": (exit_layer - b) * layer + head}


@dataclass(frozen=True)
class Workload:
    """What the cost model needs of a model and spec: dims, parameters per graph, token counts."""

    name: str
    precision: str
    hidden: int
    attention_width: int          # Hq x head_dim
    kv_heads: int
    head_dim: int
    band: tuple[int, int]
    exit_layer: int
    keep_ratio: float
    guide_layers: int | None      # layers the pruning guide runs (None: no pruning)
    system_tokens: int
    query_overhead_tokens: int    # template tokens around the user's query
    doc_extra_tokens: int         # non-image tokens of an image document's segment
    params: dict[str, int]        # graph -> parameters (vision, guide, doc_prefix, query_head, band, tail)
    vision_width: int
    vision_depth: int
    merge_size: int
    patch_factor: int             # patch_size x merge_size: pixels per merged token side
    min_pixels: int
    max_pixels: int
    instruction_tokens: int = 0   # the instruction segment, cached with each document (layers A..E)

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.precision == "fp16" else 4

    @property
    def kv_bytes_per_token(self) -> int:
        a, b = self.band
        return (b - a + 1) * 2 * self.kv_heads * self.head_dim * self.bytes_per_value

    @property
    def instruction_kv_bytes(self) -> int:
        """K/V bytes of one document's instruction segment (layers A..E), read with its entry."""
        return (self.exit_layer - self.band[0] + 1) * 2 * self.kv_heads * self.head_dim * self.bytes_per_value \
            * self.instruction_tokens

    def image_tokens(self, width: int, height: int) -> int:
        """Merged tokens of an image of ``width`` x ``height`` after the bundle's resize."""
        from ..preprocess import smart_resize

        h, w = smart_resize(height, width, self.patch_factor, self.min_pixels, self.max_pixels)
        return (h // self.patch_factor) * (w // self.patch_factor)

    def kept_doc_tokens(self, image_size: tuple[int, int]) -> int:
        """Tokens of one image document's segment after pruning (``ceil(keep x image) + text``)."""
        n_img = self.image_tokens(*image_size)
        return (n_img if self.guide_layers is None else max(1, math.ceil(self.keep_ratio * n_img))) \
            + self.doc_extra_tokens

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kv_bytes_per_token"] = self.kv_bytes_per_token
        return out


@dataclass(frozen=True)
class StageCost:
    """The work of one stage, device-free: what :func:`.estimate.predict` divides by a device's rates."""

    flops: float = 0.0
    device_bytes: float = 0.0     # read and written in the memory the graphs run in
    link_bytes: float = 0.0       # over PCIe to a discrete GPU
    host_bytes: float = 0.0       # numpy copies on the host CPU
    launched_layers: float = 0.0  # graph calls x layers (each launches the layer's ONNX nodes)
    lookups: int = 0              # K/V entries opened
    entries: int = 0              # K/V entries copied into a batch


@dataclass(frozen=True)
class RerankCost:
    """Every stage of one warm rerank (``index`` zero: the candidates are cached) and its token counts."""

    stages: dict[str, StageCost]
    query_tokens: int             # the query segment: template + the user's query
    doc_tokens: float             # kept tokens of one candidate's segment
    kv_bytes: float               # K/V bytes the band reads per query

    @property
    def flops_per_query(self) -> float:
        """FLOPs of the stages a warm rerank runs: query head, band and tail."""
        return sum(self.stages[s].flops for s in ("query_head", "band", "tail"))


def warm_flops(w: Workload, candidates: int, query_tokens: float, doc_tokens: float,
               last_token_rows: int = 0) -> dict[str, float]:
    """FLOPs of ``query_head``, ``band`` and ``tail`` for one query of ``query_tokens`` segment tokens
    over ``candidates`` cached documents of ``doc_tokens`` each.

    ``last_token_rows``: score-head rows (of width ``hidden``) applied to each candidate's last token only,
    for a count whose ``params["tail"]`` leaves them out (the bench's); 0 where the tail holds them."""
    a, b = w.band
    nb, nt = b - a + 1, w.exit_layer - b
    p, aw, n, q, t = w.params, w.attention_width, candidates, query_tokens, doc_tokens
    s = w.system_tokens + w.instruction_tokens  # keys every query row sees besides the document and itself
    head = 2 * p.get("query_head", 0) * q + 4 * q * (s + q / 2) * aw * a if a > 0 else 0.0
    tail = 2 * p.get("tail", 0) * n * q + 4 * n * q * (s + q / 2) * aw * nt
    if nt:  # the exit layer: every row's K and V projections, the rest (and the attention) for the last row
        skipped = p.get("band", 0) / nb - 2 * w.hidden * w.kv_heads * w.head_dim
        tail -= 2 * n * skipped * (q - 1) + 4 * n * aw * (q * (s + q / 2) - (s + q))
    if last_token_rows:
        tail += n * 2 * last_token_rows * w.hidden
    return {"query_head": head, "band": 2 * p.get("band", 0) * n * q + 4 * n * q * (s + t + q / 2) * aw * nb,
            "tail": tail}


def rerank_cost(w: Workload, candidates: int, query_tokens: int, image_size: tuple[int, int] | None = None,
                batch_size: int = 32, doc_tokens: float | None = None, memory: str = "cpu") -> RerankCost:
    """Each stage's work for one query of ``query_tokens`` (the user's; the template's are added) over
    ``candidates`` cached documents. ``doc_tokens`` (kept tokens of one segment, e.g. a measured mean)
    or else ``image_size`` gives the candidates' length."""
    bv, kvb = w.bytes_per_value, w.kv_bytes_per_token
    a, b = w.band
    nb, nt = b - a + 1, w.exit_layer - b
    q = query_tokens + w.query_overhead_tokens
    t = doc_tokens if doc_tokens is not None else w.kept_doc_tokens(image_size)
    n, calls = candidates, math.ceil(candidates / batch_size)
    p, d = w.params, w.hidden
    sys_kv = 2 * w.system_tokens * w.kv_heads * w.head_dim * bv  # one layer of the system segment's K + V
    if a > 0:  # the query head also reads the instruction's K/V of layers 0..A-1, stored once per bundle
        sys_kv_head = sys_kv + 2 * w.instruction_tokens * w.kv_heads * w.head_dim * bv
    else:
        sys_kv_head = sys_kv
    flops = warm_flops(w, n, q, t)
    stages: dict[str, StageCost] = {}
    if a > 0:
        stages["query_head"] = StageCost(
            flops["query_head"], p.get("query_head", 0) * bv + a * sys_kv_head + q * a * ACTIVATION_WIDTHS * d * bv,
            launched_layers=a)
    else:  # no graph: the query's embedding rows only
        stages["query_head"] = StageCost(host_bytes=q * d * bv)
    stages["kv_lookup"] = StageCost(lookups=n)
    stages["index"] = StageCost()
    kv = n * (t * kvb + w.instruction_kv_bytes)  # each entry: the document's K/V and its instruction's
    stages["kv_read"] = StageCost(host_bytes=2 * kv, entries=n)  # mmap'd pages -> batch
    copy_in = kv if memory == "gpu" else 0
    unified_copy = 2 * kv if memory == "jetson" else 0  # host buffer -> device buffer in the same DRAM
    stages["band"] = StageCost(
        flops["band"], p.get("band", 0) * bv * calls + kv + unified_copy + nb * sys_kv * calls
        + n * q * nb * ACTIVATION_WIDTHS * d * bv, link_bytes=copy_in, launched_layers=nb * calls)
    stages["tail"] = StageCost(
        flops["tail"], p.get("tail", 0) * bv * calls + nt * sys_kv * calls
        + n * q * max(nt, 1) * ACTIVATION_WIDTHS * d * bv, launched_layers=max(nt, 1) * calls)
    return RerankCost(stages, q, t, kv)


def index_cost(w: Workload, image_size: tuple[int, int], memory: str = "cpu") -> StageCost:
    """One document through preprocessing, vision, the guide (pruning) and the document prefix."""
    bv, n_img = w.bytes_per_value, w.image_tokens(*image_size)
    patches = n_img * w.merge_size**2
    full = n_img + w.doc_extra_tokens
    kept = w.kept_doc_tokens(image_size)
    b = w.band[1]
    p = w.params
    vision_params = p.get("vision", 0) + p.get("embedder_vision", 0)
    flops = 2 * vision_params * patches + 4 * patches**2 * w.vision_width * w.vision_depth
    layers = w.vision_depth + b + 1
    act = patches * w.vision_depth * ACTIVATION_WIDTHS * w.vision_width * bv
    if w.guide_layers:
        g = w.guide_layers
        flops += 2 * (p.get("guide", 0) + p.get("embedder_guide", 0)) * full
        flops += 4 * full * (w.system_tokens + full / 2) * w.attention_width * g
        act += full * g * ACTIVATION_WIDTHS * w.hidden * bv
        layers += g
    flops += 2 * p.get("doc_prefix", 0) * kept + 4 * kept * (w.system_tokens + kept / 2) * w.attention_width * (b + 1)
    act += kept * (b + 1) * ACTIVATION_WIDTHS * w.hidden * bv
    i, first, e = w.instruction_tokens, w.band[0], w.exit_layer
    if i:  # the instruction after the document: layers A..B see it, B+1..E the system segment only
        layer = p.get("band", 0) / (b - first + 1)
        flops += 2 * layer * i * (e - first + 1) + 4 * i * w.attention_width * (
            (w.system_tokens + kept + i / 2) * (b - first + 1) + (w.system_tokens + i / 2) * (e - b))
        act += i * (e - first + 1) * ACTIVATION_WIDTHS * w.hidden * bv
    weights = (vision_params + p.get("guide", 0) + p.get("embedder_guide", 0) + p.get("doc_prefix", 0)) * bv
    out_kv = kept * w.kv_bytes_per_token + w.instruction_kv_bytes
    link = (patches * 3 * 2 * 16 * 16 * 4 + out_kv) if memory == "gpu" else 0
    host = image_size[0] * image_size[1] * 3 * 4 * 6 + out_kv  # resize, normalise, patchify (float32 passes)
    return StageCost(flops, weights + act + out_kv, link, host, layers)
