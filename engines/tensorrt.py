"""Native TensorRT plans: built with polygraphy's loaders, run by :class:`TensorRTRunner` (no torch).

Unverified on hardware: no machine this project is developed on has TensorRT (docs/engines.md lists what
was checked and how). Written against TensorRT 10's Python API and polygraphy 0.49+; ``tensorrt`` and
``polygraphy`` are imported only when a plan is built or loaded, so importing this module costs nothing.

The build chain of one graph (each ``XFromY`` is lazy: nothing runs, and TensorRT is not imported, until
the last loader is called)::

    NetworkFromOnnxPath(onnx, strongly_typed)          parse the ONNX graph
      -> CreateConfig(profiles=[Profile], fp16, int8,  one optimization profile over every dynamic input;
                      memory_pool_limits, timing cache)  the workspace pool; a shared timing cache
      -> EngineFromNetwork(save_timing_cache)          build
      -> SaveEngine(plan)                              write the serialized plan

Weights once. A bundle's ONNX graphs already hold every weight (once: export/shared_weights.py), so by default
a plan is built **weight-stripped** (``STRIP_PLAN`` with ``REFIT_IDENTICAL``, TensorRT 10.0 and later: the
builder optimizes for these very weights, and the plan keeps only what cannot be refitted) and, when it is
loaded, refitted from its graph's ONNX (``OnnxParserRefitter.refit_from_file``, which reads the shared weight
files through the graph's external data). The plans then add almost nothing to the bundle on disk. On the GPU
each engine holds its own copy of the weights it uses: TensorRT engines share no weights between them.

Precision. An fp16 bundle's graphs already carry fp16 types, so they are parsed **strongly typed** (the
network's types are obeyed; the only form TensorRT 11 accepts, which drops the FP16/INT8 builder flags). An
fp32 bundle with ``fp16=True`` uses the FP16 builder flag (weak typing), refused on TensorRT 11: build an
fp16 bundle instead. ``int8`` needs explicit Q/DQ nodes in the graph (TensorRT 11 has no implicit calibrators).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .base import BaseRunner, TensorSpec
from .errors import EngineError
from .profiles import ShapeRange

NO_TENSORRT = ("TensorRT is not installed: pip install \"minireranker[tensorrt]\" on a desktop (NVIDIA's tensorrt "
               "and polygraphy), or on a Jetson use JetPack's TensorRT (a virtual environment created with "
               "--system-site-packages) and pip install polygraphy (docs/engines.md)")


def import_tensorrt():
    """``tensorrt``, or one line saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise EngineError(NO_TENSORRT) from None
    return tensorrt


def _import_polygraphy_trt():
    try:
        from polygraphy.backend import trt as poly_trt
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise EngineError(NO_TENSORRT) from None
    G_LOGGER.module_severity = G_LOGGER.WARNING  # its [I] lines (TF32 advice...) are noise on our command line
    return poly_trt


def tensorrt_major(version: str) -> int:
    """10 for "10.3.0.26"."""
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise EngineError(f"cannot read the TensorRT version {version!r}") from None


