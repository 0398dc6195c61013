"""The kept-token choice end to end: transformers' own attention picks the top-k, and the reference pipeline
and the runtime keep exactly those visual tokens.

The other pruning tests hand the oracle the pipeline's own kept tokens, or check the guide's attention and
``select_kept`` apart; here the expected choice is made from transformers' eager attention alone, reduced as
export/pruning.py documents: the last token's attention at the guide layer (self: the band's first layer A;
embedder: its last layer), averaged over heads, the ``ceil(keep_ratio * n)`` largest (at least one) kept, in
their original order, ties to the earlier token.

Ties: the two sides compute the attention in different arithmetic, |difference| <= TIE = 1e-6 (the
tolerance of test_reference_approx's guide tests). When the k-th and (k+1)-th largest attentions are
within 2 * TIE, the tokens that close to the cut may fall on either side of it; every other token must be
kept or dropped exactly as transformers says, and the count is always k. At most one document per test
may have such a near-tie, so the check keeps its meaning. (Exact ties, broken towards the earlier token,
are test_reference_approx's test_select_kept_is_deterministic_with_ties.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.export.oracle import TransformersOracle, embedder_guide_attention  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.reranker import Reranker  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

TIE = 1e-6


def documents(images) -> list[Document]:
    """Every image, some with a caption (the caption changes the guide's last-token attention)."""
    docs = [Document(image=img, id=name) for name, img in sorted(images.items())]
    docs.append(Document(image=images["chelsea_128x100"], text="a cat on a sofa", id="cat+text"))
    docs.append(Document(image=images["rocket_128x128"].rotate(90), text="a rocket", id="rocket+text"))
    return docs


def transformers_choice(attention: np.ndarray, keep_ratio: float) -> tuple[int, set[int], set[int]]:
    """(k, tokens that must be kept, tokens that must be dropped) from transformers' attention, written out
    here rather than calling the project's select_kept. With the k-th and (k+1)-th largest attentions more
    than 2 * TIE apart every token is in one of the sets; otherwise the tokens within 2 * TIE of the cut are
    in neither (near-ties: either side's rounding may put them on either side)."""
    n = len(attention)
    k = max(1, math.ceil(keep_ratio * n))
    order = sorted(range(n), key=lambda i: (-attention[i], i))  # largest first, ties to the earlier token
    if k == n:
        return k, set(range(n)), set()
    hi, lo = attention[order[k - 1]], attention[order[k]]
    if hi - lo > 2 * TIE:
        return k, set(order[:k]), set(order[k:])
    return k, {i for i in range(n) if attention[i] > hi + 2 * TIE}, {i for i in range(n) if attention[i] < lo - 2 * TIE}


def check_kept(kept: np.ndarray, attention: np.ndarray, keep_ratio: float, label: str) -> bool:
    """Assert ``kept`` is transformers' top-k in original order; returns whether the cut was a near-tie."""
    k, must_keep, must_drop = transformers_choice(attention, keep_ratio)
    got = [int(i) for i in np.asarray(kept)]
    assert got == sorted(set(got)), (label, got)  # ascending: the original order, no repeats
    assert len(got) == k, (label, len(got), k)
    assert must_keep <= set(got), (label, "not kept:", sorted(must_keep - set(got)))
    assert not must_drop & set(got), (label, "kept but outside the top-k:", sorted(must_drop & set(got)))
    return len(must_keep) + len(must_drop) < len(attention)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
def test_reference_keeps_transformers_top_k_with_the_self_guide(checkpoint_factory, images, preset, keep_ratio):
    path = checkpoint_factory(preset)
    spec = RerankSpec(exit_layer=1, band=(0, 1), keep_ratio=keep_ratio, query_position=64)  # guide layer: A = 0
    pipeline, oracle = ReferencePipeline(path, spec), TransformersOracle(path, spec)
    docs = documents(images)
    ties = sum(check_kept(pipeline.index(doc).kept_visual, oracle.self_guide_attention(doc, layer=0), keep_ratio,
                          doc.id) for doc in docs)
    assert ties <= 1, f"{ties} of {len(docs)} documents have a near-tie at the cut: the check says little"


@pytest.mark.parametrize("guide_layer", [None, 0])
def test_reference_keeps_transformers_top_k_with_the_embedder_guide(checkpoint_factory, images, guide_layer):
    path, embedder = checkpoint_factory("tiny"), checkpoint_factory("tiny", seed=7)
    spec = RerankSpec(keep_ratio=0.5, guide=f"embedder:{embedder}", guide_layer=guide_layer)
    pipeline = ReferencePipeline(path, spec)
    docs = documents(images)
    ties = sum(check_kept(pipeline.index(doc).kept_visual, embedder_guide_attention(embedder, doc, layer=guide_layer),
                          0.5, doc.id) for doc in docs)  # layer None: the embedder's last layer
    assert ties <= 1, f"{ties} of {len(docs)} documents have a near-tie at the cut: the check says little"


def test_runtime_keeps_transformers_top_k(tiny_bundle, tiny_checkpoint, images, tmp_path):
    """The built bundle (tiny preset, keep 0.5, self guide at A = 1) stores the same kept tokens."""
    spec = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64)  # as tiny_bundle
    oracle = TransformersOracle(tiny_checkpoint, spec)
    docs = documents(images)
    ties = 0
    with Reranker(tiny_bundle, tmp_path / "cache") as runtime:
        assert runtime.bundle.spec == spec.resolve(oracle.model.config.text_config.num_hidden_layers)
        runtime.index(docs)
        for doc in docs:
            kept = runtime.store.get(runtime.key(doc)).meta["kept_visual"]
            ties += check_kept(kept, oracle.self_guide_attention(doc, layer=1), 0.5, doc.id)
    assert ties <= 1, f"{ties} of {len(docs)} documents have a near-tie at the cut: the check says little"
