"""The graph I/O table (runtime/graph_io.py), which export and runtime both read, and its check of a
loaded graph. (It sits beside the runner tests: the check reads the runners' metadata.)"""

from __future__ import annotations

import numpy as np
import pytest

from minireranker.engines import TensorSpec, open_runner
from minireranker.runtime.bundle import load_bundle
from minireranker.runtime.graph_io import BAND, DOC_PREFIX, DYNAMIC_AXES, GRAPH_IO, TAIL


def test_the_table_covers_every_graph_and_names_its_dynamic_axes():
    assert list(GRAPH_IO) == ["vision", "guide", "doc_prefix", "query_head", "band", "tail"]
    assert BAND.dynamic_axes()["hidden"] == {0: "hidden_batch", 1: "query_len"}
    assert DOC_PREFIX.dynamic_axes()["doc_k"] == {2: "doc_len"}
    for io in GRAPH_IO.values():
        for axes in io.dynamic_axes().values():
            assert set(axes.values()) <= DYNAMIC_AXES


def test_feed_follows_the_table_and_unpack_its_order():
    arrays = {n: np.zeros(1) for n in DOC_PREFIX.input_names}
    assert list(DOC_PREFIX.feed(**arrays)) == DOC_PREFIX.input_names
    assert "deepstack" not in DOC_PREFIX.feed(**{**arrays, "deepstack": None})  # optional: left out
    with pytest.raises(TypeError, match=r"unknown \['hiden'\]"):
        TAIL.feed(**{n: np.zeros(1) for n in TAIL.input_names}, hiden=np.zeros(1))
    with pytest.raises(TypeError, match=r"missing \['positions'\]"):
        TAIL.feed(**{n: np.zeros(1) for n in TAIL.input_names if n != "positions"})
    assert DOC_PREFIX.unpack({"instruction_v": 4, "doc_v": 2, "instruction_k": 3, "doc_k": 1}) == (1, 2, 3, 4)


def test_the_instruction_segment_is_on_the_document_side():
    """doc_prefix returns the instruction's K/V (layers A..E); the band takes each candidate's (A..B) beside
    its document's, the tail each candidate's (B+1..E), the query head the bundle's (0..A-1)."""
    dims = {io.name: {t.name: t.dims for t in (*io.inputs, *io.outputs)} for io in GRAPH_IO.values()}
    assert dims["doc_prefix"]["instruction_k"] == ("Li", "Hkv", "I", "d")
    assert dims["doc_prefix"]["instruction_hidden"] == (1, "I", "D")
    assert dims["band"]["instruction_k"] == ("batch", "Lb", "Hkv", "I", "d")
    assert dims["tail"]["instruction_k"] == ("batch", "L", "Hkv", "I", "d")
    assert dims["query_head"]["instruction_k"] == ("L", 1, "Hkv", "I", "d")
    assert "instruction_k" not in dims["guide"]
    assert BAND.input_names.index("instruction_k") > BAND.input_names.index("doc_mask")


def _specs(io, **changes):
    specs = {t.name: TensorSpec(t.name, np.dtype(np.float32) if t.dtype == "float" else np.dtype(t.dtype),
                                tuple(str(d) for d in t.dims)) for t in io.inputs}
    specs.update(changes)
    return specs


def test_mismatches_name_what_departs_from_the_table():
    outputs = {t.name: TensorSpec(t.name, np.dtype(np.float32), ()) for t in BAND.outputs}
    f32 = np.dtype(np.float32)
    assert BAND.mismatches(_specs(BAND), outputs, f32) == []
    fixed = _specs(BAND, hidden=TensorSpec("hidden", f32, (1, "query_len", 64)))
    assert BAND.mismatches(fixed, outputs, f32) == [
        "input 'hidden' axis 0 is fixed to 1, the table says dynamic ('hidden_batch')"]
    assert BAND.mismatches(_specs(BAND), outputs, np.dtype(np.float16))[0] == \
        "input 'hidden' is float32, the table says float16"
    odd = _specs(BAND, extra=TensorSpec("extra", f32, (1,)),
                 doc_mask=TensorSpec("doc_mask", np.dtype(np.bool_), ("batch",)))
    assert BAND.mismatches(odd, {}, f32) == [
        "input 'extra' is not in the table", "output 'hidden_out' is missing",
        "input 'doc_mask' has rank 1, the table says 2 ['batch', 'doc_len']"]
    no_system = {k: v for k, v in _specs(TAIL).items() if not k.startswith("system")}
    assert TAIL.mismatches(no_system, {"scores": None}, f32) == []  # an exporter may drop unused inputs


def test_a_built_bundle_fits_the_table(tiny_bundle):
    """Export named every graph's inputs and outputs from the table; each graph, loaded, fits it."""
    bundle = load_bundle(tiny_bundle)
    for name, graph in bundle.graphs.items():
        io = GRAPH_IO[name]
        assert [i["name"] for i in graph["inputs"]] == io.input_names[: len(graph["inputs"])]
        assert [o["name"] for o in graph["outputs"]] == io.output_names
        with open_runner(name, bundle.graph_path(graph), providers=["CPUExecutionProvider"]) as runner:
            assert io.mismatches(runner.input_metadata(), runner.output_metadata(), np.dtype(np.float32)) == []
            assert [i["dtype"] for i in graph["inputs"]] == [s.dtype.name for s in runner.input_metadata().values()]
