"""Optimization profiles: the shape range (min, opt, max) every dynamic input of a graph is built for.

TensorRT (native plans, and ONNX Runtime's TensorRT execution provider) builds an engine for a range of
shapes. A call outside the range fails (native) or triggers a rebuild that can take minutes (the EP), so the
ranges are chosen once, at ``minireranker engines`` time, from named **axes**::

    axis          what it counts                                 graphs with it
    batch         candidates per band/tail call                  band, tail
    hidden_batch  query rows given to the band (1 or batch)      band
    query_len     tokens of the query segment                    query_head, band, tail
    doc_len       tokens of one document (kept, after pruning    doc_prefix, band; guide (before pruning)
                  for doc_prefix and the band; all for guide)
    patches       image patches entering the vision tower        vision

An input's profile replaces each axis by its range and keeps every other dimension as the exported file
fixes it (bundle.json's record). The runtime's defaults (``runtime/backends.py``) cover every query and
image the runtime accepts, with ``opt`` at a typical call; ``--profile NAME=MIN:OPT:MAX`` (or ``GRAPH.NAME=...``)
overrides one. Torch-free and TensorRT-free: this module only computes shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import EngineError

AXES = ("batch", "hidden_batch", "query_len", "doc_len", "patches")
_OVERRIDE = re.compile(r"^(?:([a-z_/]+)\.)?([a-z_]+)=(\d+):(\d+):(\d+)$")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class AxisRange:
    """The sizes one axis is built for: ``min <= opt <= max``, all positive."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and v >= 1 for v in (self.min, self.opt, self.max)) \
                or not self.min <= self.opt <= self.max:
            raise EngineError(f"a profile range needs 1 <= MIN <= OPT <= MAX, got {self.min}:{self.opt}:{self.max}")

    def to_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class ShapeRange:
    """One input's three shapes (TensorRT's ``IOptimizationProfile.set_shape`` arguments)."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_overrides(items: Sequence[str]) -> dict[tuple[str | None, str], AxisRange]:
    """``["doc_len=1:512:2048", "guide.doc_len=1:1024:4096"]`` -> {(graph or None, axis): range}."""
    out: dict[tuple[str | None, str], AxisRange] = {}
    for item in items:
        match = _OVERRIDE.match(item.strip())
        if not match:
            raise EngineError(f"--profile {item!r}: write NAME=MIN:OPT:MAX or GRAPH.NAME=MIN:OPT:MAX, "
                              f"NAME one of {list(AXES)} (e.g. doc_len=1:512:2048)")
        graph, axis, lo, opt, hi = match.groups()
        if axis not in AXES:
            raise EngineError(f"--profile {item!r}: unknown axis {axis!r}; the axes are {list(AXES)}")
        out[(graph, axis)] = AxisRange(int(lo), int(opt), int(hi))
    return out


def apply_overrides(axes: Mapping[str, Mapping[str, AxisRange]],
                    overrides: Mapping[tuple[str | None, str], AxisRange]) -> dict[str, dict[str, AxisRange]]:
    """Per-graph axes with the overrides applied (a graph-qualified one wins over a plain one)."""
    out = {graph: dict(ranges) for graph, ranges in axes.items()}
    for (graph, axis), rng in sorted(overrides.items(), key=lambda kv: kv[0][0] is not None):
        targets = [graph] if graph is not None else [g for g in out if axis in out[g]]
        for g in targets:
            if g not in out or axis not in out[g]:
                raise EngineError(f"--profile {g}.{axis}: graph {g!r} has no axis {axis!r} "
                                  f"(its axes: {sorted(out.get(g, {}))}; graphs: {sorted(out)})")
            out[g][axis] = rng
    return out


def input_shape_range(graph: str, name: str, dims: Sequence[int | str], recorded: Sequence[int | str],
                      axes: Mapping[str, AxisRange]) -> ShapeRange:
    """The profile of input ``name``: ``dims`` as the graph I/O table names them, ``recorded`` as the
    exported file declares them (bundle.json: an int is fixed; a string is a dynamic axis)."""
    if len(dims) != len(recorded):
        raise EngineError(f"graph '{graph}' input '{name}': rank {len(recorded)} in the file, {len(dims)} in the "
                          "graph I/O table; rebuild the bundle")
    lo, opt, hi = [], [], []
    for axis, (dim, size) in enumerate(zip(dims, recorded)):
        if isinstance(dim, str) and dim in axes:
            rng = axes[dim]
            lo.append(rng.min), opt.append(rng.opt), hi.append(rng.max)
        elif isinstance(size, int):
            lo.append(size), opt.append(size), hi.append(size)
        else:
            raise EngineError(f"graph '{graph}' input '{name}' axis {axis} ({dim}) is dynamic in the file and "
                              f"no profile axis covers it (axes: {sorted(axes)})")
    return ShapeRange(tuple(lo), tuple(opt), tuple(hi))


def graph_profile(graph: str, table_inputs: Mapping[str, Sequence[int | str]],
                  recorded_inputs: Sequence[Mapping], axes: Mapping[str, AxisRange]) -> dict[str, ShapeRange]:
    """Every input of one graph that the exported file has (``recorded_inputs``: bundle.json's list)."""
    out = {}
    for record in recorded_inputs:
        name = record["name"]
        if name not in table_inputs:
            raise EngineError(f"graph '{graph}' has an input '{name}' the graph I/O table does not know; "
                              "rebuild the bundle")
        out[name] = input_shape_range(graph, name, table_inputs[name], record["shape"], axes)
    return out


def shape_string(profile: Mapping[str, ShapeRange], which: str) -> str:
    """ONNX Runtime's TensorRT EP profile option: ``"name:1x2x3,other:4x5"`` for ``which`` in min/opt/max."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(r, which))}" for name, r in profile.items())
