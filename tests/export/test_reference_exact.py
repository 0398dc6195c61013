"""The acceptance test of the foundation: exact-spec scores == transformers' Qwen3VLForConditionalGeneration.

Exact spec: A=0, B=E=L-1, keep 1. The oracle is transformers' own model, tokenizer, image processor and
rope index on the full vision-first sequence. Tolerance: |difference| <= 1e-4 on the score, fp32.
Documents of different lengths (image, text, image+text) are scored together in one batch.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.export.oracle import TransformersOracle  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

TOLERANCE = 1e-4
WORDS = ("where is the red cat sitting on a warm mat near seven old boats and three blue birds "
         "under the tall green tree by the river").split()


def query_of_length(tokenizer, n_tokens: int) -> str:
    """A query whose text encodes to exactly ``n_tokens`` tokens (digits are one token each)."""
    words, text = iter(WORDS * 8), ""
    while len(tokenizer.encode(text, add_special_tokens=False).ids) < n_tokens:
        candidate = (text + " " + next(words)).strip()
        if len(tokenizer.encode(candidate, add_special_tokens=False).ids) > n_tokens:
            break
        text = candidate
    while len(tokenizer.encode(text, add_special_tokens=False).ids) < n_tokens:
        text += "7"
    assert len(tokenizer.encode(text, add_special_tokens=False).ids) == n_tokens
    return text


def corpus(images) -> list[Document]:
    return [
        Document(image=images["astronaut_70x45"]),
        Document(text="A cat sleeps on a warm mat."),
        Document(image=images["chelsea_128x100"], text="a photo of a cat"),
        Document(image=images["camera_grey_90x120"]),
        Document(text="7"),
        Document(image=images["coffee_33x100"], text="coffee, black, in a white cup with a saucer"),
    ]


@pytest.fixture(scope="module", params=sorted(PRESETS))
def exact_pair(request, checkpoint_factory):
    path = checkpoint_factory(request.param)
    return ReferencePipeline(path, RerankSpec.exact(), batch_size=4), TransformersOracle(path, RerankSpec.exact())


@pytest.mark.parametrize("query_tokens", [1, 2, 9, 23, 64])
def test_exact_spec_equals_transformers(exact_pair, images, query_tokens):
    pipeline, oracle = exact_pair
    assert pipeline.spec.is_exact(pipeline.ckpt.config.text.num_layers)
    query = query_of_length(pipeline.template.tokenizer, query_tokens)
    docs = corpus(images)
    entries = [pipeline.index(d) for d in docs]
    assert len({e.num_tokens for e in entries}) >= 4, "candidates of different lengths share a batch"
    ours = pipeline.score(query, entries)  # 6 candidates, batch 4: padding and masks exercised
    expected = np.array([oracle.score(query, d) for d in docs])
    diff = np.abs(ours - expected)
    assert diff.max() <= TOLERANCE, f"max |ours - transformers| = {diff.max():.2e} > {TOLERANCE}"
    assert np.ptp(expected) > 1e-2, "scores must differ between documents for the test to mean anything"


def test_batch_composition_does_not_change_scores(exact_pair, images):
    """Scoring one candidate alone or among others of other lengths gives the same score (1e-5)."""
    pipeline, _ = exact_pair
    entries = [pipeline.index(d) for d in corpus(images)]
    together = pipeline.score("a cat", entries)
    alone = np.array([pipeline.score("a cat", [e])[0] for e in entries])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
