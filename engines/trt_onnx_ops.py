"""Which ONNX operators TensorRT's ONNX parser takes, by TensorRT version, and a check of graphs against them.

Checked without TensorRT: what a graph asks of the parser (its operator types, its opset, the inputs the
parser needs as build-time constants), after :func:`sanitize` has folded its constants as a TensorRT build
would (polygraphy's ``FoldConstants``). Whether a layer then builds for given shapes is TensorRT's to say.

Source: the "Operator Support Matrix" of ``docs/operators.md`` in github.com/onnx/onnx-tensorrt (its rows
marked ``Y``) at the parser commit each TensorRT release pins (the ``parsers/onnx`` submodule of
github.com/NVIDIA/TensorRT at the release tag):

* TensorRT 10.3 (tag v10.3.0, 2024-08-08): onnx-tensorrt 62bdde2a04fcd53c2409cb895ee18db445b7e755. That
  commit's table could not be read here, so :data:`TRT_10_3` holds the rows of the last table that could,
  96e781103cfc4adf4a6bb557e94bac8e693f6f4c (10.1 GA, 2024-06-17; 196 rows, 150 Y): docs/Changelog.md adds
  no operator in 10.2 or 10.3 (10.3 only lets Slice take tensor ``axes``), and the 10.6 table
  (0137504e2b25fe5253bd85d26b073378fb67805b) adds exactly 10.4's three windows and 10.5's STFT to it.
* TensorRT 10.14 (tag v10.14, 2025-11-07): c72727708d4ed8a379c04c4ea235c157ce9c3870 (197 rows, 155 Y), the
  first release with ``Attention`` (Changelog 10.14: "Added support for the Attention operator").
* TensorRT 10.15 (tag v10.15, 2026-02-03): fa5aa9f61e7781d2ca8f5351d42c1f19525a6124 (200 rows, 158 Y); adds
  ``RMSNormalization``, ``RotaryEmbedding`` and ``TensorScatter``.

Restrictions in those tables that bear on the exported graphs (types: the "Supported Types" column):

* Opsets: the 10.1 table says 9 to 20, the 10.14 and 10.15 tables 9 to 24 (:data:`MAX_OPSET`).
* TensorRT 10 has INT64 and BOOL: Where, Cast, Concat, Gather, Expand, Reshape, (Un)Squeeze, Shape, Trilu
  take BOOL and INT64; Equal, Less, Greater, Add, Sub, Mul, Div, Max, Min take INT32/INT64 but not BOOL;
  And, Or, Not take BOOL only; Pow takes floats only before 10.12; MatMul, Softmax, Exp, Sqrt, Erf, Gemm,
  LayerNormalization take FP32/FP16/BF16 only.
* Build-time constants (:data:`CONSTANT_INPUTS`): ``axes`` of every Reduce* (an initializer), of Squeeze
  and Unsqueeze; CumSum's ``axis``; OneHot's ``depth``. ``axes`` is an input from opset 13 for ReduceSum,
  Squeeze and Unsqueeze, from opset 18 for the other Reduce* (an attribute before).
* Attention (10.14 on): Q, K, V and ``attn_mask`` 4D; no ``past_key``, ``past_value`` or
  ``nonpad_kv_seqlen`` input; one output; ``qk_matmul_output_mode`` and ``softcap`` unsupported.
* LayerNormalization: only its first output. TopK: ``sorted`` 1 and K < 3840. ScatterND: no reduction.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Union

from .errors import EngineError

if TYPE_CHECKING:
    import onnx

# The rows marked Y of the table the 10.3 parser ships with (see the module docstring); 150 operators.
TRT_10_3: frozenset[str] = frozenset("""
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
    ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# 10.14's Y rows: 10.3's, the 10.4 windows, the 10.5 STFT and Attention (155; checked row by row).
TRT_10_14: frozenset[str] = TRT_10_3 | {"Attention", "BlackmanWindow", "HammingWindow", "HannWindow", "STFT"}
# 10.15's Y rows (158).
TRT_10_15: frozenset[str] = TRT_10_14 | {"RMSNormalization", "RotaryEmbedding", "TensorScatter"}

SUPPORTED_OPS: dict[str, frozenset[str]] = {"10.3": TRT_10_3, "10.14": TRT_10_14, "10.15": TRT_10_15}
MAX_OPSET: dict[str, int] = {"10.3": 20, "10.14": 24, "10.15": 24}
# op type -> index of the input the parser needs as a build-time constant (every version above)
CONSTANT_INPUTS: dict[str, int] = dict.fromkeys(
    ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
     "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze", "CumSum", "OneHot"), 1)
