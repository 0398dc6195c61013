"""int8 weights for the band and tail graphs on CPU: ONNX Runtime's dynamic quantization, in place.

What :func:`quantize_weights` does to one exported fp32 graph (``quantize_dynamic``, QOperator form)::

    x [.., K] float ──DynamicQuantizeLinear──> x_q uint8, x_scale, x_zp     (per call, per tensor)
    W [K, N] float  ──(at build)──> W_q int8 [K, N] in -64..63, W_scale [N], W_zp [N]  (per column)
    MatMulInteger(x_q, W_q, x_zp, W_zp) int32 ──Cast──> float ──Mul(x_scale * W_scale)──> y [.., N]

Choices, and why:

* **MatMul only, constant B only** (``MatMulConstBOnly``): the weight matrices of attention and the MLP are
  where the band and tail spend their time and bytes. The attention products (Q K^T, P V) multiply two
  activations and stay float, and so do Gather (there is none in these graphs: the embeddings are a numpy
  table outside them), the norms and the softmax.
* **Per channel** (one scale per output column of W) **with 7-bit weights** (``reduce_range``): AVX2
  kernels on CPUs without VNNI add pairs of u8 x s8 products in int16, which full 8-bit weights overflow
  (255 x 127 x 2 > 32767); per channel, every column reaches the full range, so without ``reduce_range``
  (ONNX Runtime 1.32 does not apply it by default: its weights reach -127..127) it saturates often.
  Measured on the development machine (AMD EPYC, AVX2, no VNNI), max |difference| of the band's output
  over max(1, max |reference|), the demo reranker / the tiny preset (exact spec): per channel 8-bit
  0.111 / 0.381 (saturated), per tensor 8-bit 0.022 / 0.071, per channel 7-bit 0.019 / 0.077 (chosen:
  no weight saturates on any CPU). The rest of the error is the activations' per-tensor uint8 rounding.
* **Weights QInt8, activations QUInt8** (U8S8): the form ONNX Runtime's CPU kernels favour, VNNI and ARM
  included (U8U8 weights measured alike here: 0.017 / 0.059 per channel 8-bit).
* **Which graphs**: the band and the tail, which run once per (query, candidate) pair. ``query_head``
  runs once per query and stays float, as do ``vision``, ``doc_prefix`` and the guide: they write the
  document K/V and the kept tokens, which therefore equal a float bundle's (see the fingerprint note in
  :mod:`minireranker.runtime.bundle`).

External data: a graph whose weights exceed the build's ``external_data_threshold`` keeps them in
``<graph>.onnx.data`` (:func:`~minireranker.export.onnx_export.finalize_onnx`). The quantizer reads them,
writes its result in a temporary directory, and the graph is written back in place by the same rule (the
int8 weights are about a quarter of the bytes, so a graph may move back inline); the stale data file is
removed. A graph ONNX Runtime cannot quantize raises :class:`BuildError` naming it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from .build_config import BuildError

QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear")
_PROTOBUF_LIMIT = 2_000_000_000  # bytes: above this a graph cannot be one protobuf file


def quantize_weights(path: Path, kind: str, threshold: int = _PROTOBUF_LIMIT) -> dict:
    """Rewrite the fp32 ONNX graph at ``path`` with int8 weights (see the module docstring); return
    ``{"matmuls": quantized MatMul count, "weight_bytes": before, "weight_bytes_int8": after}``.

    ``kind`` names the graph in errors; ``threshold`` is the build's external-data threshold in bytes.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    before = _weight_bytes(onnx.load(str(path), load_external_data=False))  # counted from the shapes
    with tempfile.TemporaryDirectory(prefix=f".quantize-{kind}-", dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        quiet = logging.root.manager.disable
        logging.disable(logging.WARNING)  # its root-logger advice to pre-process applies to static quantization
        try:
            quantize_dynamic(path, out, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                             weight_type=QuantType.QInt8, use_external_data_format=True,
                             extra_options={"MatMulConstBOnly": True})
        except Exception as exc:  # the quantizer raises many types; all mean the same to the user
            raise BuildError(f"quantizing graph '{kind}' to int8 weights failed: {type(exc).__name__}: {exc}; "
                             "build it with float weights (--weights float)") from exc
        finally:
            logging.disable(quiet)
        model = onnx.load(str(out))  # reads the quantizer's external data into memory
    matmuls = sum(node.op_type == "MatMulInteger" for node in model.graph.node)
    if matmuls == 0:
        raise BuildError(f"graph '{kind}' has no MatMul with a constant weight to quantize; "
                         "build it with float weights (--weights float)")
    _save_in_place(model, path, threshold)
    return {"matmuls": matmuls, "weight_bytes": before, "weight_bytes_int8": _weight_bytes(model)}


def _weight_bytes(model) -> int:
    """Bytes of the initializers' values, from their shapes and types (external data need not be loaded)."""
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    return int(sum(int(np.prod(t.dims)) * tensor_dtype_to_np_dtype(t.data_type).itemsize
                   for t in model.graph.initializer))


def _save_in_place(model, path: Path, threshold: int) -> None:
    """Write ``model`` over ``path``: inline, or in ``<graph>.onnx.data`` above ``threshold`` bytes (the rule
    of ``finalize_onnx``); an old data file of the float graph is removed first, so none goes stale."""
    import onnx

    for f in path.parent.glob(path.name + ".data*"):
        f.unlink()
    if _weight_bytes(model) > min(threshold, _PROTOBUF_LIMIT):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
