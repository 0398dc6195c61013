"""`build_bundle`: the files, the schema, the fingerprint, external data, and that a bad export fails."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")

from minireranker.export import validation  # noqa: E402
from minireranker.export.onnx_export import BuildConfig, BuildError, build_bundle  # noqa: E402
from minireranker.runtime.bundle import SCHEMA_VERSION, inspect_bundle, kv_bytes_per_token, load_bundle  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

SPEC = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64)


def test_bundle_contents_and_schema(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    data = bundle.data
    assert data["schema_version"] == SCHEMA_VERSION == 4 and len(data["fingerprint"]) == 64
    assert set(data["graphs"]) == {"vision", "doc_prefix", "guide", "query_head", "band", "tail"}
    for name, graph in data["graphs"].items():
        assert (tiny_bundle / graph["file"]).is_file()
        onnx.checker.check_model(str(tiny_bundle / graph["file"]))
        assert graph["parameters"] > 0
    band_inputs = {i["name"]: i["shape"] for i in data["graphs"]["band"]["inputs"]}
    assert band_inputs["doc_k"][0] == "batch" and band_inputs["doc_k"][3] == "doc_len"   # dynamic axes
    assert band_inputs["positions"][2] == "query_len"
    assert data["graphs"]["vision"]["inputs"][0]["shape"][0] == "patches"
    assert data["spec"]["band"] == [1, 2] and data["template"]["yes_id"] != data["template"]["no_id"]
    assert data["precision"] == "fp32" and data["opset"] == 17
    for graph, outputs in data["validation"].items():
        for name, v in outputs.items():
            assert v["max_abs_diff"] <= v["tolerance"], (graph, name)
    assert data["validation"]["end_to_end"]["scores"]["max_abs_diff"] <= 1e-4
    assert set(data["files"]) >= {"tokenizer.json", "embed_tokens.npy", "system_k.npy", "system_v.npy"}
    # the system segment's K/V is stored once, in the bundle, for layers 0..E
    system_k = np.load(tiny_bundle / "system_k.npy")
    assert system_k.shape[0] == 4 and system_k.shape[3] == len(data["template"]["system_ids"])
    # the instruction segment: layers 0..A-1 once per bundle (A = 1 here), layers A..E in every entry
    instruction = len(data["template"]["instruction_ids"])
    assert set(data["files"]) >= {"instruction_hidden.npy", "instruction_k.npy", "instruction_v.npy"}
    assert np.load(tiny_bundle / "instruction_k.npy").shape == (1, 1, *system_k.shape[2:3], instruction,
                                                                system_k.shape[4])
    assert np.load(tiny_bundle / "instruction_hidden.npy").shape == (1, instruction, bundle.model["hidden_size"])
    assert band_inputs["instruction_k"] == ["batch", 2, system_k.shape[2], instruction, system_k.shape[4]]
    tail_inputs = {i["name"]: i["shape"] for i in data["graphs"]["tail"]["inputs"]}
    assert tail_inputs["instruction_k"] == ["batch", 1, system_k.shape[2], instruction, system_k.shape[4]]
    prefix_outputs = {o["name"]: o["shape"] for o in data["graphs"]["doc_prefix"]["outputs"]}
    assert prefix_outputs["instruction_k"] == [3, system_k.shape[2], instruction, system_k.shape[4]]  # A..E


def test_inspect_reports_parameters_and_kv_bytes(tiny_bundle):
    info = inspect_bundle(tiny_bundle)
    graphs = info["graphs"]
    assert info["parameters_per_query"] == sum(graphs[g]["parameters"] for g in ("query_head", "band", "tail"))
    bundle = load_bundle(tiny_bundle)
    m = bundle.model
    assert info["kv_bytes_per_token"] == kv_bytes_per_token(bundle) == 2 * 2 * m["num_kv_heads"] * m["head_dim"] * 4


def test_fingerprint_tracks_the_spec_and_precision_but_not_the_clock(tiny_checkpoint, tmp_path):
    cfg = BuildConfig(validate=False)
    quiet = dict(log=lambda m: None)
    a = build_bundle(tiny_checkpoint, tmp_path / "a", SPEC, cfg, **quiet).fingerprint
    b = build_bundle(tiny_checkpoint, tmp_path / "b", SPEC, cfg, **quiet).fingerprint
    c = build_bundle(tiny_checkpoint, tmp_path / "c", RerankSpec(exit_layer=2, band=(1, 2), query_position=64),
                     cfg, **quiet).fingerprint
    d = build_bundle(tiny_checkpoint, tmp_path / "d", SPEC, BuildConfig(precision="fp16", validate=False),
                     **quiet).fingerprint
    assert a == b and len({a, c, d}) == 3


def test_large_weights_go_to_external_data(tiny_checkpoint, tmp_path):
    """Without shared weights and with the threshold lowered to 100 kB, graphs above it keep their weights in
    <graph>.onnx.data."""
    bundle = build_bundle(tiny_checkpoint, tmp_path / "ext", SPEC,
                          BuildConfig(external_data_threshold=100_000, share_weights=False), log=lambda m: None)
    files = bundle.data["files"]
    assert "onnx/vision.onnx.data" in files and files["onnx/vision.onnx"] < files["onnx/vision.onnx.data"]
    assert "shared_weights" not in bundle.data and "onnx/weights.bin" not in files
    assert bundle.data["validation"]["end_to_end"]["scores"]["max_abs_diff"] <= 1e-4


def test_shared_weights_store_each_tensor_once(tiny_bundle, tiny_checkpoint, tmp_path):
    """The default bundle keeps every graph's initializers of 1 kB and more in onnx/weights.bin (document side)
    and onnx/weights.query.bin (per-query graphs' own), each distinct tensor once: the graphs overlap (layers
    0..2 in doc_prefix, query_head, band and guide), so the files are smaller than what the graphs reference,
    the bundle is smaller than one built without sharing, and its scores are the same (1e-5)."""
    from minireranker.runtime.reranker import Reranker

    shared = load_bundle(tiny_bundle)
    record = shared.data["shared_weights"]["onnx"]
    files = shared.data["files"]
    assert set(record["files"]) == {"onnx/weights.bin", "onnx/weights.query.bin"}
    assert sum(files[f] for f in record["files"]) == record["bytes"] < record["referenced_bytes"]
    assert not any(name.endswith(".onnx.data") for name in files)
    for name, graph in shared.data["graphs"].items():
        model = onnx.load(str(tiny_bundle / graph["file"]), load_external_data=False)
        big = [t.name for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
               and len(t.raw_data) >= 1024]
        assert not big, (name, big[:3])
        assert set(graph["initializers"]) == {t.name for t in model.graph.initializer
                                              if t.data_location == onnx.TensorProto.EXTERNAL}
    # a per-query graph reads the layers it shares with the document side from weights.bin
    band_files = {place[0] for place in shared.data["graphs"]["band"]["initializers"].values()}
    assert "weights.bin" in band_files
    plain = build_bundle(tiny_checkpoint, tmp_path / "plain", SPEC, BuildConfig(share_weights=False),
                         log=lambda m: None)
    assert sum(files.values()) < sum(plain.data["files"].values())
    docs = validation.sample_documents(1)  # two drawn images (one with a caption) and a text
    scores = []
    for path in (tiny_bundle, plain.path):
        with Reranker(path, tmp_path / f"cache-{path.name}") as r:
            out = r.rerank("which image is it?", docs)
            assert not out.failed
            scores.append(np.array([x.score for x in sorted(out.results, key=lambda x: x.index)]))
    assert np.abs(scores[0] - scores[1]).max() <= 1e-5, scores


def test_a_failing_check_fails_the_build_and_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(validation.TOLERANCES, "fp32", {"hidden": 0.0, "score": 0.0})
    out = tmp_path / "bad"
    with pytest.raises(BuildError, match=r"graph '\w+' output '\w+' differs from the torch reference"):
        build_bundle(tiny_checkpoint, out, SPEC, log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".bad.building"))


def test_build_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tiny_checkpoint, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not a bundle"):
        build_bundle(tiny_checkpoint, out, SPEC, BuildConfig(validate=False), log=lambda m: None)
    assert (out / "notes.txt").read_text() == "keep me"


def test_bundle_json_round_trips_the_spec(tiny_bundle):
    data = json.loads((tiny_bundle / "bundle.json").read_text())
    assert RerankSpec.from_dict(data["spec"]) == load_bundle(tiny_bundle).spec == SPEC.resolve(4)


def test_an_fp16_graph_keeps_the_rotary_angles_in_float32(tiny_checkpoint):
    """cast_in_place casts a graph's layers, not the rotary's inv_freq: an fp16 inv_freq turns the angle at
    position p by up to p * 2^-11 rad (docs: export/arch/decoder_torch.py TextRotary)."""
    import torch

    from minireranker.export.onnx_export import cast_in_place
    from minireranker.export.reference import ReferencePipeline

    pipeline = ReferencePipeline(tiny_checkpoint, SPEC)
    graph = pipeline.graphs["doc_prefix"]
    rotary = graph.model.rotary
    positions = torch.full((3, 1, 1), 3000)
    cos32, sin32 = rotary(positions, torch.float16)
    with cast_in_place(graph, torch.float16):
        assert graph.model.layers[0].q_proj.weight.dtype == torch.float16  # the layers are cast
        assert rotary.inv_freq.dtype == torch.float32
        cos16, sin16 = rotary(positions, torch.float16)
    assert rotary.inv_freq.dtype == torch.float32 and graph.model.layers[0].q_proj.weight.dtype == torch.float32
    assert torch.equal(cos16, cos32) and torch.equal(sin16, sin32)
    # what a float16 inv_freq gives at this position: off by far more than fp16's rounding of cos (1e-3)
    angle = (3000 * rotary.inv_freq.half().float() - 3000 * rotary.inv_freq).abs().max()
    assert angle > 0.05, angle


def test_an_fp16_build_at_a_far_query_position_validates(tiny_checkpoint, tmp_path):
    """The instruction sits after the query position; with float32 angles its keys match the fp32
    reference at fp16's tolerance however far it sits (3e-2 scaled: export/validation.py TOLERANCES)."""
    spec = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=1.0, query_position=2000)
    bundle = build_bundle(tiny_checkpoint, tmp_path / "b", spec, BuildConfig(precision="fp16"), log=lambda m: None)
    checked = bundle.data["validation"]["doc_prefix"]["instruction_k"]
    assert checked["max_abs_diff"] <= checked["tolerance"] == 3e-2
