"""The runner interface every backend implements (modelled on Polygraphy's ``BaseRunner``).

A runner is one loaded graph (engine). Its public :meth:`BaseRunner.infer` checks the feed against the
backend's *own* metadata of the graph (input names, dtypes, ranks, fixed dimensions), so a wrong feed
fails with an :class:`~minireranker.engines.errors.EngineError` naming the graph, the input and what it
needs, and only then calls the backend's :meth:`BaseRunner.infer_impl`. Runners are context managers;
leaving the ``with`` block releases the backend's session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import EngineError


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the backend declares it: a dimension is an int (fixed) or a name/None (free)."""

    name: str
    dtype: np.dtype | None          # None: a type numpy has no name for (never fed by this project)
    shape: tuple[int | str | None, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)


class BaseRunner:
    """A loaded graph. Subclasses implement ``input_metadata``, ``output_metadata``, ``infer_impl``, ``close``."""

    def __init__(self, name: str) -> None:
        self.name = name

    # -- what a backend implements ----------------------------------------------------------------
    def input_metadata(self) -> dict[str, TensorSpec]:
        """The graph's inputs by name, in the graph's order, as the backend reports them."""
        raise NotImplementedError

    def output_metadata(self) -> dict[str, TensorSpec]:
        """The graph's outputs by name, in the graph's order, as the backend reports them."""
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on a feed ``infer`` has checked; returns every output by name."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's session (idempotent)."""

    # -- the public interface ---------------------------------------------------------------------
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feed`` against the graph's inputs, then run it; returns the outputs by name.

        Arrays the graph has no input for are left out rather than refused: an exporter may drop an
        input the graph does not use (e.g. an empty slice of system K/V), and the caller need not know.
        """
        inputs = self.input_metadata()
        checked = {name: value for name, value in feed.items() if name in inputs}
        for name, spec in inputs.items():
            if name not in checked:
                extra = sorted(set(feed) - set(inputs))
                hint = f" (it was given {extra}, which the graph has no input for)" if extra else ""
                raise EngineError(f"graph '{self.name}': input '{name}' was not given{hint}; "
                                  f"the graph's inputs are {list(inputs)}")
            checked[name] = self._check(spec, checked[name])
        return self.infer_impl(checked)

    def _check(self, spec: TensorSpec, value: object) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise EngineError(f"graph '{self.name}': input '{spec.name}' is a {type(value).__name__}, "
                              "needs a numpy array")
        if spec.dtype is not None and value.dtype != spec.dtype:
            raise EngineError(f"graph '{self.name}': input '{spec.name}' has dtype {value.dtype}, needs {spec.dtype}")
        if value.ndim != spec.rank:
            raise EngineError(f"graph '{self.name}': input '{spec.name}' has rank {value.ndim}, needs {spec.rank} "
                              f"(shape {list(spec.shape)})")
        for axis, (got, want) in enumerate(zip(value.shape, spec.shape)):
            if isinstance(want, int) and got != want:
                raise EngineError(f"graph '{self.name}': input '{spec.name}' has size {got} on axis {axis}, "
                                  f"needs {want} (shape {list(spec.shape)})")
        return value

    def __enter__(self) -> "BaseRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
