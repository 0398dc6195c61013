"""The TensorRT path as far as a machine without TensorRT or a GPU takes it: the polygraphy loader chain is
built without importing TensorRT, every missing piece is one clear line, and engines.json is checked before
any plan is read. (Building and running plans is unverified on hardware: docs/engines.md.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from minireranker.engines import EngineError
from minireranker.engines.device import cuda_device
from minireranker.engines.manifest import check_manifest, check_plan, read_manifest, sha256_file, write_manifest
from minireranker.engines.profiles import ShapeRange

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
pytestmark = pytest.mark.skipif(HAS_TENSORRT, reason="these tests check the behaviour without TensorRT")


def test_the_loader_chain_is_built_without_importing_tensorrt(tmp_path):
    code = f"""
import sys
from minireranker.engines.profiles import ShapeRange
from minireranker.engines.tensorrt import plan_loader
loader = plan_loader({str(tmp_path / 'g.onnx')!r}, {str(tmp_path / 'g.plan')!r},
                     {{"hidden": ShapeRange((1, 1, 8), (1, 4, 8), (1, 64, 8))}}, strongly_typed=True,
                     workspace_bytes=1 << 28, timing_cache={str(tmp_path / 'timing.cache')!r})
print(type(loader).__name__, type(loader._engine).__name__, type(loader._engine._network).__name__)
config = loader._engine._config
print(config.profiles[0]["hidden"].max, config.memory_pool_limits.size, "tensorrt" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    chain, profile = out.stdout.splitlines()[-2:]  # polygraphy may log a line first
    assert chain == "SaveEngine EngineFromNetwork NetworkFromOnnxPath"
    assert profile == "(1, 64, 8) 268435456 False"  # the profile and workspace are in; TensorRT never imported


def test_strong_typing_refuses_precision_flags(tmp_path):
    from minireranker.engines.tensorrt import plan_loader

    with pytest.raises(EngineError, match="strongly typed network takes its precision from the graph"):
        plan_loader(tmp_path / "g.onnx", tmp_path / "g.plan", {}, strongly_typed=True, fp16=True)


def test_missing_tensorrt_is_one_line(tmp_path):
    from minireranker.engines.tensorrt import TensorRTRunner, import_tensorrt, plan_loader

    with pytest.raises(EngineError, match=r"TensorRT is not installed: pip install \"minireranker\[tensorrt\]\""):
        import_tensorrt()
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        TensorRTRunner("band", tmp_path / "band.plan")
    loader = plan_loader(tmp_path / "g.onnx", tmp_path / "g.plan", {}, strongly_typed=False, workspace_bytes=1 << 20)
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        dict(loader._engine._config.memory_pool_limits.items())  # the key needs TensorRT: looked up only now


def test_no_gpu_here():
    assert cuda_device() is None  # no CUDA driver on this machine: the device check says so


def _manifest(tmp_path, **changes):
    folder = tmp_path / "engines" / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "band.plan").write_bytes(b"not a real plan")
    data = {"backend": "tensorrt", "bundle_fingerprint": "f" * 64, "versions": {"tensorrt": "10.3.0"},
            "device": {"name": "Orin", "compute_capability": "8.7", "index": 0},
            "graphs": {"band": {"onnx": "onnx/band.onnx", "onnx_sha256": "a" * 64, "file": "band.plan",
                                "sha256": sha256_file(folder / "band.plan")}}}
    data.update(changes)
    write_manifest(folder, data)
    return folder, read_manifest(tmp_path, "tensorrt")


def test_engines_json_is_checked_against_bundle_library_and_device(tmp_path):
    folder, m = _manifest(tmp_path)
    orin = {"name": "Orin", "compute_capability": "8.7", "index": 0}
    ok = dict(fingerprint="f" * 64, onnx_sha256={"onnx/band.onnx": "a" * 64}, versions={"tensorrt": "10.3.0"},
              device=orin)
    check_manifest(m, tmp_path, **ok)  # the set it was built for passes
    cases = [({"fingerprint": "e" * 64}, "built for another bundle"),
             ({"onnx_sha256": {"onnx/band.onnx": "b" * 64}}, "built from another onnx/band.onnx"),
             ({"versions": {"tensorrt": "10.16.0"}}, "built with tensorrt 10.3.0, this machine has 10.16.0"),
             ({"device": None}, "need an NVIDIA GPU"),
             ({"device": {"name": "NVIDIA H200", "compute_capability": "9.0"}}, "built on Orin .* this is NVIDIA H200")]
    for change, message in cases:
        with pytest.raises(EngineError, match=message) as info:
            check_manifest(m, tmp_path, **{**ok, **change})
        assert "\n" not in str(info.value)
        if "GPU" not in message:
            assert f"minireranker engines {tmp_path} --backend tensorrt" in str(info.value)
    assert check_plan(folder, "band", m["graphs"]["band"], tmp_path, "tensorrt") == folder / "band.plan"
    (folder / "band.plan").write_bytes(b"changed")
    with pytest.raises(EngineError, match="missing or changed since it was built"):
        check_plan(folder, "band", m["graphs"]["band"], tmp_path, "tensorrt")


def test_engines_json_missing_or_foreign(tmp_path):
    with pytest.raises(EngineError, match=f"has no tensorrt engines; build them with `minireranker engines {tmp_path}"):
        read_manifest(tmp_path, "tensorrt")
    folder, _ = _manifest(tmp_path)
    (folder / "engines.json").write_text('{"schema_version": 99, "backend": "tensorrt"}')
    with pytest.raises(EngineError, match="is not a version 1 tensorrt engines.json"):
        read_manifest(tmp_path, "tensorrt")
    (folder / "engines.json").write_text("{")
    with pytest.raises(EngineError, match="cannot be read"):
        read_manifest(tmp_path, "tensorrt")
    with pytest.raises(EngineError, match="unknown engine backend 'tensorrt-llm'"):
        read_manifest(tmp_path, "tensorrt-llm")


def test_shape_range_round_trips_to_json():
    assert ShapeRange((1,), (2,), (3,)).to_dict() == {"min": [1], "opt": [2], "max": [3]}
