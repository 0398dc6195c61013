"""Every ONNX graph a bundle holds parses, as far as can be told without TensorRT, on the TensorRT its
attention form targets (the op tables: :mod:`minireranker.engines.trt_onnx_ops`).

Each graph of tiny bundles (Qwen3-VL with DeepStack: vision, guide, doc_prefix, query_head, band, tail,
and an embedder guide's vision and guide) in both forms, fp32 and fp16, goes through polygraphy's
sanitizer: folding must succeed, the folded graph must pass the ONNX checker, and ONNX Runtime (CPU) must
give it the outputs of the unfolded graph on one recorded feed, to ``atol`` times max(1, max |output|):
1e-6 in fp32 (8 steps of 2^-23 at 1), 1e-3 in fp16 (one step of 2^-10 at 1). Folding only precomputes
what ONNX Runtime computes anyway, so the observed difference is 0; the tolerance admits a reordered sum.

Then the folded graph's operators against the tables: the portable form (opset 17, MatMul/Softmax) must
use only what TensorRT 10.3 lists (JetPack 6). The fused form (opset 23) needs ``Attention`` (listed from
10.14) and nothing later: the ``RMSNormalization`` that onnxscript's opset-23 fusion pass makes of
modeling.RMSNorm (listed only from 10.15) is written back as basic ops at export (export/trt_compat.py).

The bundles come from the session's ``bundle_factory``, the builds tests/runtime makes too, so a whole run
builds none more. A synthetic graph checks the census itself (functions, subgraphs,
custom domains).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minireranker.engines import EngineError, open_runner
from minireranker.engines.trt_onnx_ops import (nonconstant_inputs, op_census, opset_too_new, sanitize,
                                               unsupported_ops)
from minireranker.runtime.graph_io import GRAPH_IO
from minireranker.runtime.spec import RerankSpec

PORTABLE_TRT, FUSED_TRT = "10.3", "10.14"
ATOL = {"fp32": 1e-6, "fp16": 1e-3}
APPROX = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64)  # as tests/runtime's parity
SELF_GRAPHS = {"vision", "guide", "doc_prefix", "query_head", "band", "tail"}
EMBEDDER_GRAPHS = {"vision", "doc_prefix", "band", "tail", "embedder/vision", "embedder/guide"}  # band from 0
# case -> (guide, attention, precision)
CASES = {
    "portable-fp32": ("self", "portable", "fp32"),
    "portable-fp16": ("self", "portable", "fp16"),
    "fused-fp32": ("self", "fused", "fp32"),
    "embedder-portable-fp32": ("embedder", "portable", "fp32"),
}  # fused fp16 adds only Casts, and an embedder's graphs attend with MatMul/Softmax in either form (its
#    model is built without set_attention): measured once with both, left out to spare CI ~200 s of builds
PORTABLE = [c for c, (_, attention, _) in CASES.items() if attention == "portable"]
FUSED = [c for c, (_, attention, _) in CASES.items() if attention == "fused"]

_sanitized: dict[str, dict[str, tuple[Path, object]]] = {}
_feeds: dict[str, dict[str, dict[str, np.ndarray]]] = {}


def _synthetic_model():
    """x -> local function mul2 (Mul, Add) -> If (then: Attention, else: com.microsoft FusedMatMul) -> y."""
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    mul2 = helper.make_function("local", "mul2", ["a"], ["b"], [
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", f32, [], [2.0])),
        helper.make_node("Mul", ["a", "two"], ["m"]), helper.make_node("Add", ["m", "two"], ["b"])],
        [helper.make_opsetid("", 23)])
    out = [helper.make_tensor_value_info("z", f32, None)]
    then = helper.make_graph([helper.make_node("Attention", ["x4", "x4", "x4"], ["z"])], "then", [], out)
    other = helper.make_graph([helper.make_node("FusedMatMul", ["x4", "x4"], ["z"], domain="com.microsoft")],
                              "else", [], out)
    graph = helper.make_graph([
        helper.make_node("mul2", ["x"], ["x2"], domain="local"),
        helper.make_node("Unsqueeze", ["x2", "axes"], ["x4"]),
        helper.make_node("ReduceMax", ["x", "axes"], ["m"]),
        helper.make_node("Cast", ["m"], ["c"], to=TensorProto.BOOL),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", f32, [1, 1]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", f32, None)])
    return helper.make_model(graph, functions=[mul2], opset_imports=[
        helper.make_opsetid("", 23), helper.make_opsetid("local", 1), helper.make_opsetid("com.microsoft", 1)])


def test_the_census_walks_functions_subgraphs_and_custom_domains(tmp_path):
    import onnx

    model = _synthetic_model()
    assert op_census(model) == {"Add": 1, "Attention": 1, "Cast": 1, "Constant": 1, "If": 1, "Mul": 1,
                                "ReduceMax": 1, "Unsqueeze": 1, "com.microsoft::FusedMatMul": 1}
    assert unsupported_ops(model, "10.3") == {"Attention": 1, "com.microsoft::FusedMatMul": 1}
    assert unsupported_ops(model, "10.14") == {"com.microsoft::FusedMatMul": 1}
    assert opset_too_new(model, "10.3") == 23 and opset_too_new(model, "10.15") is None
    assert nonconstant_inputs(model) == {"ReduceMax": 1, "Unsqueeze": 1}  # run-time axes
    with pytest.raises(EngineError, match="no ONNX operator table for TensorRT '8.6'"):
        unsupported_ops(model, "8.6")
    onnx.save(model, str(tmp_path / "synthetic.onnx"))
    inlined = sanitize(tmp_path / "synthetic.onnx")
    assert not inlined.functions and "mul2" not in {n.op_type for n in inlined.graph.node}


def _spec(guide: str, checkpoint_factory) -> RerankSpec:
    if guide == "self":
        return APPROX
    embedder = checkpoint_factory("tiny", seed=7)  # as tests/runtime's embedder-guide parity
    return RerankSpec(exit_layer=3, band=(0, 3), keep_ratio=0.5, guide=f"embedder:{embedder}")


def _graph_key(bundle: Path, path: Path) -> str:
    """"band" for onnx/band.onnx, "embedder/guide" for embedder/onnx/guide.onnx."""
    rel = path.relative_to(bundle)
    return "/".join((*rel.parts[:-2], rel.stem))


def _recorded_feeds(guide: str, spec: RerankSpec, checkpoint_factory) -> dict[str, dict[str, np.ndarray]]:
    """One fresh call's inputs of every graph (the build's validation samples), by graph key, in fp32."""
    if guide not in _feeds:
        from minireranker.export.onnx_export import record_samples
        from minireranker.export.reference import ReferencePipeline

        calls = record_samples(ReferencePipeline(checkpoint_factory("tiny"), spec), seed=1)
        _feeds[guide] = {}
        for key, samples in calls.items():
            args = [a for a in samples[0] if a is not None]
            names = GRAPH_IO[key.split("/")[-1]].input_names
            _feeds[guide][key] = {n: a.numpy() for n, a in zip(names, args)}
    return _feeds[guide]


@pytest.fixture(params=list(CASES))
def case(request) -> str:
    return request.param


@pytest.fixture
def graphs(case, bundle_factory, checkpoint_factory) -> dict[str, tuple[Path, object]]:
    """Graph key -> (its path in the bundle, its sanitized ModelProto), sanitized once per case."""
    if case not in _sanitized:
        guide, attention, precision = CASES[case]
        bundle = bundle_factory("tiny", _spec(guide, checkpoint_factory), precision=precision, attention=attention)
        _sanitized[case] = {_graph_key(bundle, p): (p, sanitize(p)) for p in sorted(bundle.rglob("*.onnx"))}
        print(f"\n{case}: op census after folding")
        for key, (_, model) in _sanitized[case].items():
            print(f"  {key}: {op_census(model)}")
    return _sanitized[case]


def test_every_graph_folds_passes_the_checker_and_keeps_its_outputs(case, graphs, checkpoint_factory, tmp_path):
    import onnx

    guide, _, precision = CASES[case]
    assert set(graphs) == (SELF_GRAPHS if guide == "self" else EMBEDDER_GRAPHS)
    feeds = _recorded_feeds(guide, _spec(guide, checkpoint_factory), checkpoint_factory)
    for key, (path, folded) in graphs.items():
        onnx.checker.check_model(folded, full_check=True)
        folded_path = tmp_path / f"{key.replace('/', '_')}.onnx"
        onnx.save(folded, str(folded_path))
        kind = key.split("/")[-1]
        feed = {n: a.astype(np.float16) if precision == "fp16" and a.dtype.kind == "f" else a
                for n, a in feeds[key].items()}
        with open_runner(kind, path, ["CPUExecutionProvider"]) as plain, \
                open_runner(kind, folded_path, ["CPUExecutionProvider"]) as sanitized:
            expected, got = plain.infer(feed), sanitized.infer(feed)
        assert set(got) == set(expected), key
        for name, ref in expected.items():
            ref64 = ref.astype(np.float64)
            tol = ATOL[precision] * max(1.0, float(np.abs(ref64).max(initial=0.0)))
            assert np.abs(got[name].astype(np.float64) - ref64).max(initial=0.0) <= tol, f"{key}:{name}"


@pytest.mark.parametrize("case", PORTABLE, indirect=True)
def test_portable_graphs_use_only_what_tensorrt_10_3_lists(case, graphs):
    found = {key: (unsupported_ops(model, PORTABLE_TRT), opset_too_new(model, PORTABLE_TRT),
                   nonconstant_inputs(model)) for key, (_, model) in graphs.items()}
    assert all(f == ({}, None, {}) for f in found.values()), \
        f"(unsupported ops, opset past 20, run-time axes) on TensorRT {PORTABLE_TRT}: {found}"


@pytest.mark.parametrize("case", FUSED, indirect=True)
def test_fused_graphs_lack_only_attention_on_tensorrt_10_3(case, graphs):
    found = {key: unsupported_ops(model, "10.3") for key, (_, model) in graphs.items()}
    print(f"\n{case}: unsupported on TensorRT 10.3: {found}")
    assert all(set(ops) <= {"Attention"} for ops in found.values()), found
    assert all("Attention" in found[key] for key in ("vision", "doc_prefix", "band")), found


@pytest.mark.parametrize("case", FUSED, indirect=True)
def test_fused_graphs_use_only_what_tensorrt_10_14_lists(case, graphs):
    """10.14 is the first release with Attention; RMSNormalization (10.15) is written back as basic ops at
    export (export/trt_compat.py), so nothing else of 10.15 is needed."""
    found = {key: (unsupported_ops(model, FUSED_TRT), opset_too_new(model, FUSED_TRT), nonconstant_inputs(model))
             for key, (_, model) in graphs.items()}
    assert all(f == ({}, None, {}) for f in found.values()), \
        f"(unsupported ops, opset past 24, run-time axes) on TensorRT {FUSED_TRT}: {found}"
    assert not any(n.op_type == "RMSNormalization" for _, model in graphs.values() for n in model.graph.node)
