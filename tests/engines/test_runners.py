"""The runner interface: ``infer`` checks names, dtypes, ranks and fixed dims against the backend's own
metadata before running; a correct feed runs. The graph is a two-input Add built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minireranker.engines import BACKENDS, BaseRunner, EngineError, OnnxRuntimeRunner, open_runner
from minireranker.runtime.errors import MiniRerankerError

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def add_graph(tmp_path_factory) -> Path:
    """z = x + y with x, y float32 [batch, 4] (batch dynamic) and a bool input ``keep`` [batch] it ignores."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    keep = helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"]),
                               helper.make_node("Shape", ["keep"], ["n"])], "add", [x, y, keep], [z, n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    path = tmp_path_factory.mktemp("graphs") / "add.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def runner(add_graph):
    with open_runner("add", add_graph, providers=["CPUExecutionProvider"]) as r:
        yield r


def feed(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32),
            "y": rng.standard_normal((batch, 4)).astype(np.float32), "keep": np.ones(batch, dtype=bool)}


def test_a_correct_feed_runs(runner):
    assert isinstance(runner, OnnxRuntimeRunner) and isinstance(runner, BaseRunner)
    assert runner.providers == ["CPUExecutionProvider"]
    for batch in (1, 3):
        f = feed(batch)
        out = runner.infer(f)
        assert list(out) == ["z", "n"]
        np.testing.assert_allclose(out["z"], f["x"] + f["y"], rtol=0, atol=0)  # one float32 add: exact
        assert out["n"].tolist() == [batch]


def test_metadata_is_the_backends_own(runner):
    inputs = runner.input_metadata()
    assert list(inputs) == ["x", "y", "keep"]
    assert inputs["x"].dtype == np.float32 and inputs["x"].shape == ("batch", 4) and inputs["x"].rank == 2
    assert inputs["keep"].dtype == np.bool_
    assert list(runner.output_metadata()) == ["z", "n"]


def test_a_wrong_input_name_names_the_missing_input(runner):
    f = feed()
    f["why"] = f.pop("y")
    with pytest.raises(EngineError) as info:
        runner.infer(f)
    message = str(info.value)
    assert "graph 'add'" in message and "input 'y' was not given" in message and "'why'" in message, message


def test_extra_arrays_are_left_out(runner):
    """An exporter may drop an input the graph does not use; the caller's array for it is ignored."""
    out = runner.infer({**feed(), "unused": np.zeros(3)})
    assert out["z"].shape == (2, 4)


@pytest.mark.parametrize("name, value, expected", [
    ("y", np.zeros((2, 4), dtype=np.float64), "input 'y' has dtype float64, needs float32"),
    ("keep", np.ones(2, dtype=np.int64), "input 'keep' has dtype int64, needs bool"),
    ("x", np.zeros((2, 1, 4), dtype=np.float32), "input 'x' has rank 3, needs 2"),
    ("y", np.zeros((2, 5), dtype=np.float32), "input 'y' has size 5 on axis 1, needs 4"),
    ("x", [[0.0] * 4] * 2, "input 'x' is a list, needs a numpy array"),
])
def test_a_wrong_feed_is_refused_with_the_input_and_what_it_needs(runner, name, value, expected):
    with pytest.raises(EngineError) as info:
        runner.infer({**feed(), name: value})
    assert expected in str(info.value) and "graph 'add'" in str(info.value), str(info.value)


def test_engine_errors_are_the_projects_errors():
    assert issubclass(EngineError, MiniRerankerError)


def test_an_unreadable_graph_and_an_unknown_backend_are_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(EngineError, match=r"cannot load graph 'bad' from .*bad\.onnx"):
        open_runner("bad", bad, providers=["CPUExecutionProvider"])
    with pytest.raises(EngineError, match=r"unknown engine backend 'nope'; choose one of \['onnxruntime'\]"):
        open_runner("bad", bad, backend="nope")
    assert set(BACKENDS) == {"onnxruntime"}


def test_an_unavailable_provider_is_refused(add_graph):
    with pytest.raises(EngineError, match="NoSuchExecutionProvider.*not available here"):
        open_runner("add", add_graph, providers=["NoSuchExecutionProvider"])


def test_a_closed_runner_says_so(add_graph):
    with open_runner("add", add_graph, providers=["CPUExecutionProvider"]) as r:
        pass
    with pytest.raises(EngineError, match="graph 'add' is closed"):
        r.infer(feed())
