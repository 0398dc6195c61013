"""A bundle's shared weight files, mapped once per process and handed to every graph that reads them.

A build stores each distinct tensor once (export/shared_weights.py: ``onnx/weights.bin`` and
``onnx/weights.query.bin``), and bundle.json records, per graph, where each of its initializers lies. Here
each file is memory-mapped once (read-only, so the pages are the page cache's, shared with every other
process that maps the bundle), and a graph's session gets numpy views of it as its initializers
(engines/onnxrt.py), so a layer read by ``doc_prefix``, ``query_head`` and ``band`` is in memory once.

ONNX Runtime on a CPU without float16 matrix products (x86-64) computes a float16 graph in float32: it casts
each float16 weight once per session into memory of its own, so for a float16 bundle on such a CPU the
sharing saves the float16 copies only. Float32 bundles are the CPU deployment (docs/scale.md).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from .bundle import BundleError

_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}


class SharedWeights:
    """The weight files under one directory of a bundle, each mapped on first use and unmapped when the last
    view of it goes (the sessions' views hold the mapping): once a process closes its graphs, the weights'
    pages leave its memory. (Held for good, a build's end-to-end check kept a 2B model's 7 GiB mapped while
    it opened the torch reference.)"""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._maps: weakref.WeakValueDictionary[str, np.memmap] = weakref.WeakValueDictionary()

    def _map(self, file: str) -> np.memmap:
        held = self._maps.get(file)
        if held is None:
            path = self.root / file
            if Path(file).name != file or not path.is_file():
                raise BundleError(f"{path}: a shared weights file the bundle names is missing; rebuild the bundle")
            held = self._maps[file] = np.memmap(path, dtype=np.uint8, mode="r")
        return held

    def views(self, places: dict[str, list]) -> dict[str, np.ndarray]:
        """Initializer name -> a read-only view of its bytes, from a graph record's ``"initializers"``."""
        out = {}
        for name, (file, offset, dtype, shape) in places.items():
            if dtype not in _DTYPES:
                continue  # a type numpy cannot view (bfloat16): the session reads that one itself
            data = self._map(file)
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            end = offset + count * dt.itemsize
            if end > data.size:
                raise BundleError(f"{self.root / file}: initializer {name} lies past the end of the file; "
                                  "rebuild the bundle")
            out[name] = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape)
        return out

    def close(self) -> None:
        self._maps.clear()
