"""The plugin attention form: one minireranker.BandAttention node per band layer, validated on the CPU through
onnxruntime-extensions (export/plugin_attention.py), and the TensorRT plugin's launch up to TensorRT
(engines/band_plugin.py; no TensorRT or GPU here)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minireranker.engines import EngineError
from minireranker.engines.band_plugin import BLOCK_M, NUM_SCALARS, plugin_launch
from minireranker.export.build_config import BuildConfig, BuildError

SCORE_ATOL = 1e-4  # fp32: the plugin bundle against the portable one, end to end


def _nodes(path):
    import onnx

    return [n for n in onnx.load(str(path)).graph.node if n.domain == "minireranker" and n.op_type == "BandAttention"]


@pytest.fixture(scope="module")
def plugin_bundle(bundle_factory):
    pytest.importorskip("onnxruntime_extensions")
    from minireranker.runtime.bundle import load_bundle

    return load_bundle(bundle_factory("tiny", None, "fp32", "plugin"))


def test_the_band_has_one_node_per_layer_and_no_other_graph_has_one(plugin_bundle):
    a, b = plugin_bundle.spec.band
    assert plugin_bundle.data["attention"] == "plugin" and plugin_bundle.data["opset"] == 17
    for key, record in plugin_bundle.graphs.items():
        nodes = _nodes(plugin_bundle.graph_path(record))
        assert len(nodes) == (b - a + 1 if key == "band" else 0), key
    for node in _nodes(plugin_bundle.graph_path(plugin_bundle.graphs["band"])):
        attrs = {a.name: a for a in node.attribute}
        assert len(node.input) == 10 and set(attrs) == {"scale", "num_kv_heads"}


def test_the_plugin_band_sanitizes_and_needs_only_its_plugin_beyond_tensorrt_10_3(plugin_bundle, tmp_path,
                                                                                   monkeypatch):
    from minireranker.engines.trt_onnx_ops import sanitize, unsupported_ops

    # ONNX Runtime's symbolic shape inference (under the folding) cannot infer the custom node and writes
    # sym_shape_infer_temp.onnx into the working directory: keep it out of the checkout
    monkeypatch.chdir(tmp_path)

    a, b = plugin_bundle.spec.band
    folded = sanitize(plugin_bundle.graph_path(plugin_bundle.graphs["band"]))  # polygraphy's constant folding
    assert unsupported_ops(folded, "10.3") == {"minireranker::BandAttention": b - a + 1}


def test_the_build_validated_the_plugin_band(plugin_bundle):
    validation = plugin_bundle.data["validation"]
    assert all(r["max_abs_diff"] <= 1e-4 for r in validation["band"].values()) and validation["band"]
    assert set(validation) >= set(plugin_bundle.graphs)
    assert "skipped" in validation["end_to_end"]  # until the runtime can open the node (see the module)


def test_plugin_scores_equal_the_portable_bundles(plugin_bundle, bundle_factory, tmp_path, monkeypatch):
    from minireranker.export.validation import sample_documents
    from minireranker.export.plugin_attention import plugin_graph_opener
    from minireranker.runtime import reranker
    from minireranker.runtime.reranker import Reranker

    docs = sample_documents(0) + sample_documents(1)
    queries = ["which image is it?", "q"]
    with Reranker(bundle_factory("tiny", None, "fp32", "portable"), tmp_path / "portable") as runtime:
        expected = [[r.score for r in sorted(runtime.rerank(q, docs).results, key=lambda r: r.index)] for q in queries]
    # ONNX Runtime cannot run the node, so the runtime refuses the bundle on its ONNX Runtime backends ...
    with pytest.raises(EngineError, match="TensorRT plugin attention form .* use --backend tensorrt"):
        Reranker(plugin_bundle, tmp_path / "plugin")
    # ... and with the node's CPU implementation registered on every session, it scores as the portable one
    monkeypatch.setattr(reranker, "graph_opener", lambda bundle, *args: (plugin_graph_opener(bundle), None))
    with Reranker(plugin_bundle, tmp_path / "plugin") as runtime:
        got = [[r.score for r in sorted(runtime.rerank(q, docs).results, key=lambda r: r.index)] for q in queries]
    np.testing.assert_allclose(got, expected, rtol=0, atol=SCORE_ATOL)


def test_the_runtime_pads_documents_at_the_end_of_each_row(bundle_factory, tmp_path):
    # doc_lens = the count of True in a doc_mask row assumes the real keys come first (graphs.BandGraph)
    from minireranker.export.validation import sample_documents
    from minireranker.runtime.reranker import Reranker

    masks = []
    with Reranker(bundle_factory("tiny", None, "fp32", "portable"), tmp_path) as runtime:
        run = runtime.encoder.run
        runtime.encoder.run = lambda io, **arrays: (masks.append(arrays["doc_mask"]) if io.name == "band" else None,
                                                    run(io, **arrays))[1]
        runtime.rerank("q", sample_documents(0))
    assert masks
    for mask in masks:
        lens = mask.sum(1)
        np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None] < lens[:, None])
        assert len(set(lens.tolist())) > 1  # a batch of different lengths, so padding was there to check


def test_missing_onnxruntime_extensions_names_what_to_install(monkeypatch, tmp_path):
    from minireranker.export import plugin_attention

    plugin_attention._extensions_library.cache_clear()
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)
    try:
        with pytest.raises(BuildError, match="pip install onnxruntime-extensions"):
            plugin_attention.PluginCpuRunner("band", tmp_path / "band.onnx")
    finally:
        plugin_attention._extensions_library.cache_clear()


def test_plugin_config_is_the_portable_opset():
    assert BuildConfig(attention="plugin").opset == 17
    with pytest.raises(BuildError, match="plugin"):
        BuildConfig(attention="flash")


# -- the TensorRT plugin, up to TensorRT -------------------------------------------------------------------

@pytest.mark.parametrize("n, hq, hkv, q_len, s_len, t_len, i_len, d", [
    (3, 4, 2, 5, 7, 11, 6, 16), (1, 8, 2, 40, 0, 300, 0, 128), (32, 2, 2, 64, 13, 1, 9, 64)])
def test_launch_grid_and_scalars(n, hq, hkv, q_len, s_len, t_len, i_len, d):
    launch = plugin_launch((n, hq, q_len, d), (hkv, s_len, d), (n, hkv, t_len, d), (n, hkv, i_len, d), hkv)
    group = hq // hkv
    assert launch.grid == (n * hkv, -(-group * q_len // BLOCK_M)) and launch.block_threads == 128
    assert launch.grid[1] * BLOCK_M >= group * q_len > (launch.grid[1] - 1) * BLOCK_M
    shapes = [(n, hq, q_len, d)] * 2 + [(hkv, s_len, d)] * 2 + [(n, hkv, t_len, d)] * 2 + [(n, hkv, i_len, d)] * 2 \
        + [(n, hkv, q_len, d)] * 2
    strides = [math.prod(shape[i + 1:]) for shape in shapes for i in range(len(shape) - 1)]  # contiguous, elements
    assert len(launch.scalars) == NUM_SCALARS
    assert list(launch.scalars) == strides + [hkv, group, q_len, s_len, t_len, i_len]


_COMPILE = """
import re
from minireranker.engines.band_plugin import compile_plugin_kernel
for dtype in ("fp16", "fp32"):
    k = compile_plugin_kernel(90, 16, dtype)
    entry = re.search(r"\\.entry\\s+(\\w+)\\s*\\((.*?)\\)", k.ptx, re.S)
    print(dtype, k.name, entry.group(1), entry.group(2).count(".param"), k.shared_bytes)
"""


def test_the_plugin_kernel_compiles_to_ptx_without_a_gpu():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    result = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in result.stdout.split("\n")[:2]:
        dtype, name, entry, params, shared = line.split()
        assert name == entry == "_band_plugin_kernel"
        # TensorRT passes 10 inputs, the scalars and the output; Triton's own scratch pointers follow them
        assert int(params) >= 10 + NUM_SCALARS + 1 and int(shared) > 0


def test_importing_the_plugin_imports_neither_tensorrt_nor_triton():
    code = ("import sys, minireranker.engines.band_plugin; "
            "print(sorted(m for m in ('tensorrt', 'triton', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_registering_without_tensorrt_is_one_clear_error(monkeypatch):
    from minireranker.engines import EngineError
    from minireranker.engines import band_plugin

    band_plugin.register_band_plugin.cache_clear()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match=r"TensorRT >= 10\.9"):
        band_plugin.register_band_plugin()
