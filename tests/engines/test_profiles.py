"""Optimization profiles (engines/profiles.py) and the TensorRT EP's options (engines/onnxrt.py): pure shape
arithmetic, checked exactly."""

from __future__ import annotations

import pytest

from minireranker.engines import EngineError
from minireranker.engines.onnxrt import tensorrt_provider_options
from minireranker.engines.profiles import (AxisRange, ShapeRange, apply_overrides, graph_profile, input_shape_range,
                                           parse_overrides, shape_string)


def test_axis_range_is_ordered_and_positive():
    assert AxisRange(1, 4, 8).to_list() == [1, 4, 8]
    for bad in ((0, 1, 2), (2, 1, 3), (1, 4, 3)):
        with pytest.raises(EngineError, match="1 <= MIN <= OPT <= MAX"):
            AxisRange(*bad)


def test_overrides_parse_plain_and_per_graph():
    got = parse_overrides(["doc_len=1:512:2048", "guide.doc_len=2:1024:4096", " batch=1:8:16 "])
    assert got == {(None, "doc_len"): AxisRange(1, 512, 2048), ("guide", "doc_len"): AxisRange(2, 1024, 4096),
                   (None, "batch"): AxisRange(1, 8, 16)}
    for bad, message in (("doc_len=1:2", "NAME=MIN:OPT:MAX"), ("width=1:2:3", "unknown axis 'width'"),
                         ("doc_len=4:2:8", "MIN <= OPT")):
        with pytest.raises(EngineError, match=message):
            parse_overrides([bad])


def test_a_graph_qualified_override_wins_over_a_plain_one():
    axes = {"guide": {"doc_len": AxisRange(1, 2, 3)}, "band": {"doc_len": AxisRange(1, 2, 3),
                                                                "batch": AxisRange(1, 32, 32)}}
    out = apply_overrides(axes, parse_overrides(["guide.doc_len=1:9:99", "doc_len=1:5:50"]))
    assert out["guide"]["doc_len"] == AxisRange(1, 9, 99)
    assert out["band"]["doc_len"] == AxisRange(1, 5, 50) and out["band"]["batch"] == AxisRange(1, 32, 32)
    assert axes["band"]["doc_len"] == AxisRange(1, 2, 3)  # the defaults are not changed in place
    with pytest.raises(EngineError, match="graph 'guide' has no axis 'batch'"):
        apply_overrides(axes, parse_overrides(["guide.batch=1:2:3"]))


def test_input_profile_takes_axes_from_the_table_and_sizes_from_the_file():
    axes = {"batch": AxisRange(1, 16, 32), "doc_len": AxisRange(1, 300, 1100)}
    r = input_shape_range("band", "doc_k", ("batch", "Lb", "Hkv", "doc_len", "d"), ("batch", 2, 4, "doc_len", 16),
                          axes)
    assert r == ShapeRange((1, 2, 4, 1, 16), (16, 2, 4, 300, 16), (32, 2, 4, 1100, 16))
    with pytest.raises(EngineError, match="rank 2 in the file, 3 in the graph I/O table"):
        input_shape_range("band", "x", ("batch", "a", "b"), (1, 2), axes)
    with pytest.raises(EngineError, match="axis 1 .* is dynamic in the file"):
        input_shape_range("band", "x", ("batch", "D"), ("batch", "s7"), axes)


def test_graph_profile_refuses_an_unknown_input():
    axes = {"query_len": AxisRange(1, 8, 64)}
    table = {"embeds": (1, "query_len", "D")}
    assert graph_profile("query_head", table, [{"name": "embeds", "shape": [1, "query_len", 32]}], axes) == \
        {"embeds": ShapeRange((1, 1, 32), (1, 8, 32), (1, 64, 32))}
    with pytest.raises(EngineError, match="input 'other' the graph I/O table does not know"):
        graph_profile("query_head", table, [{"name": "other", "shape": [1]}], axes)


def test_tensorrt_ep_options_list_every_dynamic_input_and_the_caches(tmp_path):
    profile = {"hidden": ShapeRange((1, 1, 8), (1, 4, 8), (1, 64, 8)),
               "system_k": ShapeRange(*((2, 1, 4, 5, 16),) * 3),  # fixed: left out of the profile strings
               "doc_mask": ShapeRange((1, 1), (16, 300), (32, 1100))}
    options = tensorrt_provider_options(profile, tmp_path, fp16=True, workspace_bytes=1 << 30, prefix="band")
    assert options == {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path),
        "trt_fp16_enable": "True", "trt_int8_enable": "False", "trt_engine_cache_prefix": "band",
        "trt_max_workspace_size": str(1 << 30),
        "trt_profile_min_shapes": "hidden:1x1x8,doc_mask:1x1",
        "trt_profile_opt_shapes": "hidden:1x4x8,doc_mask:16x300",
        "trt_profile_max_shapes": "hidden:1x64x8,doc_mask:32x1100"}
    assert shape_string({"a": ShapeRange((1,), (2,), (3,))}, "max") == "a:3"
