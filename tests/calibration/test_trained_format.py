"""The trained-format reference: query-first dense scores (Qwen3-VL-Reranker's own order) == transformers.

Tolerance: |score difference| <= 1e-4, fp32. The sequence's ids are checked against the published order
written out as one string (the query-first prompt tokenized whole, as Qwen3-VL-Reranker's code does).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.calibration.scoring import LoadedReranker, dense_scores, trained_dense_scores  # noqa: E402
from minireranker.export.oracle import TransformersOracle  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.errors import SpecError  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

TOLERANCE = 1e-4


@pytest.mark.parametrize("preset", ["tiny", "gqa3_odd_head", "qwen2_5_vl_tiny"])
def test_query_first_dense_equals_transformers(preset, checkpoint_factory, images):
    path = checkpoint_factory(preset)
    loaded = LoadedReranker(path)
    pipeline = loaded.pipeline(loaded.exact_spec())
    assert pipeline.spec.trained == "query-first"  # the default for the vision-first template
    docs = [Document(image=images["chelsea_128x100"], text="a cat", id="cat"), Document(text="seven", id="7"),
            Document(image=images["coffee_33x100"], id="coffee")]
    ours = trained_dense_scores(pipeline, "is there a cat?", docs)
    oracle = TransformersOracle(path, pipeline.spec)
    theirs = np.array([oracle.score_query_first("is there a cat?", d) for d in docs])
    assert np.abs(ours - theirs).max() <= TOLERANCE, (ours, theirs)
    # the format change is visible: the same weights read document first score otherwise
    assert np.abs(ours - dense_scores(pipeline, "is there a cat?", docs)).max() > 1e-3


def test_query_first_ids_are_the_published_order(checkpoint_factory):
    loaded = LoadedReranker(checkpoint_factory("tiny"))
    t = loaded.pipeline(loaded.exact_spec()).template
    tokens = t.query_first("?why", (1, 2), "a cat")
    expected = (t.system_ids + t.tokenizer.encode(
        f"<Instruct>: {t.spec.instruction}\n<Query>: ?why\n<Document>: <|vision_start|><|image_pad|><|image_pad|>"
        "<|vision_end|>a cat<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids)
    assert tokens.ids == expected and tokens.num_image == 2


def test_trained_is_checked():
    assert RerankSpec(template="jina-reranker-m0").filled().trained == "jina-reranker-m0"
    assert RerankSpec(trained="vision-first").filled().trained == "vision-first"
    with pytest.raises(SpecError, match="trained"):
        RerankSpec(template="jina-reranker-m0", trained="query-first").filled()
    with pytest.raises(SpecError, match="trained"):
        RerankSpec(trained="sideways").filled()
