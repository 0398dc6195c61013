"""Fix-ups that keep an exported graph within what the TensorRT release of its attention form parses.

The fused form (dynamo exporter, opset 23) targets TensorRT 10.14, the first release whose ONNX parser
imports ``Attention`` (engines/trt_onnx_ops.py). The exporter's default optimizer (onnxscript's opset-23
fusions) also rewrites the hand-written RMSNorm (export/modeling.py) into ``RMSNormalization``, which the
parser lists only from 10.15. :func:`decompose_rmsnorm` writes each such node back as the basic ops it
stands for, in float32 as the node computes (``stash_type`` 1) and as modeling.RMSNorm does::

    X ─Cast(float)─▶ x ─Mul(x, x)─ReduceMean(axis, keepdims)─Add(eps)─Sqrt─▶ r
    x ─Div(r)─CastLike(scale)─Mul(scale)─▶ Y

(Exporting without the optimizer is no way out: the unoptimized graph holds SplitToSequence and SequenceAt,
which no TensorRT parses.) The build validates the result against the torch reference like any graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def decompose_rmsnorm(model: "onnx.ModelProto") -> int:
    """Replace every ``RMSNormalization`` node of the main graph in place; returns how many were replaced."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    graph, nodes, count = model.graph, [], 0
    for node in graph.node:
        if node.op_type != "RMSNormalization" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("stash_type", 1) != 1:
            raise ValueError(f"RMSNormalization node {node.name!r} has stash_type {attrs['stash_type']}, not 1")
        x, scale = node.input[0], node.input[1]
        p = f"{node.name or node.output[0]}/rms"
        axes, eps = f"{p}/axes", f"{p}/eps"
        graph.initializer.extend([numpy_helper.from_array(np.array([attrs.get("axis", -1)], np.int64), axes),
                                  numpy_helper.from_array(np.array(attrs.get("epsilon", 1e-5), np.float32), eps)])
        nodes += [helper.make_node("Cast", [x], [f"{p}/x"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{p}/x", f"{p}/x"], [f"{p}/sq"]),
                  helper.make_node("ReduceMean", [f"{p}/sq", axes], [f"{p}/mean"], keepdims=1),
                  helper.make_node("Add", [f"{p}/mean", eps], [f"{p}/var"]),
                  helper.make_node("Sqrt", [f"{p}/var"], [f"{p}/rms"]),
                  helper.make_node("Div", [f"{p}/x", f"{p}/rms"], [f"{p}/normed"]),
                  helper.make_node("CastLike", [f"{p}/normed", scale], [f"{p}/cast"]),
                  helper.make_node("Mul", [f"{p}/cast", scale], list(node.output))]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count
