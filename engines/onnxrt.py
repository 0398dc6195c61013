"""The ONNX Runtime runner: one ``InferenceSession`` per graph, execution providers chosen where present.

Providers, in order of preference when present: TensorRT, CUDA, CPU (the TensorRT and CUDA execution
providers come with ``onnxruntime-gpu``; nothing here imports a GPU library). ``onnxruntime`` itself is
imported when a runner is made, so importing this module costs nothing.

Two GPU options (``minireranker engines --backend onnxruntime-tensorrt|onnxruntime-cuda``; unverified on
hardware, docs/engines.md):

* :func:`tensorrt_provider_options`: the TensorRT EP's engine and timing caches in the bundle's engines
  folder and an explicit profile for every dynamic input, so a new shape inside the range never rebuilds;
* ``io_binding``: calls go through an ``IOBinding``; inputs named in ``resident`` (the system K/V, which every
  call of a bundle passes unchanged) are copied to the device once and bound from there afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .base import BaseRunner, TensorSpec
from .errors import EngineError
from .profiles import ShapeRange, shape_string

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's type strings -> numpy; a type missing here is not checked by ``infer`` (dtype None).
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


NO_ONNXRUNTIME = ("ONNX Runtime is not installed: pip install \"minireranker[cpu]\" on a CPU machine, "
                  "\"minireranker[gpu]\" for CUDA/TensorRT on a desktop GPU, or NVIDIA's onnxruntime-gpu wheel on a "
                  "Jetson (docs/engines.md)")


def import_onnxruntime():
    """``onnxruntime`` (the CPU or the GPU build: one import name), or one line saying which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise EngineError(NO_ONNXRUNTIME) from None
    return onnxruntime


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The requested providers (each must be available), or every preferred one that is."""
    ort = import_onnxruntime()

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EngineError(f"execution provider(s) {missing} are not available here (available: {available}); "
                              "install onnxruntime-gpu for CUDA/TensorRT, or choose CPUExecutionProvider")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available]


def tensorrt_provider_options(profile: Mapping[str, ShapeRange], cache_dir: str | Path, fp16: bool = False,
                              int8: bool = False, workspace_bytes: int | None = None,
                              prefix: str | None = None) -> dict[str, str]:
    """Options of ONNX Runtime's TensorRT EP for one graph: caches under ``cache_dir`` (engine files named
    ``prefix``...), ``trt_profile_min/opt/max_shapes`` listing every dynamic input of ``profile``."""
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
               "trt_fp16_enable": str(bool(fp16)), "trt_int8_enable": str(bool(int8))}
    if prefix:
        options["trt_engine_cache_prefix"] = prefix
    if workspace_bytes:
        options["trt_max_workspace_size"] = str(int(workspace_bytes))
    dynamic = {name: r for name, r in profile.items() if r.min != r.max}
    if dynamic:
        for which in ("min", "opt", "max"):
            options[f"trt_profile_{which}_shapes"] = shape_string(dynamic, which)
    return options


def _specs(values) -> dict[str, TensorSpec]:
    return {v.name: TensorSpec(v.name, np.dtype(_ORT_TYPES[v.type]) if v.type in _ORT_TYPES else None,
                               tuple(v.shape)) for v in values}


class OnnxRuntimeRunner(BaseRunner):
    """One ONNX graph in an ONNX Runtime session (created here, so a bad file fails at load).

    ``providers``: names, or ``(name, options)`` pairs as ONNX Runtime takes them. ``io_binding``: the
    device ("cuda"; "cpu" in tests) whose IOBinding every call uses, with ``resident`` input names uploaded
    once (module docstring); None: plain ``session.run``. ``custom_ops_library``: a shared library of
    custom-domain ops registered on the session (onnxruntime-extensions' for the plugin form's validation,
    export/plugin_attention.py); ``model_bytes``: the graph to load instead of the file at ``path``.
    ``initializers``: arrays used for those weights instead of the file's (shared weights, runtime/weights.py);
    ``prepack``: False leaves each weight as read (no per-session packed copy: half the memory, slower calls).
    """

    def __init__(self, name: str, path: str | Path, providers: Sequence[str | tuple[str, dict]],
                 threads: int | None = None, io_binding: str | None = None, resident: Sequence[str] = (),
                 custom_ops_library: str | None = None, model_bytes: bytes | None = None,
                 initializers: Mapping[str, np.ndarray] | None = None, prepack: bool = True) -> None:
        ort = import_onnxruntime()

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
        if custom_ops_library:
            options.register_custom_ops_library(custom_ops_library)
        # Shared weights: the session computes with these arrays (views of one mapping of the bundle's
        # weight files, runtime/weights.py) instead of reading its own copy, so graphs that share a layer
        # hold it once. Pre-packing would copy each weight into a per-session layout, so it is off then.
        self._shared = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in (initializers or {}).items()}
        for name, value in self._shared.items():
            options.add_initializer(name, value)
        if self._shared or not prepack:  # prepack=False: a session that runs a few times (a build's checks)
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self.session = ort.InferenceSession(model_bytes if model_bytes is not None else str(path), options,
                                                providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"cannot load graph '{name}' from {path}: {exc}") from None
        self.path = Path(path)
        self._ort = ort
        self._binding = io_binding
        self._resident = frozenset(resident)
        self._on_device: dict[str, tuple[tuple, Any]] = {}  # name -> (the host array's identity, OrtValue)
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
        if self._binding:
            return self._infer_bound(session, feed, names)
        return dict(zip(names, session.run(names, feed)))

    def _infer_bound(self, session, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One call through an IOBinding on device 0; resident inputs are uploaded once (unverified on a GPU)."""
        binding = session.io_binding()
        for name, array in feed.items():
            if name in self._resident:
                identity = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
                held = self._on_device.get(name)
                if held is None or held[0] != identity:
                    held = self._on_device[name] = (identity, self._ort.OrtValue.ortvalue_from_numpy(
                        np.ascontiguousarray(array), self._binding, 0))
                binding.bind_ortvalue_input(name, held[1])
            else:
                binding.bind_cpu_input(name, array)
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def close(self) -> None:
        # ONNX Runtime frees a session when its last reference goes; dropping ours is the release.
        self.__dict__.pop("session", None)
        self._on_device, self._shared = {}, {}
