"""Weight-stripped TensorRT plans, up to the boundary (no TensorRT here; unverified on hardware, docs/engines.md):
the build asks for STRIP_PLAN and REFIT_IDENTICAL, a stripped plan is refitted from its graph's ONNX when
loaded, and every way that can fail is one line naming the graph. TensorRT is replaced by a recording fake
with the documented API's names (tensorrt.Refitter, tensorrt.OnnxParserRefitter, BuilderFlag)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from minireranker.engines import EngineError
from minireranker.engines import tensorrt as trt_module


class FakeTensorRT:
    """The names the code uses, recording what it is asked to do."""

    __version__ = "10.3.0"

    def __init__(self, refit_ok: bool = True, engine_ok: bool = True, flags=("STRIP_PLAN", "REFIT_IDENTICAL")):
        self.calls: list[tuple] = []
        self.BuilderFlag = SimpleNamespace(**{f: f for f in flags})
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, level):
                fake.calls.append(("logger", level))

        class Refitter:
            def __init__(self, engine, logger):
                fake.calls.append(("refitter", engine))

            def refit_cuda_engine(self):
                fake.calls.append(("refit_cuda_engine",))
                return engine_ok

            def get_missing_weights(self):
                return ["layers.0.q_proj.weight"]

        class OnnxParserRefitter:
            num_errors = 0 if refit_ok else 1

            def __init__(self, refitter, logger):
                fake.calls.append(("parser", type(refitter).__name__))

            def refit_from_file(self, path):
                fake.calls.append(("refit_from_file", path))
                return refit_ok

            def get_error(self, i):
                return "weight 'w' has another shape"

        self.Logger, self.Refitter, self.OnnxParserRefitter = Logger, Refitter, OnnxParserRefitter


def test_a_stripped_plan_is_refitted_from_its_graph(tmp_path):
    trt = FakeTensorRT()
    trt_module.refit_from_onnx(trt, "ENGINE", tmp_path / "band.onnx", "band")
    names = [c[0] for c in trt.calls]
    assert ("refitter", "ENGINE") in trt.calls and ("refit_from_file", str(tmp_path / "band.onnx")) in trt.calls
    assert names.index("refit_from_file") < names.index("refit_cuda_engine")  # weights first, then the engine


@pytest.mark.parametrize("trt, message", [
    (FakeTensorRT(refit_ok=False), r"cannot refit the TensorRT plan of graph 'band' from .*another shape.*rebuild"),
    (FakeTensorRT(engine_ok=False), r"graph 'band' left 1 weights unset \(layers.0.q_proj.weight\)"),
])
def test_a_refit_that_fails_names_the_graph(tmp_path, trt, message):
    with pytest.raises(EngineError, match=message):
        trt_module.refit_from_onnx(trt, "ENGINE", tmp_path / "band.onnx", "band")


def test_the_build_sets_strip_plan_and_refit_identical(monkeypatch):
    trt = FakeTensorRT()
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: trt)
    flags = []
    trt_module.strip_plan_flags(None, None, SimpleNamespace(set_flag=flags.append))
    assert flags == ["STRIP_PLAN", "REFIT_IDENTICAL"]
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: FakeTensorRT(flags=("REFIT",)))
    with pytest.raises(EngineError, match="no BuilderFlag.STRIP_PLAN .* --keep-weights"):
        trt_module.strip_plan_flags(None, None, SimpleNamespace(set_flag=flags.append))


def test_the_stripped_loader_chain_is_built_without_importing_tensorrt(tmp_path):
    code = f"""
import sys
from minireranker.engines.tensorrt import plan_loader, strip_plan_flags
loader = plan_loader({str(tmp_path / 'g.onnx')!r}, {str(tmp_path / 'g.plan')!r}, {{}}, strongly_typed=True,
                     strip_weights=True)
config = loader._engine._config
print(type(config).__name__, type(config._config).__name__, config._func is strip_plan_flags, "tensorrt" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "PostprocessConfig CreateConfig True False"


def test_the_opener_refits_only_plans_recorded_as_stripped(monkeypatch, tmp_path):
    """runtime/backends.py: engines.json's per-graph "weights" decides; a manifest from before says nothing
    (its plans carry their weights)."""
    from minireranker.runtime import backends

    manifest = {"graphs": {"band": {"weights": "stripped"}, "tail": {"weights": "included"}, "query_head": {}}}
    opened = {}
    monkeypatch.setattr(backends, "read_manifest", lambda path, backend: manifest)
    monkeypatch.setattr(backends, "check_manifest", lambda *args: None)
    monkeypatch.setattr(backends, "cuda_device", lambda: None)
    monkeypatch.setattr(backends, "_versions", lambda: {"tensorrt": "10.3.0"})
    monkeypatch.setattr(backends, "check_plan", lambda folder, key, entry, bundle, backend: tmp_path / f"{key}.plan")
    monkeypatch.setattr(trt_module, "TensorRTRunner",
                        lambda key, plan, refit_from=None: opened.setdefault(key, (plan.name, refit_from)))
    bundle = SimpleNamespace(path=tmp_path, fingerprint="f" * 64, data={}, graph_path=lambda r: tmp_path / r["file"])
    opener, _ = backends.graph_opener(bundle, "tensorrt")
    for key in manifest["graphs"]:
        opener(key, {"file": f"onnx/{key}.onnx"})
    assert opened == {"band": ("band.plan", tmp_path / "onnx/band.onnx"), "tail": ("tail.plan", None),
                      "query_head": ("query_head.plan", None)}
