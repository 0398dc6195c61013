"""The reranker loaded once and shared by every system that eval and calibrate score.

* :class:`LoadedReranker` holds the checkpoint's weights, one memoised vision tower (a document's visual
  features do not depend on the spec, so each image runs the tower once per process), the system
  segment's K/V and the embedder guides, so that a spec costs its own layers and nothing else.
* :class:`SharedReference` is :class:`~minireranker.export.reference.ReferencePipeline` over that shared
  state: the same graphs, the same ``index``/``score`` code, only without loading the weights again.
  A test checks that it scores exactly like a fresh ``ReferencePipeline``.
* :func:`dense_scores` is the plain model: the whole vision-first sequence (system + document + query)
  through every layer in one causal forward per pair, no cached segment, no band, no exit. Because it
  shares no code path with the segment graphs, ``max |exact - dense|`` is a real consistency check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..export.checkpoint import inherit_format, load_state_dict, open_checkpoint
from ..export.graphs import build_graphs, system_kv
from ..export.heads import build_head
from ..export.modeling import TorchModel, build_model
from ..export.pruning import EmbedderGuide
from ..export.reference import Counters, PreparedDocument, ReferencePipeline
from ..runtime.documents import Document
from ..runtime.spec import RerankSpec
from ..runtime.template import VisionFirstTemplate, document_positions, text_positions

TEMPLATE_FIELDS = ("template", "system", "instruction", "yes_token", "no_token", "head", "trained")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op threads (None: leave torch's setting), restoring it afterwards.

    Why eval and calibrate default to one: they run a small model as many small matmuls, where extra
    threads buy little and, on a machine whose cores are busy with other work, OpenMP's spin-waiting
    threads cost a lot (a tiny calibration measured 2.5 s with one thread, 17.5 s with two, on 2 shared cores).
    """
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _MemoVision:
    """The vision graph, memoised on the pixels: [N, C*T*p*p] -> (embeds, deepstack)."""

    def __init__(self, graph) -> None:
        self.graph, self.cache = graph, {}

    def __call__(self, pixels: Tensor, *grid: Tensor):
        key = hashlib.sha1(pixels.numpy().tobytes()).hexdigest() + str(tuple(pixels.shape))
        if key not in self.cache:
            self.cache[key] = self.graph(pixels, *grid)
        return self.cache[key]


class LoadedReranker:
    """A reranker checkpoint loaded once: weights, tokenizer, memoised vision, system K/V, guides."""

    def __init__(self, checkpoint: str | Path) -> None:
        from ..export.graphs import VisionGraph

        self.ckpt = open_checkpoint(checkpoint)
        self.num_layers = self.ckpt.config.text.num_layers
        self.model = build_model(self.ckpt.config, load_state_dict(self.ckpt)).eval()
        self.model.set_attention("portable")
        self.tokenizer = self.ckpt.load_tokenizer()
        self.vision = _MemoVision(VisionGraph(self.model))
        self._system: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
        self._guides: dict[tuple[str, int | None], EmbedderGuide] = {}
        self.prepared: dict[tuple[str, int], PreparedDocument] = {}

    @property
    def spec(self) -> RerankSpec:
        """The checkpoint's own spec (its minireranker.json, else exact), resolved."""
        return self.ckpt.spec

    def with_template(self, spec: RerankSpec, given: set[str] | None = None) -> RerankSpec:
        """``spec`` with the checkpoint's template strings where ``given`` does not name them: a spec file
        usually sets layers and pruning only, and the model must see the prompts it was trained with."""
        given = given or set()
        taken = {f: getattr(self.spec, f) for f in TEMPLATE_FIELDS if f not in given}
        if taken.get("head") is not None and not taken["head"].fits(spec.exit_layer):
            taken["head"] = None  # an exit head bound to another layer: the format's own head (filled later)
        return dataclasses.replace(spec, **taken)

    def exact_spec(self) -> RerankSpec:
        """The exact spec (A=0, B=E=L-1, keep 1, the query's own positions) with the checkpoint's template."""
        return self.with_template(RerankSpec.exact()).resolve(self.num_layers)

    def system_kv(self, system_ids: list[int]) -> tuple[Tensor, Tensor]:
        """System-segment K/V of every layer: [L, 1, Hkv, S, d] each, once per distinct system prompt."""
        key = tuple(system_ids)
        if key not in self._system:
            self._system[key] = system_kv(self.model, system_ids, self.num_layers)
        return self._system[key]

    def embedder_guide(self, path: str, guide_layer: int | None) -> EmbedderGuide:
        key = (path, guide_layer)
        if key not in self._guides:
            self._guides[key] = EmbedderGuide(path, self.ckpt, guide_layer)
        return self._guides[key]

    def pipeline(self, spec: RerankSpec, batch_size: int = 32) -> "SharedReference":
        return SharedReference(self, spec, batch_size)


