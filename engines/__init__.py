"""The backend seam: every graph the toolkit runs is opened here, as a runner.

A runner (:class:`~.base.BaseRunner`) is a context manager whose ``infer(feed)`` checks input names,
dtypes, ranks and fixed dimensions against the backend's own metadata, then calls the backend's
``infer_impl``. :func:`open_runner` is the one way the runtime and the build's validation get a runner;
it picks the backend by name from ``BACKENDS``.

Backends:

* ``onnxruntime`` (:mod:`.onnxrt`): ONNX Runtime with the CPU, CUDA or TensorRT execution provider; the
  TensorRT EP's options from a profile, and IO binding with resident inputs for the CUDA EP.
* ``tensorrt`` (:mod:`.tensorrt`): native TensorRT plans built with polygraphy's lazy loaders and run by
  polygraphy's ``TrtRunner`` (unverified on hardware).

Beside them: :mod:`.profiles` (the shape ranges engines are built for), :mod:`.manifest` (``engines.json``,
checked before a plan is loaded), :mod:`.device` (the GPU, from the CUDA driver) and :mod:`.band_attention`
(the band step as one Triton kernel). Which backend opens which graph of a bundle is decided one level up,
in ``runtime/backends.py``: :func:`open_runner` opens a graph file in ONNX Runtime.

This package imports nothing of the runtime: its errors (:mod:`.errors`) are the project's root types.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from .base import BaseRunner, TensorSpec
from .errors import EngineError, MiniRerankerError
from .onnxrt import PREFERRED_PROVIDERS, OnnxRuntimeRunner, choose_providers

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BACKENDS", "BaseRunner", "EngineError", "MiniRerankerError", "OnnxRuntimeRunner",
           "PREFERRED_PROVIDERS", "TensorSpec", "choose_providers", "open_runner"]


def _open_onnxruntime(name: str, path: Path, providers: Sequence[str] | None, threads: int | None,
                      initializers: Mapping[str, np.ndarray] | None = None) -> BaseRunner:
    return OnnxRuntimeRunner(name, path, choose_providers(providers), threads, initializers=initializers)


# backend name -> opener(name, path, providers, threads); the TensorRT runner registers here (see above)
BACKENDS: dict[str, Callable[[str, Path, Sequence[str] | None, int | None], BaseRunner]] = {
    "onnxruntime": _open_onnxruntime,
}


def open_runner(name: str, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                backend: str = "onnxruntime", initializers: Mapping[str, np.ndarray] | None = None) -> BaseRunner:
    """A runner for the graph ``name`` stored at ``path``.

    ``providers``: ONNX Runtime execution providers, in order (None: every preferred one present, see
    :func:`choose_providers`). ``threads``: intra-op threads (None: the backend's default).
    ``initializers``: arrays the session uses for those of its weights instead of reading them
    (a bundle's shared weights, mapped once: runtime/weights.py).
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown engine backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if initializers:
        return BACKENDS[backend](name, Path(path), providers, threads, initializers)
    return BACKENDS[backend](name, Path(path), providers, threads)
