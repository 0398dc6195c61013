"""Approximate specs vs the transformers oracle (layer-dependent mask, pruned tokens dropped with their
positions kept, read at layer E), pruning guides vs transformers' eager attentions, and 'once per query'.

Tolerances: scores |difference| <= 1e-4 (fp32); guide attentions atol 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.export.oracle import TransformersOracle, embedder_guide_attention  # noqa: E402
from minireranker.export.pruning import num_kept, select_kept  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

TOLERANCE = 1e-4


def specs_for(num_layers: int, embedder: str) -> dict[str, RerankSpec]:
    last = num_layers - 1
    return {
        "early_exit": RerankSpec(exit_layer=max(0, last - 1), band=(0, max(0, last - 1))),
        "band_pruned": RerankSpec(exit_layer=min(last, 2), band=(1, 1), keep_ratio=0.5, query_position=64),
        "band0_fixed_query": RerankSpec(exit_layer=last, band=(0, 0), keep_ratio=0.25, query_position=48),
        "embedder_guide": RerankSpec(exit_layer=last, band=(1, last), keep_ratio=0.5, query_position=40,
                                     guide="embedder:" + embedder),
    }


def corpus(images) -> list[Document]:
    return [
        Document(image=images["rocket_128x128"]),
        Document(text="A rocket on the launch pad."),
        Document(image=images["chelsea_128x100"], text="a cat"),
        Document(image=images["astronaut_70x45"]),
    ]


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("spec_name", ["early_exit", "band_pruned", "band0_fixed_query", "embedder_guide"])
def test_approximate_spec_equals_oracle(checkpoint_factory, images, preset, spec_name):
    path = checkpoint_factory(preset)
    embedder = checkpoint_factory(preset, seed=7)
    num_layers = ReferencePipeline(path).ckpt.config.text.num_layers
    spec = specs_for(num_layers, str(embedder))[spec_name]
    pipeline, oracle = ReferencePipeline(path, spec, batch_size=3), TransformersOracle(path, spec)
    docs = corpus(images)
    entries = [pipeline.index(d) for d in docs]
    query = "is this a rocket or a cat?"
    ours = pipeline.score(query, entries)
    expected = np.array([oracle.score(query, d, e.kept_visual) for d, e in zip(docs, entries)])
    assert np.abs(ours - expected).max() <= TOLERANCE, np.abs(ours - expected).max()
    # The spec must change something, or this test proves nothing about the band/exit/pruning.
    exact = ReferencePipeline(path, RerankSpec.exact()).rerank(query, docs)
    assert np.abs(ours - exact).max() > 1e-3
    if spec.keep_ratio < 1:
        for doc, entry in zip(docs, entries):
            if doc.image is not None:
                full = pipeline.prepare(doc)
                assert len(entry.kept_visual) == num_kept(len(full.visual_rows), spec.keep_ratio)
                # kept tokens keep their original 3-D positions
                kept_rows = full.visual_rows.numpy()[entry.kept_visual]
                keep = np.ones(len(full.ids), bool)
                keep[np.setdiff1d(full.visual_rows.numpy(), kept_rows)] = False
                np.testing.assert_array_equal(entry.positions, full.positions[:, keep])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_self_guide_attention_equals_transformers(checkpoint_factory, images, preset):
    path = checkpoint_factory(preset)
    spec = RerankSpec(band=(0, 1), exit_layer=1, keep_ratio=0.5, guide_layer=1)
    pipeline, oracle = ReferencePipeline(path, spec), TransformersOracle(path, spec)
    doc = Document(image=images["rocket_128x128"], text="a rocket")
    ours = pipeline.importance(doc, pipeline.prepare(doc))
    expected = oracle.self_guide_attention(doc, layer=1)
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)
    assert np.ptp(expected) > 0


def test_embedder_guide_attention_equals_transformers(checkpoint_factory, images):
    path, embedder = checkpoint_factory("tiny"), checkpoint_factory("tiny", seed=7)
    spec = RerankSpec(keep_ratio=0.5, guide=f"embedder:{embedder}")
    pipeline = ReferencePipeline(path, spec)
    doc = Document(image=images["chelsea_128x100"], text="a cat")
    ours = pipeline.importance(doc, pipeline.prepare(doc))
    np.testing.assert_allclose(ours, embedder_guide_attention(embedder, doc), atol=1e-6, rtol=0)
    # a different guide ranks differently: the embedder's weights, not the reranker's, decide
    self_rank = ReferencePipeline(path, RerankSpec(keep_ratio=0.5)).importance(doc, pipeline.prepare(doc))
    assert not np.allclose(ours, self_rank)


def test_query_head_runs_once_per_query(tiny_checkpoint, images):
    """Count real calls of layers 0..A-1 during score(): one per layer per query, for 1, 5 or 11 candidates."""
    spec = RerankSpec(exit_layer=3, band=(2, 2), keep_ratio=0.5, query_position=64)
    pipeline = ReferencePipeline(tiny_checkpoint, spec, batch_size=4)
    docs = [Document(image=images[name]) for name in sorted(images)] + [Document(text=f"doc {i}") for i in range(6)]
    entries = [pipeline.index(d) for d in docs]
    calls: dict[int, int] = {}
    for i, layer in enumerate(pipeline.model.layers):
        layer.register_forward_pre_hook(lambda m, args, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
    for n in (1, 5, 11):
        calls.clear()
        pipeline.score("a rocket", entries[:n])
        batches = -(-n // 4)
        assert calls.get(0) == 1 and calls.get(1) == 1, calls  # the query head: once, whatever n
        assert calls.get(2) == batches and calls.get(3) == batches, calls  # band and tail: once per batch
    # and the shared query head does not change the scores: each candidate alone gives the same score
    together = pipeline.score("a rocket", entries)
    alone = np.array([pipeline.score("a rocket", [e])[0] for e in entries])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_select_kept_is_deterministic_with_ties():
    importance = np.array([0.1, 0.5, 0.5, 0.2, 0.5, 0.0])
    np.testing.assert_array_equal(select_kept(importance, 0.5), [1, 2, 4])
    np.testing.assert_array_equal(select_kept(importance, 0.34), [1, 2, 4])  # ceil(0.34*6) = 3
    np.testing.assert_array_equal(select_kept(importance, 0.3), [1, 2])      # ties: the earlier token
    np.testing.assert_array_equal(select_kept(importance, 1e-6), [1])        # at least one token
    np.testing.assert_array_equal(select_kept(importance, 1.0), np.arange(6))


def test_text_only_documents_are_not_pruned(tiny_checkpoint):
    pipeline = ReferencePipeline(tiny_checkpoint, RerankSpec(keep_ratio=0.25))
    entry = pipeline.index(Document(text="only text here"))
    assert entry.kept_visual is None
    assert entry.num_tokens == len(pipeline.template.document(None, "only text here").ids)