class _WorkspaceLimit(Mapping):
    """``memory_pool_limits`` for polygraphy's CreateConfig, keyed by ``trt.MemoryPoolType.WORKSPACE``; the
    key is looked up only when the config is created, so building the loader chain never imports TensorRT."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _items(self) -> dict:
        return {import_tensorrt().MemoryPoolType.WORKSPACE: self.size}

    def __getitem__(self, key: Any) -> int:
        return self._items()[key]

    def __iter__(self) -> Iterator:
        return iter(self._items())

    def __len__(self) -> int:
        return 1

    def items(self):  # polygraphy iterates .items()
        return self._items().items()


def plan_loader(onnx_path: str | Path, plan_path: str | Path, profile: Mapping[str, ShapeRange],
                strongly_typed: bool, fp16: bool = False, int8: bool = False, workspace_bytes: int | None = None,
                timing_cache: str | Path | None = None, strip_weights: bool = False):
    """The lazy polygraphy chain that builds ``onnx_path`` into ``plan_path`` (see the module docstring);
    calling it builds and returns the engine. Nothing is imported from TensorRT until then.
    ``strip_weights``: a weight-stripped plan, to be refitted from ``onnx_path`` when loaded
    (:class:`TensorRTRunner` ``refit_from``)."""
    poly = _import_polygraphy_trt()
    if strongly_typed and (fp16 or int8):
        raise EngineError("a strongly typed network takes its precision from the graph: leave --fp16/--int8 out "
                          "for an fp16 bundle (its graphs are fp16 already)")
    trt_profile = poly.Profile()
    for name, r in profile.items():
        trt_profile.add(name, min=r.min, opt=r.opt, max=r.max)
    network = poly.NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed or None)
    cache = None if timing_cache is None else str(timing_cache)
    config = poly.CreateConfig(profiles=[trt_profile], fp16=fp16 or None, int8=int8 or None,
                               memory_pool_limits=None if not workspace_bytes else _WorkspaceLimit(workspace_bytes),
                               load_timing_cache=cache if cache and Path(cache).is_file() else None)
    if strip_weights:
        config = poly.PostprocessConfig(config, strip_plan_flags)
    engine = poly.EngineFromNetwork(network, config=config, save_timing_cache=cache)
    return poly.SaveEngine(engine, path=str(plan_path))


def strip_plan_flags(builder, network, config) -> None:
    """polygraphy's PostprocessConfig hook: a weight-stripped plan, refittable with the same weights only."""
    trt = import_tensorrt()
    for flag in ("STRIP_PLAN", "REFIT_IDENTICAL"):
        if not hasattr(trt.BuilderFlag, flag):
            raise EngineError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (weight-stripped plans need "
                              "TensorRT 10.0 or later): build with --keep-weights")
        config.set_flag(getattr(trt.BuilderFlag, flag))


def refit_from_onnx(trt, engine, onnx_path: str | Path, name: str) -> None:
    """Fill a weight-stripped ``engine`` with the weights of its graph ``onnx_path`` (its external data
    included); a graph that does not match the plan is an EngineError naming it."""
    logger = trt.Logger(trt.Logger.WARNING)
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        raise EngineError(f"cannot refit the TensorRT plan of graph '{name}' from {onnx_path}: {errors}; rebuild "
                          "the engines with `minireranker engines`")
    if not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights())
        raise EngineError(f"refitting the TensorRT plan of graph '{name}' left {len(missing)} weights unset "
                          f"({', '.join(missing[:5])}); rebuild the engines with `minireranker engines`")


def _numpy_dtype(trt, dtype) -> np.dtype | None:
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError):
        return None


class TensorRTRunner(BaseRunner):
    """One plan, deserialized here and run with polygraphy's ``TrtRunner`` (its CUDA wrapper, no torch).

    Inputs are numpy arrays on the host, copied to the device per call; outputs come back to the host.
    ``refit_from``: the graph's ONNX, for a weight-stripped plan (its weights are read from there).
    """

    def __init__(self, name: str, plan_path: str | Path, refit_from: str | Path | None = None) -> None:
        super().__init__(name)
        trt = import_tensorrt()
        poly = _import_polygraphy_trt()
        self.path = Path(plan_path)
        try:
            engine = poly.EngineFromPath(str(self.path))()
        except Exception as exc:  # TensorRT and polygraphy raise their own types
            raise EngineError(f"cannot load the TensorRT plan of graph '{name}' from {self.path}: {exc}; "
                              "rebuild it with `minireranker engines`") from None
        if refit_from is not None:
            refit_from_onnx(trt, engine, refit_from, name)
        self._inputs, self._outputs = {}, {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            spec = TensorSpec(tensor, _numpy_dtype(trt, engine.get_tensor_dtype(tensor)),
                              tuple(d if d >= 0 else None for d in engine.get_tensor_shape(tensor)))
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[tensor] = spec
        self._runner = poly.TrtRunner(engine)
        self._runner.activate()

    def input_metadata(self) -> dict[str, TensorSpec]:
        return self._inputs

    def output_metadata(self) -> dict[str, TensorSpec]:
        return self._outputs

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self.__dict__.get("_runner")
        if runner is None:
            raise EngineError(f"graph '{self.name}' is closed; open a new runner with engines.open_runner")
        out = runner.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        return {name: np.array(out[name]) for name in self._outputs}

    def close(self) -> None:
        runner = self.__dict__.pop("_runner", None)
        if runner is not None:
            runner.deactivate()
