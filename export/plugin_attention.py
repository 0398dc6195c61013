"""The band's attention as one custom-domain ONNX node (the "plugin" attention form), and a CPU implementation
of that node for validation.

::

    band graph, layer j of A..B (BandGraph with plugin=True, export/graphs.py):

    doc_mask [N, T] ─Cast int32─ReduceSum─▶ doc_lens [N]
    q [N, Hq, Q, d], system_k/v [Hkv, S, d], doc_k/v [N, Hkv, T, d], doc_lens,
    instruction_k/v [N, Hkv, I, d], own_k/v [N, Hkv, Q, d] ─▶ minireranker.BandAttention ─▶ [N, Hq, Q, d]
                                                               attributes: scale (float) = 1/sqrt(d),
                                                               num_kv_heads (int) = Hkv

The node's inputs are in the order of ``engines/band_attention.py``'s ``band_attention_reference`` (the
TensorRT plugin's, engines/band_plugin.py). Keys < doc_lens[n] of row n are real and the rest padding;
the own keys are causal; one softmax over the four segments.

* :func:`register_symbolic`: TorchScript-exporter (opset 17) symbolic of the torch op
  ``minireranker::band_attention`` (export/modeling.py), writing the node above;
* :class:`PluginCpuRunner` and :func:`plugin_graph_opener`: ONNX Runtime on the CPU with the node computed
  by ``band_attention_reference`` (numpy, float64) as an onnxruntime-extensions Python op. For validation
  and tests only: onnxruntime-extensions is imported when a runner is made, and missing it raises
  :class:`BuildError` naming what to install. Its Python ops take no float16, so an fp16 graph is run
  with Casts to float32 around each node (the rest of the graph stays fp16).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..engines import BaseRunner
from ..engines.band_attention import band_attention_reference
from ..engines.onnxrt import OnnxRuntimeRunner
from .build_config import BuildError

DOMAIN = "minireranker"
OP_TYPE = "BandAttention"
DOMAIN_VERSION = 1
TORCH_OP = "minireranker::band_attention"
INPUTS = ("q", "system_k", "system_v", "doc_k", "doc_v", "doc_lens", "instruction_k", "instruction_v", "own_k",
          "own_v")
NO_EXTENSIONS = ("validating the plugin attention form needs onnxruntime-extensions (a Python implementation of "
                 "the minireranker.BandAttention node for ONNX Runtime on the CPU): pip install onnxruntime-extensions, "
                 "or build with --no-validate")


@functools.cache
def register_symbolic() -> None:
    """Teach the TorchScript exporter (opset 17) to write ``minireranker::band_attention`` as one node."""
    import torch
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args(*"v" * len(INPUTS), "f", "i")
    def symbolic(g, q, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k, instruction_v, own_k, own_v,
                 scale, num_kv_heads):
        out = g.op(f"{DOMAIN}::{OP_TYPE}", q, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k,
                   instruction_v, own_k, own_v, scale_f=scale, num_kv_heads_i=num_kv_heads)
        out.setType(q.type())
        return out

    torch.onnx.register_custom_op_symbolic(TORCH_OP, symbolic, 17)


def band_attention_node(q: np.ndarray, system_k: np.ndarray, system_v: np.ndarray, doc_k: np.ndarray,
                        doc_v: np.ndarray, doc_lens: np.ndarray, instruction_k: np.ndarray,
                        instruction_v: np.ndarray, own_k: np.ndarray, own_v: np.ndarray, scale: float,
                        num_kv_heads: int) -> np.ndarray:
    """What one ``minireranker.BandAttention`` node computes, float32 out; checks the attributes against the
    inputs (the reference, like the kernel, scales by 1/sqrt(d) and reads Hkv from the K/V)."""
    d, hkv = q.shape[-1], own_k.shape[1]
    if num_kv_heads != hkv or not math.isclose(scale, 1.0 / math.sqrt(d), rel_tol=1e-6):
        raise ValueError(f"{DOMAIN}.{OP_TYPE}: attributes scale={scale}, num_kv_heads={num_kv_heads} do not fit "
                         f"head dim {d} and {hkv} K/V heads")
    return band_attention_reference(q, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k, instruction_v,
                                    own_k, own_v).astype(np.float32)


@functools.cache
def _extensions_library() -> str:
    """The onnxruntime-extensions library path, with the node's Python implementation registered once."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise BuildError(NO_EXTENSIONS) from None
    f, i32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32
    onnx_op(op_type=f"{DOMAIN}::{OP_TYPE}", inputs=[f] * 5 + [i32] + [f] * 4, outputs=[f],
            attrs={"scale": PyCustomOpDef.dt_float, "num_kv_heads": PyCustomOpDef.dt_int64})(band_attention_node)
    return get_library_path()


def has_plugin_node(path: str | Path) -> bool:
    """Whether the ONNX graph at ``path`` holds a ``minireranker.BandAttention`` node."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)


def _fp32_around_nodes(path: Path) -> bytes:
    """The graph with each fp16 BandAttention node fed float32 (Casts before its float inputs, after its output)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    nodes = []
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            nodes.append(node)
            continue
        inputs = []
        for index, name in enumerate(node.input):
            if INPUTS[index] == "doc_lens":
                inputs.append(name)
                continue
            inputs.append(f"{name}.fp32.{node.name}")
            nodes.append(helper.make_node("Cast", [name], [inputs[-1]], to=TensorProto.FLOAT))
        out = node.output[0]
        nodes.append(helper.make_node(OP_TYPE, inputs, [out + ".fp32"], domain=DOMAIN, name=node.name,
                                      **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        nodes.append(helper.make_node("Cast", [out + ".fp32"], [out], to=TensorProto.FLOAT16))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # the exporter's fp16 type of each node output no longer holds
    return model.SerializeToString()


def PluginCpuRunner(name: str, path: str | Path, threads: int | None = None) -> BaseRunner:
    """A graph in ONNX Runtime on the CPU with ``minireranker.BandAttention`` computed by the numpy reference
    (graphs without the node run as in any :class:`~minireranker.engines.OnnxRuntimeRunner`). Validation only."""
    library, path = _extensions_library(), Path(path)  # the missing package is said before any file is read
    model = _fp32_around_nodes(path) if _float16_graph(path) else None
    return OnnxRuntimeRunner(name, path, ["CPUExecutionProvider"], threads, custom_ops_library=library,
                             model_bytes=model)


def _float16_graph(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input)


def plugin_graph_opener(bundle) -> Callable[[str, dict], BaseRunner]:
    """A runtime opener (runtime/backends.py's ``Opener``) that opens every graph of ``bundle`` in a
    :class:`PluginCpuRunner`: what the runtime's onnxruntime backend needs for a plugin bundle on the CPU."""
    return lambda key, record: PluginCpuRunner(key.split("/")[-1], bundle.graph_path(record))
