"""The runtime's backends (runtime/backends.py) on a machine without a GPU: the default profiles cover every
shape a rerank feeds, a GPU backend's engine set is built and checked through engines.json, and the
onnxruntime-cuda path (IO binding, resident system K/V, the profile caps) runs here with its binding device
set to the CPU. Building or running on a GPU is unverified on hardware (docs/engines.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_helpers import run_cli
from minireranker.engines import EngineError
from minireranker.runtime import backends
from minireranker.runtime.backends import (EngineBuildConfig, build_engines, default_axes, engine_limits,
                                           profiles_of, query_segment_limit)
from minireranker.runtime.bundle import load_bundle
from minireranker.runtime.documents import Document
from minireranker.runtime.errors import MiniRerankerError
from minireranker.runtime.reranker import Reranker

FAKE_GPU = {"name": "Test GPU", "compute_capability": "8.7", "index": 0}


@pytest.fixture()
def bundle(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle: these tests write engines/ into it."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def _docs(images):
    return [Document(image=images["astronaut_70x45"]), Document(image=images["coffee_33x100"], text="a cup"),
            Document(text="a plain text document about cats")]


def test_default_profiles_cover_every_shape_a_rerank_feeds(bundle, images, tmp_path):
    b = load_bundle(bundle)
    template = Reranker.template_of(b)
    profiles = profiles_of(b, default_axes(b, query_segment_limit(template),
                                           Reranker.document_limit_of(b, template).tokens))
    assert set(profiles) == set(b.graphs)
    fed: list[tuple[str, str, tuple]] = []
    with Reranker(bundle, tmp_path / "cache") as r:
        for name, runner in r.encoder.runners.items():
            original = runner.infer

            def record(feed, name=name, original=original):
                fed.extend((name, k, v.shape) for k, v in feed.items())
                return original(feed)
            runner.infer = record
        r.rerank("which picture shows a person?", _docs(images))
        r.rerank("q", _docs(images)[:1])
    assert {g for g, _, _ in fed} == set(b.graphs)
    for graph, name, shape in fed:
        rng = profiles[graph][name]
        assert all(lo <= s <= hi for lo, s, hi in zip(rng.min, shape, rng.max)), (graph, name, shape, rng)
        assert len(rng.opt) == len(shape)


def test_gpu_backends_need_engines_and_a_gpu(bundle, tmp_path):
    with pytest.raises(EngineError, match=f"has no tensorrt engines; build them with `minireranker engines {bundle}"):
        Reranker(bundle, tmp_path / "cache", backend="tensorrt")
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        build_engines(bundle, EngineBuildConfig("tensorrt"))
    with pytest.raises(EngineError, match="ONNX Runtime here has no CUDAExecutionProvider"):
        build_engines(bundle, EngineBuildConfig("onnxruntime-cuda"))
    with pytest.raises(EngineError, match=f"--int8 needs explicit Q/DQ graphs .*minireranker quantize {bundle}"):
        build_engines(bundle, EngineBuildConfig("tensorrt", int8=True))
    with pytest.raises(EngineError, match="unknown backend 'cuda'"):
        Reranker(bundle, tmp_path / "cache", backend="cuda")
    for bad, message in ((dict(backend="onnxruntime"), "the onnxruntime backend needs no engines"),
                         (dict(backend="tensorrt", workspace_mib=0), "--workspace must be a positive"),
                         (dict(backend="tensorrt", profiles=("doc_len=3",)), "NAME=MIN:OPT:MAX")):
        with pytest.raises(EngineError, match=message):
            EngineBuildConfig(**bad)


@pytest.fixture()
def fake_cuda(monkeypatch):
    """This machine seen as one with a CUDA GPU and onnxruntime-gpu, the binding device being the CPU."""
    import onnxruntime

    monkeypatch.setattr(backends, "cuda_device", lambda index=0: dict(FAKE_GPU))
    monkeypatch.setattr(backends, "IO_BINDING_DEVICE", "cpu")
    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", *available])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")  # the faked provider
def test_onnxruntime_cuda_set_is_built_checked_and_run(bundle, images, tmp_path, fake_cuda, monkeypatch):
    path = build_engines(bundle, EngineBuildConfig("onnxruntime-cuda", batch_size=2,
                                                   profiles=("query_len=1:8:40", "doc_len=1:64:300")),
                         log=lambda _: None)
    manifest = json.loads(path.read_text())
    assert manifest["backend"] == "onnxruntime-cuda" and manifest["device"] == FAKE_GPU
    assert manifest["bundle_fingerprint"] == load_bundle(bundle).fingerprint
    assert manifest["axes"]["band"]["batch"] == [1, 2, 2] and manifest["axes"]["band"]["query_len"] == [1, 8, 40]
    assert engine_limits(manifest) == {"batch": 2, "query_len": 40, "doc_len": 300}
    assert set(manifest["graphs"]) == set(load_bundle(bundle).graphs)
    docs = _docs(images)
    with Reranker(bundle, tmp_path / "plain") as plain:
        expected = {r.index: r.score for r in plain.rerank("which picture shows a person?", docs).results}
    with Reranker(bundle, tmp_path / "cuda", backend="onnxruntime-cuda") as r:
        assert r.batch_size == 2  # capped at the engines' profile: smaller calls, the same scores
        assert r.max_query_tokens == 40 - len(r.template.query_text(""))
        assert r.max_document_tokens == 300
        got = {x.index: x.score for x in r.rerank("which picture shows a person?", docs).results}
        band = r.encoder.runners["band"]
        assert band._binding == "cpu" and set(band._on_device) == {"system_k", "system_v"}
        held = {k: v[1] for k, v in band._on_device.items()}
        r.rerank("another query", docs)
        assert all(band._on_device[k][1] is held[k] for k in held)  # uploaded once, bound again
        with pytest.raises(MiniRerankerError, match=r"the limit is \d+ \(the onnxruntime-cuda engines' profile\)"):
            r.rerank("word " * 60, docs)
        out = r.index([Document(text="many words " * 400)])
        assert out.failed and "300" in out.failed[0].error
    assert got.keys() == expected.keys()
    # The same float32 arithmetic in other kernels: batches of 2 against 32, and this session's pre-packed
    # weights against the plain runtime's shared ones. On a 2-core Intel Xeon (AVX-512) the batch size alone
    # moved these scores by up to 9e-7 and the two paths differed by 1.07e-6 (on an AMD EPYC, under 1e-6);
    # 1e-5 is about 10x that, and 10x tighter than a build's fp32 check of the scores (1e-4).
    np.testing.assert_allclose([got[i] for i in sorted(got)], [expected[i] for i in sorted(expected)],
                               rtol=0, atol=1e-5)
    # the same set on another GPU, or for another bundle, is refused in one line
    monkeypatch.setattr(backends, "cuda_device", lambda index=0: {**FAKE_GPU, "name": "Other GPU"})
    with pytest.raises(EngineError, match="were built on Test GPU .* this is Other GPU"):
        Reranker(bundle, tmp_path / "cuda", backend="onnxruntime-cuda")
    monkeypatch.setattr(backends, "cuda_device", lambda index=0: None)
    with pytest.raises(EngineError, match="need an NVIDIA GPU"):
        Reranker(bundle, tmp_path / "cuda", backend="onnxruntime-cuda")
    with pytest.raises(EngineError, match="--provider applies to the onnxruntime backend only"):
        Reranker(bundle, tmp_path / "cuda", backend="onnxruntime-cuda", providers=["CPUExecutionProvider"])


def test_command_lines(bundle, tmp_path, images):
    out = run_cli("engines", str(bundle), "--backend", "tensorrt")
    assert out.returncode == 2 and out.stderr.startswith("error: TensorRT is not installed")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    out = run_cli("engines", str(bundle), "--backend", "onnxruntime-cuda", "--profile", "width=1:2:3")
    assert out.returncode == 2 and "unknown axis 'width'" in out.stderr
    images["chelsea_128x100"].save(tmp_path / "cat.png")
    out = run_cli("rerank", str(bundle), "--cache", str(tmp_path / "c"), "--backend", "onnxruntime-tensorrt",
                  "--query", "a cat", str(tmp_path / "cat.png"))
    assert out.returncode == 2 and "has no onnxruntime-tensorrt engines; build them with" in out.stderr
    # inspect lists an engine set, and says when it was built for another bundle
    folder = bundle / "engines" / "tensorrt"
    folder.mkdir(parents=True)
    (folder / "engines.json").write_text(json.dumps({
        "schema_version": 1, "backend": "tensorrt", "bundle_fingerprint": "0" * 64, "created": "2026-12-01",
        "versions": {"tensorrt": "10.3.0"}, "device": FAKE_GPU, "graphs": {"band": {}}}))
    out = run_cli("inspect", str(bundle))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("engines tensorrt"))
    assert "1 graphs on Test GPU (compute capability 8.7)" in line and "BUILT FOR ANOTHER BUNDLE" in line
    shutil.rmtree(bundle / "engines")
