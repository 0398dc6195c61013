"""The vision tower exported with its weights as inputs (export/weights_as_inputs.py): the graph the ordinary
TorchScript export writes, initializers, nodes and outputs alike, with the weights outside the exporter's
protobuf and in one data file beside the graph."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx.numpy_helper import to_array  # noqa: E402

from minireranker.export import onnx_export, weights_as_inputs  # noqa: E402
from minireranker.export.onnx_export import BuildConfig  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.validation import io_for  # noqa: E402

ATOL = 1e-6  # float32: the same nodes on the same weights; only ONNX Runtime's choice of kernels may differ


@pytest.fixture(scope="module")
def vision(checkpoint_factory):
    """The tiny preset's vision graph and two of its recorded calls (the export's trace, a fresh one)."""
    pipeline = ReferencePipeline(checkpoint_factory("tiny"), None, up_to_exit=True)
    trace, fresh = onnx_export.record_samples(pipeline, 0), onnx_export.record_samples(pipeline, 1)
    return pipeline.graphs["vision"], trace["vision"][-1], fresh["vision"][0]


def _ordinary_export(graph, args, path):
    inputs, outputs, axes = io_for("vision", args)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False, do_constant_folding=True)


def _initializers(path):
    model = onnx.load(str(path))  # external data read from beside the graph
    return model, {t.name: to_array(t) for t in model.graph.initializer}


def _run(path, args):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})


def test_the_graph_is_the_ordinary_exports(vision, tmp_path):
    graph, trace, fresh = vision
    trace = tuple(a for a in trace if a is not None)
    fresh = tuple(a for a in fresh if a is not None)
    (tmp_path / "plain").mkdir()
    (tmp_path / "lean").mkdir()
    _ordinary_export(graph, trace, tmp_path / "plain" / "vision.onnx")
    onnx_export.export_graph(graph, "vision", trace, tmp_path / "lean" / "vision.onnx", BuildConfig())

    plain, plain_weights = _initializers(tmp_path / "plain" / "vision.onnx")
    lean, lean_weights = _initializers(tmp_path / "lean" / "vision.onnx")
    assert set(lean_weights) == set(plain_weights)
    for name, array in plain_weights.items():
        assert lean_weights[name].dtype == array.dtype and np.array_equal(lean_weights[name], array), name
    assert Counter(n.op_type for n in lean.graph.node) == Counter(n.op_type for n in plain.graph.node)
    assert [i.name for i in lean.graph.input] == [i.name for i in plain.graph.input]
    lean_out = _run(tmp_path / "lean" / "vision.onnx", fresh)
    for got, want in zip(lean_out, _run(tmp_path / "plain" / "vision.onnx", fresh)):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_the_weights_never_pass_through_the_exporter(vision, tmp_path, monkeypatch):
    graph, trace, _ = vision
    trace = tuple(a for a in trace if a is not None)
    seen = {}
    real = torch.onnx.export

    def spy(module, args, f, **kwargs):  # what the exporter is handed, and what it writes
        real(module, args, f, **kwargs)
        seen["model"] = onnx.load(f)

    monkeypatch.setattr(torch.onnx, "export", spy)
    onnx_export.export_graph(graph, "vision", trace, tmp_path / "vision.onnx", BuildConfig())
    monkeypatch.undo()
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    written = sum(len(t.raw_data) for t in seen["model"].graph.initializer)
    assert written < weight_bytes / 20, (written, weight_bytes)  # constants the exporter folds, not weights
    stored = sorted(p.name for p in tmp_path.iterdir())
    assert stored == ["vision.onnx", "vision.onnx.data"], stored
    assert (tmp_path / "vision.onnx.data").stat().st_size >= weight_bytes


def test_parameters_come_back_after_a_failed_call(vision):
    graph = vision[0]
    before = dict(graph.named_parameters())
    names = list(before)
    with pytest.raises(RuntimeError, match="boom"):
        with weights_as_inputs._parameters_replaced(graph, {n: p.detach().clone() for n, p in before.items()}):
            assert not list(graph.parameters())  # every one read from the given tensors
            raise RuntimeError("boom")
    after = dict(graph.named_parameters())
    assert list(after) == names and all(after[n] is before[n] for n in names)


def test_a_parameter_named_like_an_input_is_refused(tmp_path):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.ones(3))

        def forward(self, y):
            return y * self.x

    with pytest.raises(ValueError, match=r"parameter names \['x'\]"):
        weights_as_inputs.export(Odd(), (torch.ones(3),), tmp_path / "odd.onnx", ["x"], ["z"], {}, 17)
