"""ONNX Runtime sessions for a bundle's graphs, with execution providers chosen where present.

``GraphRunner.infer`` checks input names, dtypes and ranks against the graph before running it, so a
wrong feed fails with a message naming the graph and the input instead of an ONNX Runtime trace.
Providers, in order of preference when present: TensorRT, CUDA, CPU (the TensorRT and CUDA execution
providers come with ``onnxruntime-gpu``; nothing here imports a GPU library).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime.errors import MiniRerankerError

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(bool)": np.bool_}


class EngineError(MiniRerankerError):
    """An engine cannot be loaded or was fed inputs that do not fit it."""


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The requested providers (each must be available), or every preferred one that is."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EngineError(f"execution provider(s) {missing} are not available here (available: {available}); "
                              "install onnxruntime-gpu for CUDA/TensorRT, or choose CPUExecutionProvider")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available]


class GraphRunner:
    """One graph's session. ``infer(feed)`` validates the feed, then runs; returns outputs by name."""

    def __init__(self, name: str, path: Path, providers: list[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"cannot load graph '{name}' from {path}: {exc}") from None
        self.name = name
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self.inputs}  # graphs may have dropped unused inputs
        for name, meta in self.inputs.items():
            if name not in feed:
                raise EngineError(f"graph '{self.name}': input '{name}' was not given")
            value = feed[name]
            want = _ORT_TYPES.get(meta.type)
            if want is not None and value.dtype != want:
                raise EngineError(f"graph '{self.name}': input '{name}' has dtype {value.dtype}, needs {np.dtype(want)}")
            if value.ndim != len(meta.shape):
                raise EngineError(f"graph '{self.name}': input '{name}' has rank {value.ndim}, needs {len(meta.shape)}")
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