class SharedReference(ReferencePipeline):
    """:class:`ReferencePipeline` on a :class:`LoadedReranker`'s weights (see the module docstring).

    Its ``__init__`` sets what ``ReferencePipeline.__init__`` sets, from the shared state; ``prepare`` is
    memoised per document id and system prompt (documents in a labelled set always carry an id).
    """

    def __init__(self, loaded: LoadedReranker, spec: RerankSpec, batch_size: int = 32) -> None:  # noqa: D107
        # deliberately not calling super().__init__: it would load the weights again
        self.loaded, self.ckpt, self.model = loaded, loaded.ckpt, loaded.model
        self.spec = inherit_format(spec, loaded.spec).resolve(loaded.num_layers)
        self.template = VisionFirstTemplate(loaded.tokenizer, self.spec)
        self.head = build_head(self.model, self.template, self.ckpt)
        self.batch_size = batch_size
        self.counters = Counters()
        pruning = self.spec.keep_ratio < 1.0
        self.guide = None
        if pruning and self.spec.guide.startswith("embedder:"):
            self.guide = loaded.embedder_guide(self.spec.guide[len("embedder:"):], self.spec.guide_layer)
        self.guide_layer = self.spec.guide_layer_for(loaded.num_layers) if pruning and self.guide is None else None
        self.graphs = build_graphs(self.model, self.band, self.exit_layer, self.head, self.guide_layer)
        self.graphs["vision"] = loaded.vision
        k, v = loaded.system_kv(self.template.system_ids)
        self.system_k, self.system_v = k[: self.exit_layer + 1], v[: self.exit_layer + 1]
        self.instruction_hidden, self.instruction_k, self.instruction_v = self.instruction_prefix()

    def prepare(self, doc: Document) -> PreparedDocument:
        if doc.id is None:
            return super().prepare(doc)
        key = (doc.id, len(self.template.system_ids))
        if key not in self.loaded.prepared:
            self.loaded.prepared[key] = super().prepare(doc)
        return self.loaded.prepared[key]


def run_causal(model: TorchModel, x: Tensor, positions: np.ndarray, deepstack: Tensor | None,
               num_layers: int) -> Tensor:
    """``num_layers`` decoder layers over one whole sequence, causal, no cache.

    x [1, T, D]; positions int64 [3, T]; deepstack [K, T, D] (zero off the visual rows), added after
    layer i < K as Qwen3-VL does -> hidden [1, T, D] at the output of layer ``num_layers - 1``.
    """
    cos, sin = model.rotary(torch.from_numpy(positions)[:, None], x.dtype)
    for i in range(num_layers):
        x, _, _ = model.layers[i](x, cos, sin)
        if deepstack is not None and i < deepstack.shape[0]:
            x = x + deepstack[i][None]
    return x


@torch.no_grad()
def dense_scores(pipeline: SharedReference, query: str, documents: list[Document]) -> np.ndarray:
    """The plain model's scores (logit yes - logit no at the last token): float64 [N].

    Each pair is one sequence ``system + document + instruction + query`` (``template.query``: the same
    ids as the segments the engines cache; positions continue at the document's max position + 1, Qwen3-VL's
    rope index) through all L layers, then the final norm and yes/no rows.
    """
    model, template = pipeline.model, pipeline.template
    system_ids, query_ids = template.system_ids, template.query(query)
    s, num_ds = len(system_ids), pipeline.num_deepstack
    head = model.embed_tokens(torch.tensor(system_ids))
    tail = model.embed_tokens(torch.tensor(query_ids))
    out = []
    for doc in documents:
        prep = pipeline.prepare(doc)
        x = torch.cat([head, prep.embeds, tail])[None]
        positions = np.concatenate([text_positions(0, s), prep.positions,
                                    text_positions(prep.query_start, len(query_ids))], axis=1)
        deepstack = None
        if num_ds:
            deepstack = x.new_zeros((num_ds, x.shape[1], x.shape[2]))
            if len(prep.visual_rows):
                deepstack[:, s + prep.visual_rows] = torch.stack(prep.deepstack)
        hidden = run_causal(model, x, positions, deepstack, pipeline.loaded.num_layers)
        out.append(float(pipeline.head(hidden[:, -1])[0]))
    return np.asarray(out, dtype=np.float64)


@torch.no_grad()
def trained_dense_scores(pipeline: SharedReference, query: str, documents: list[Document]) -> np.ndarray:
    """The plain model's scores in the order the checkpoint was trained in (``spec.trained``): float64 [N].

    ``query-first`` (Qwen3-VL-Reranker's own order, :meth:`VisionFirstTemplate.query_first`): each pair is
    one sequence system + instruction + query + document through all L layers, positions from 0 as
    Qwen3-VL's rope index gives them (the image after the query's text), then the head. A checkpoint
    trained in the format it runs in (document first) has :func:`dense_scores` as its trained-format
    reference, and that is what this returns for it.
    """
    if pipeline.spec.trained != "query-first":
        return dense_scores(pipeline, query, documents)
    model, template = pipeline.model, pipeline.template
    num_ds, out = pipeline.num_deepstack, []
    for doc in documents:
        prep = pipeline.prepare(doc)  # the vision tower's output, memoised per document
        tokens = template.query_first(query, prep.grid_hw, doc.text)
        x = model.embed_tokens(torch.tensor(tokens.ids)).clone()
        rows = torch.arange(tokens.image_start, tokens.image_start + tokens.num_image)
        if tokens.num_image:
            x[rows] = prep.embeds[prep.visual_rows]
        positions, _ = document_positions(0, tokens)
        deepstack = None
        if num_ds:
            deepstack = x.new_zeros((num_ds, *x.shape))
            if tokens.num_image:
                deepstack[:, rows] = torch.stack(prep.deepstack)
        hidden = run_causal(model, x[None], positions, deepstack, pipeline.loaded.num_layers)
        out.append(float(pipeline.head(hidden[:, -1])[0]))
    return np.asarray(out, dtype=np.float64)