_ONNX_DOMAINS = ("", "ai.onnx")

ModelOrPath = Union["onnx.ModelProto", str, Path]


def _supported(trt_version: str) -> frozenset[str]:
    if trt_version not in SUPPORTED_OPS:
        raise EngineError(f"no ONNX operator table for TensorRT {trt_version!r}; "
                          f"choose one of {list(SUPPORTED_OPS)}")
    return SUPPORTED_OPS[trt_version]


def _load(model_or_path: ModelOrPath) -> "onnx.ModelProto":
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return onnx.load(str(model_or_path), load_external_data=False)  # node types only: the weights can stay


def _nodes(graph) -> Iterable:
    """Every node of ``graph`` and of the subgraphs its nodes hold (If, Loop, Scan bodies), depth first."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def _all_nodes(model: "onnx.ModelProto") -> Iterable:
    """The main graph's nodes and every local function's body; a call of a local function is not a node
    TensorRT parses (it imports the body), so the call itself is left out."""
    local = {(f.domain, f.name) for f in model.functions}
    for node in _nodes(model.graph):
        if (node.domain, node.op_type) not in local:
            yield node
    for function in model.functions:
        for node in _nodes(function):
            if (node.domain, node.op_type) not in local:
                yield node


def op_census(model_or_path: ModelOrPath) -> dict[str, int]:
    """Op type -> number of nodes, over the graph, its subgraphs and local functions; ops of another domain
    than ONNX's are named ``domain::type``."""
    counts: Counter[str] = Counter()
    for node in _all_nodes(_load(model_or_path)):
        counts[node.op_type if node.domain in _ONNX_DOMAINS else f"{node.domain}::{node.op_type}"] += 1
    return dict(sorted(counts.items()))


def unsupported_ops(model_or_path: ModelOrPath, trt_version: str) -> dict[str, int]:
    """The ops of a graph that TensorRT ``trt_version``'s ONNX parser does not list, with their node counts
    (op type -> count; ops of a custom domain as ``domain::type``, all unsupported). Run it on a
    :func:`sanitize`-d graph: a constant subgraph TensorRT folds away need not be supported."""
    supported = _supported(trt_version)
    return {op: n for op, n in op_census(model_or_path).items() if op not in supported}


def opset_too_new(model_or_path: ModelOrPath, trt_version: str) -> int | None:
    """The graph's ONNX opset when it is past what ``trt_version``'s table covers, else None."""
    _supported(trt_version)
    model = _load(model_or_path)
    opset = max((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), default=0)
    return opset if opset > MAX_OPSET[trt_version] else None


def nonconstant_inputs(model_or_path: ModelOrPath) -> dict[str, int]:
    """Op type -> nodes whose :data:`CONSTANT_INPUTS` input (an ``axes``, ``axis`` or ``depth``) is computed
    at run time, which the parser refuses. Constants mean initializers and Constant nodes' outputs."""
    model = _load(model_or_path)
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    counts: Counter[str] = Counter()
    for node in _all_nodes(model):
        index = CONSTANT_INPUTS.get(node.op_type) if node.domain in _ONNX_DOMAINS else None
        name = node.input[index] if index is not None and len(node.input) > index else ""
        if name and name not in constants:
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))


def sanitize(path: str | Path) -> "onnx.ModelProto":
    """The graph at ``path`` with its local functions inlined and its constants folded by polygraphy
    (``FoldConstants``, errors raised, shapes inferred between passes), as ``polygraphy surgeon sanitize
    --fold-constants`` does. Its weights are held in memory: save it with external data past 2 GB. A graph
    whose shapes cannot all be inferred (a custom-domain node) makes ONNX Runtime's symbolic shape inference
    write ``sym_shape_infer_temp.onnx`` into the working directory: run it from a scratch one."""
    import importlib.util

    missing = [m for m in ("onnx", "polygraphy", "onnx_graphsurgeon") if importlib.util.find_spec(m) is None]
    if missing:  # polygraphy imports graphsurgeon (its folding engine) only once folding starts
        raise EngineError(f"sanitizing ONNX graphs needs {', '.join(missing)}: "
                          "pip install onnx polygraphy onnx-graphsurgeon")
    from onnx import inliner
    from polygraphy.backend.onnx import fold_constants, onnx_from_path
    from polygraphy.logger import G_LOGGER

    model = onnx_from_path(str(path))  # with the external data beside the file
    if model.functions:  # the dynamo exporter may emit them: inlined, folding and the census see their bodies
        model = inliner.inline_local_functions(model)
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        return fold_constants(model, error_ok=False)
