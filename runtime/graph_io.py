"""The graph I/O table: every engine graph's inputs and outputs (names, dims, dtypes), in call order.

Export (:mod:`minireranker.export.onnx_export`) names the ONNX inputs and outputs and declares the dynamic
axes from it; the runtime (:mod:`minireranker.runtime.reranker`) builds its feeds and reads its results
through it, and checks each loaded graph against it. It is torch-free so both sides can import it.

Dims: an int is fixed for every bundle; a name in ``DYNAMIC_AXES`` (lower case) is exported as a dynamic
axis; any other name is a size fixed per bundle by the model and the spec: ``D`` hidden size, ``K``
DeepStack layers, ``Hkv`` K/V heads, ``d`` head dim, ``S`` system tokens, ``I`` instruction tokens (the
instruction segment, ``<Instruct>: {instruction}\\n<Query>:``), ``L`` the layers of the system K/V slice a
graph takes, ``Lb`` the band's layers B-A+1, ``Li`` the instruction's stored layers E-A+1, ``Pv`` values
per patch (channels x temporal patch x patch^2), ``Rv`` the vision rotary dims. dtype ``float`` is the
bundle's precision (float32 for fp32, float16 for fp16).

===========  ==============================================  ==============================================
graph        inputs                                          outputs
===========  ==============================================  ==============================================
vision       pixel_values [patches, Pv] float                embeds [tokens, D] float
             pos_index [patches, 4] int64                    deepstack [K, tokens, D] float
             pos_weight [patches, 4] float
             rot_cos, rot_sin [patches, Rv] float
             window_id [patches] int64  (optional)
doc_prefix   embeds [1, doc_len, D] float                    doc_k, doc_v [Lb, Hkv, doc_len, d] float
             positions [3, 1, doc_len] int64                 instruction_k, instruction_v [Li, Hkv, I, d]
             system_k, system_v [L, 1, Hkv, S, d] float        float (layers A..E)
             instruction_hidden [1, I, D] float
             instruction_positions [3, 1, I] int64
             deepstack [K, doc_len, D] float  (optional)
guide        embeds, positions, system_k, system_v,          attention [keys] float  (keys = S + doc_len)
             deepstack  (as doc_prefix)
query_head   embeds [1, query_len, D] float                  hidden [1, query_len, D] float
             positions [3, 1, query_len] int64
             system_k, system_v [L, 1, Hkv, S, d] float
             instruction_k, instruction_v [L, 1, Hkv, I, d]
band         hidden [hidden_batch, query_len, D] float       hidden_out [batch, query_len, D] float
             positions [3, batch, query_len] int64
             doc_k, doc_v [batch, Lb, Hkv, doc_len, d] float
             doc_mask [batch, doc_len] bool
             instruction_k, instruction_v [batch, Lb, Hkv, I, d] float
             system_k, system_v [Lb, 1, Hkv, S, d] float
tail         hidden [batch, query_len, D] float              scores [batch] float (logit yes - logit no)
             positions [3, batch, query_len] int64
             instruction_k, instruction_v [batch, L, Hkv, I, d] float
             system_k, system_v [L, 1, Hkv, S, d] float
===========  ==============================================  ==============================================

The instruction segment belongs to the document side. Its layers 0..A-1 see only the system segment and
itself, so they are computed once per bundle (``instruction_hidden``, its hidden state entering layer A,
and ``instruction_k``/``instruction_v`` of layers 0..A-1, stored beside the system K/V: query_head takes
them); ``doc_prefix`` runs it on from layer A after the document (it sees the document in the band exactly
as the query does) through layer E, and its K/V of layers A..E is stored in the document's entry: the band
takes each candidate's slice A..B, the tail its slice B+1..E. ``query_len`` counts the query segment only
(the query text and the closing tokens), which starts at the instruction's first position + I.

The band's ``hidden`` has its own batch axis (``hidden_batch``): 1 when one query is shared by every
candidate, N when each candidate brings its query (the server batches pairs of several queries of one
token length in a call). An input marked optional is absent when the model has no DeepStack layers
(``deepstack``) or no window attention (``window_id``); an exporter may also drop an input a graph does not
use (an empty system or instruction K/V slice: the tail when E = B; ``pos_index``/``pos_weight`` of a tower
without a learned position table, Qwen2-VL's and Qwen2.5-VL's), which is allowed.

The vision inputs are grid bookkeeping computed in numpy (:mod:`minireranker.runtime.vision_inputs`): the
learned position table's bilinear taps and weights, the 2-D rotary, and ``window_id``, the attention window
of each patch (Qwen2.5-VL): the graph lets a patch attend to the patches of its own window, as
``window_id[:, None] == window_id[None, :]``, in every block but the full-attention ones. Patches stay in
their order (no window permutation); bundle.json's ``model.vision.window_size`` says a bundle needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..engines.base import TensorSpec

DYNAMIC_AXES = frozenset({"patches", "tokens", "doc_len", "keys", "query_len", "batch", "hidden_batch"})
_DTYPES = {"int64": np.dtype(np.int64), "bool": np.dtype(np.bool_)}


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output: its name, dims (see the module docstring) and dtype."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float"  # "float" (the bundle's precision) | "int64" | "bool"

    def dynamic_axes(self) -> dict[int, str]:
        return {axis: dim for axis, dim in enumerate(self.dims) if dim in DYNAMIC_AXES}


@dataclass(frozen=True)
class GraphIO:
    """One graph's inputs and outputs, in the order the torch graph takes and returns them."""

    name: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    optional: tuple[str, ...] = ()  # inputs absent when the model lacks them (always the last ones)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor: {axis: axis name}}`` of every input and output that has a dynamic axis."""
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}

    def feed(self, **arrays: np.ndarray | None) -> dict[str, np.ndarray]:
        """The feed of one call, checked against the table (an optional input may be None: left out)."""
        unknown = sorted(set(arrays) - set(self.input_names))
        missing = [n for n in self.input_names if arrays.get(n) is None and n not in self.optional]
        if unknown or missing:
            raise TypeError(f"graph '{self.name}' takes {self.input_names}: unknown {unknown}, missing {missing}")
        return {n: arrays[n] for n in self.input_names if arrays.get(n) is not None}

    def unpack(self, result: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """A call's outputs in the table's order."""
        return tuple(result[n] for n in self.output_names)

    def mismatches(self, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                   float_dtype: np.dtype) -> list[str]:
        """How a loaded graph (its backend's metadata) departs from the table; empty when it fits."""
        found = [f"input '{n}' is not in the table" for n in inputs if n not in self.input_names]
        found += [f"output '{t.name}' is missing" for t in self.outputs if t.name not in outputs]
        for t in self.inputs:
            spec = inputs.get(t.name)
            if spec is None:
                continue
            want = float_dtype if t.dtype == "float" else _DTYPES[t.dtype]
            if spec.rank != len(t.dims):
                found.append(f"input '{t.name}' has rank {spec.rank}, the table says {len(t.dims)} {list(t.dims)}")
                continue
            if spec.dtype is not None and spec.dtype != want:
                found.append(f"input '{t.name}' is {spec.dtype}, the table says {want}")
            for axis, dim in t.dynamic_axes().items():
                if isinstance(spec.shape[axis], int):
                    found.append(f"input '{t.name}' axis {axis} is fixed to {spec.shape[axis]}, "
                                 f"the table says dynamic ('{dim}')")
        return found


def _t(name: str, *dims: int | str, dtype: str = "float") -> TensorIO:
    return TensorIO(name, tuple(dims), dtype)


_SYSTEM = (_t("system_k", "L", 1, "Hkv", "S", "d"), _t("system_v", "L", 1, "Hkv", "S", "d"))
_DOCUMENT = (_t("embeds", 1, "doc_len", "D"), _t("positions", 3, 1, "doc_len", dtype="int64"), *_SYSTEM)
_DEEPSTACK = _t("deepstack", "K", "doc_len", "D")

VISION = GraphIO("vision", (
    _t("pixel_values", "patches", "Pv"), _t("pos_index", "patches", 4, dtype="int64"),
    _t("pos_weight", "patches", 4), _t("rot_cos", "patches", "Rv"), _t("rot_sin", "patches", "Rv"),
    _t("window_id", "patches", dtype="int64"),
), (_t("embeds", "tokens", "D"), _t("deepstack", "K", "tokens", "D")), optional=("window_id",))
DOC_PREFIX = GraphIO("doc_prefix", (
    *_DOCUMENT, _t("instruction_hidden", 1, "I", "D"), _t("instruction_positions", 3, 1, "I", dtype="int64"),
    _DEEPSTACK,
), (_t("doc_k", "Lb", "Hkv", "doc_len", "d"), _t("doc_v", "Lb", "Hkv", "doc_len", "d"),
    _t("instruction_k", "Li", "Hkv", "I", "d"), _t("instruction_v", "Li", "Hkv", "I", "d")),
    optional=("deepstack",))
GUIDE = GraphIO("guide", (*_DOCUMENT, _DEEPSTACK), (_t("attention", "keys"),), optional=("deepstack",))
QUERY_HEAD = GraphIO("query_head", (
    _t("embeds", 1, "query_len", "D"), _t("positions", 3, 1, "query_len", dtype="int64"), *_SYSTEM,
    _t("instruction_k", "L", 1, "Hkv", "I", "d"), _t("instruction_v", "L", 1, "Hkv", "I", "d"),
), (_t("hidden", 1, "query_len", "D"),))
BAND = GraphIO("band", (
    _t("hidden", "hidden_batch", "query_len", "D"), _t("positions", 3, "batch", "query_len", dtype="int64"),
    _t("doc_k", "batch", "Lb", "Hkv", "doc_len", "d"), _t("doc_v", "batch", "Lb", "Hkv", "doc_len", "d"),
    _t("doc_mask", "batch", "doc_len", dtype="bool"),
    _t("instruction_k", "batch", "Lb", "Hkv", "I", "d"), _t("instruction_v", "batch", "Lb", "Hkv", "I", "d"),
    _t("system_k", "Lb", 1, "Hkv", "S", "d"), _t("system_v", "Lb", 1, "Hkv", "S", "d"),
), (_t("hidden_out", "batch", "query_len", "D"),))
TAIL = GraphIO("tail", (
    _t("hidden", "batch", "query_len", "D"), _t("positions", 3, "batch", "query_len", dtype="int64"),
    _t("instruction_k", "batch", "L", "Hkv", "I", "d"), _t("instruction_v", "batch", "L", "Hkv", "I", "d"),
    *_SYSTEM,
), (_t("scores", "batch"),))

GRAPH_IO: dict[str, GraphIO] = {g.name: g for g in (VISION, GUIDE, DOC_PREFIX, QUERY_HEAD, BAND, TAIL)}
