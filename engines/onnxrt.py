"""The ONNX Runtime runner: one ``InferenceSession`` per graph, execution providers chosen where present.

Providers, in order of preference when present: TensorRT, CUDA, CPU (the TensorRT and CUDA execution
providers come with ``onnxruntime-gpu``; nothing here imports a GPU library). ``onnxruntime`` itself is
imported when a runner is made, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import BaseRunner, TensorSpec
from .errors import EngineError

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's type strings -> numpy; a type missing here is not checked by ``infer`` (dtype None).
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


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


def _specs(values) -> dict[str, TensorSpec]:
    return {v.name: TensorSpec(v.name, np.dtype(_ORT_TYPES[v.type]) if v.type in _ORT_TYPES else None,
                               tuple(v.shape)) for v in values}


class OnnxRuntimeRunner(BaseRunner):
    """One ONNX graph in an ONNX Runtime session (created here, so a bad file fails at load)."""

    def __init__(self, name: str, path: str | Path, providers: Sequence[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(name)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        # No spin-waiting after a call: a rerank alternates sessions (query head, band, tail), and one
        # session's idle threads spinning for work slow the next session's call. On 2 cores, band and
        # tail called in turn took 106-132 ms per pair of calls with spinning, 61-63 ms without
        # (benchmarks/attention_bench.py shapes, docs/benchmarks.md); a session called alone loses ~4%.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"cannot load graph '{name}' from {path}: {exc}") from None
        self.path = Path(path)
        self._inputs = _specs(self.session.get_inputs())
        self._outputs = _specs(self.session.get_outputs())

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in order."""
        return list(self.session.get_providers())

    def input_metadata(self) -> dict[str, TensorSpec]:
        return self._inputs

    def output_metadata(self) -> dict[str, TensorSpec]:
        return self._outputs

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.__dict__.get("session")
        if session is None:
            raise EngineError(f"graph '{self.name}' is closed; open a new runner with engines.open_runner")
        names = list(self._outputs)
        return dict(zip(names, session.run(names, feed)))

    def close(self) -> None:
        # ONNX Runtime frees a session when its last reference goes; dropping ours is the release.
        self.__dict__.pop("session", None)
