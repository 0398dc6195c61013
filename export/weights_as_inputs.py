"""Export a graph with its weights handed to the exporter as inputs, then stored as initializers one by one.

The TorchScript exporter encodes a graph under 2 GB in memory: its weights are copied into a protobuf, the
protobuf serialized, and the bytes handed to Python, so for a moment it holds three copies of the graph's
weights. For the 2B preset's vision tower (1.6 GB of fp32) that was 4.6 GiB on top of the torch reference:
the peak of the whole build (measured 2026-12-02, docs/memory.md). Here the graph's parameters enter the
traced call as inputs, so the exporter encodes no weight bytes; each input is then turned into an
initializer of the same name whose bytes are copied from the torch tensor into ``<graph>.onnx.data``, one
tensor at a time.

This suits a graph whose weights feed its operators as they are. The vision tower's do (``Gemm``,
``LayerNormalization``, ``Gather``): the graph is the one the ordinary export writes, initializers and nodes
alike (tests/export/test_weights_as_inputs.py). A decoder layer's do not: a projection of a 3-D activation
is ``MatMul`` of a transposed weight, which the ordinary export folds into a transposed initializer, so the
decoder graphs keep the ordinary export.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from torch import Tensor, nn

from .onnx_files import append_tensor

KINDS = ("vision",)  # the graphs exported this way (module docstring)


class _WeightsAsInputs(nn.Module):
    """``graph`` called with its parameters replaced by the trailing arguments (in ``names``' order)."""

    def __init__(self, graph: nn.Module, names: list[str], n_args: int) -> None:
        super().__init__()
        self.graph, self.names, self.n_args = graph, names, n_args

    def forward(self, *args):
        with _parameters_replaced(self.graph, dict(zip(self.names, args[self.n_args:]))):
            return self.graph(*args[: self.n_args])


@contextlib.contextmanager
def _parameters_replaced(module: nn.Module, values: dict[str, Tensor]):
    """Each named parameter of ``module`` read as the given tensor for the duration of the block (the tracer
    then records it as the input it is; ``torch.func.functional_call`` refuses to run under the tracer)."""
    replaced = []
    try:
        for name, value in values.items():
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            replaced.append((owner, attr, owner._parameters.pop(attr)))
            setattr(owner, attr, value)
        yield module
    finally:
        for owner, attr, parameter in replaced:
            delattr(owner, attr)
            owner._parameters[attr] = parameter


def export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict,
           opset: int) -> None:
    """``torch.onnx.export`` (TorchScript, constant folding on) of ``module`` at ``path``, its parameters
    stored in ``<path>.data`` as initializers named as the parameters are."""
    import torch

    params = dict(module.named_parameters())
    names = list(params)
    clash = set(names) & set(inputs + outputs)
    if clash:
        raise ValueError(f"parameter names {sorted(clash)} are also graph input or output names")
    torch.onnx.export(_WeightsAsInputs(module, names, len(args)), args + tuple(params[n] for n in names),
                      str(path), input_names=inputs + names, output_names=outputs, dynamic_axes=axes,
                      opset_version=opset, dynamo=False, do_constant_folding=True)
    store_inputs_as_initializers(path, params)


def store_inputs_as_initializers(path: Path, tensors: dict[str, Tensor]) -> None:
    """Turn each graph input of ``path`` named in ``tensors`` into an initializer of that tensor, its bytes
    written to ``<path>.data`` one tensor at a time; an input no node reads is dropped."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    read = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.input if i.name not in tensors]
    weights = [i for i in model.graph.input if i.name in tensors and i.name in read]
    data = path.with_name(path.name + ".data")
    size = 0
    with open(data, "wb") as out:
        for value in weights:
            array = tensors[value.name].detach().contiguous().numpy()
            tensor = onnx.TensorProto(name=value.name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                      dims=array.shape)
            size += append_tensor(out, size, memoryview(array.reshape(-1)).cast("B"), tensor, data.name)
            model.graph.initializer.append(tensor)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.save_model(model, str(path))
