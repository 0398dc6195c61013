"""One model's share of a bundle at run time (the reranker's or its embedder guide's): tokenizer, token
embedding table, system K/V, and its graphs opened through :mod:`minireranker.engines`, each checked
against the graph I/O table when it is loaded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..engines import BaseRunner, TensorSpec
from .bundle import Bundle, BundleError
from .graph_io import GRAPH_IO, GUIDE, VISION, GraphIO
from .preprocess import preprocess_image
from .template import DocumentTokens
from .vision_inputs import vision_inputs


class Encoder:
    """Tokenizer, embedding table, system K/V and vision engine of one model (reranker or embedder)."""

    def __init__(self, bundle: Bundle, root: Path, model: dict, graphs: dict,
                 open_graph: Callable[[str, dict], BaseRunner], prefix: str = "") -> None:
        """``open_graph(key, record)``: the backend's runner factory (runtime/backends.py); keys are
        ``prefix`` + the graph's name ("embedder/vision" for the embedder's)."""
        import tokenizers

        self.tokenizer = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
        self.embed = np.load(root / "embed_tokens.npy", mmap_mode="r")
        self.system_k = np.load(root / "system_k.npy")
        self.system_v = np.load(root / "system_v.npy")
        self.model = model
        self.runners: dict[str, LazyRunner] = {}
        for name, g in graphs.items():
            def check(runner: BaseRunner, name: str = name, g: dict = g) -> None:
                wrong = GRAPH_IO[name].mismatches(runner.input_metadata(), runner.output_metadata(), self.dtype)
                if wrong:
                    raise BundleError(f"{bundle.path}: graph '{name}' ({g['file']}) does not fit the graph I/O "
                                      f"table: {'; '.join(wrong)}; rebuild it with `minireranker build`")

            runner = self.runners[name] = LazyRunner(prefix + name, lambda k=prefix + name, g=g: open_graph(k, g), check)
            # bundle.json's record of the graph's I/O is the file's own when checksums vouch for the file
            recorded = _recorded(g) if bundle.integrity.get("checked") == "sha256" else None
            if recorded is None:
                runner.open()  # a bundle checked by size only, or without the record: open it now to check it
            else:
                check(recorded)

    def close_graphs(self, names=None) -> None:
        """Release the sessions of ``names`` (None: all); a released graph opens again on its next call."""
        for name, runner in self.runners.items():
            if names is None or name in names:
                runner.close()

    def run(self, io: GraphIO, **arrays: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """One call of the graph ``io`` names, fed and read in the table's order."""
        return io.unpack(self.runners[io.name].infer(io.feed(**arrays)))

    @property
    def dtype(self) -> np.dtype:
        return self.embed.dtype

    def vision(self, image, preprocess, timings: dict | None = None, prepared: tuple | None = None
               ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Vision tower over ``image`` (or over ``prepared``, what ``preprocess_image`` returned for it)."""
        t0 = time.perf_counter()
        pixels, grid = prepared if prepared is not None else preprocess_image(image, preprocess)
        v = self.model["vision"]
        # window_size (pixels) is in bundle.json only for a tower with window attention (Qwen2.5-VL)
        window = v.get("window_size", 0) // v["merge_size"] // v["patch_size"]
        vi = vision_inputs(grid[1], grid[2], v["merge_size"], v["side"], v["head_dim"], v["rope_theta"], window)
        t1 = time.perf_counter()
        embeds, deepstack = self.run(
            VISION, pixel_values=pixels.astype(self.dtype), pos_index=vi.pos_index,
            pos_weight=vi.pos_weight.astype(self.dtype), rot_cos=vi.rot_cos.astype(self.dtype),
            rot_sin=vi.rot_sin.astype(self.dtype), window_id=vi.window_id)
        add_time(timings, "preprocess", t1 - t0)
        add_time(timings, "vision", time.perf_counter() - t1)
        m = v["merge_size"]
        return embeds, deepstack, (grid[1] // m, grid[2] // m)

    def sequence(self, tokens: DocumentTokens, embeds: np.ndarray | None, deepstack: np.ndarray | None):
        """Token embeddings with the image rows filled, and dense DeepStack [K, Td, D] (None if K = 0)."""
        x = np.array(self.embed[np.asarray(tokens.ids)], dtype=self.dtype)
        rows = np.arange(tokens.image_start, tokens.image_start + tokens.num_image)
        if embeds is not None:
            x[rows] = embeds
        dense = None
        if self.model["num_deepstack"]:
            dense = np.zeros((self.model["num_deepstack"], *x.shape), dtype=self.dtype)
            if deepstack is not None:
                dense[:, rows] = deepstack
        return x, rows, dense

    def guide(self, x: np.ndarray, positions: np.ndarray, dense: np.ndarray | None, layer: int) -> np.ndarray:
        (attention,) = self.run(GUIDE, embeds=x[None], positions=positions[:, None],
                                system_k=self.system_k[: layer + 1], system_v=self.system_v[: layer + 1],
                                deepstack=dense)
        return attention.astype(np.float64)


class _Recorded(BaseRunner):
    """A graph's inputs and outputs as bundle.json records them (checked at load, before any session)."""

    def __init__(self, name: str, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec]) -> None:
        super().__init__(name)
        self._inputs, self._outputs = inputs, outputs

    def input_metadata(self) -> dict[str, TensorSpec]:
        return self._inputs

    def output_metadata(self) -> dict[str, TensorSpec]:
        return self._outputs


def _recorded(record: dict) -> _Recorded | None:
    def specs(values: list[dict]) -> dict[str, TensorSpec]:
        return {v["name"]: TensorSpec(v["name"], None if v["dtype"] is None else np.dtype(v["dtype"]),
                                      tuple(v["shape"])) for v in values}
    try:
        return _Recorded(record["file"], specs(record["inputs"]), specs(record["outputs"]))
    except (KeyError, TypeError, ValueError):
        return None


class LazyRunner(BaseRunner):
    """A graph whose session is created on its first call, so a process holds the engines it uses only
    (a rerank never loads the vision tower and the document prefix; an index never loads the band and tail).
    ``check`` runs on the opened runner (the graph I/O table's check); :meth:`close` releases the session."""

    def __init__(self, name: str, opener: Callable[[], BaseRunner], check: Callable[[BaseRunner], None]) -> None:
        super().__init__(name)
        self._opener, self._check = opener, check
        self._runner: BaseRunner | None = None
        self._lock = threading.Lock()  # a server's threads: one session per graph

    @property
    def is_open(self) -> bool:
        return self._runner is not None

    def open(self) -> BaseRunner:
        runner = self._runner
        if runner is not None:
            return runner
        with self._lock:
            if self._runner is None:
                runner = self._opener()
                try:
                    self._check(runner)
                except BaseException:
                    runner.close()
                    raise
                self._runner = runner
            return self._runner

    def __getattr__(self, attr: str):  # what a backend's runner adds (providers, path): from the open one
        if attr in ("_opener", "_check", "_runner", "_lock"):  # before __init__ set them (copy, pickle)
            raise AttributeError(attr)
        return getattr(self.open(), attr)

    def input_metadata(self) -> dict[str, TensorSpec]:
        return self.open().input_metadata()

    def output_metadata(self) -> dict[str, TensorSpec]:
        return self.open().output_metadata()

    def infer(self, feed):
        return self.open().infer(feed)

    def infer_impl(self, feed):
        return self.open().infer_impl(feed)

    def close(self) -> None:
        with self._lock:
            if self._runner is not None:
                self._runner.close()
                self._runner = None


def add_time(timings: dict[str, float] | None, stage: str, seconds: float) -> None:
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + seconds
