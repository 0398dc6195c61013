"""The torch reference pipeline, end to end, on Qwen2-VL and Qwen2.5-VL tiny checkpoints under the exact
spec: its scores equal transformers' own model on the full vision-first sequence (the oracle), |difference|
<= 1e-4 fp32, for image, text and image+text documents of different lengths scored in one batch, through
both ``ReferencePipeline`` and ``reference_scores``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.export.oracle import TransformersOracle  # noqa: E402
from minireranker.export.reference import ReferencePipeline, reference_scores  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

TOLERANCE = 1e-4
QUERY = "is there a cat on the mat?"


@pytest.mark.parametrize("preset", ["qwen2_vl_tiny", "qwen2_5_vl_tiny"])
def test_exact_spec_reference_equals_transformers(checkpoint_factory, images, preset):
    path = checkpoint_factory(preset)
    docs = [Document(image=images["chelsea_128x100"], text="a cat"), Document(text="A cat sleeps on a mat."),
            Document(image=images["camera_grey_90x120"]), Document(image=images["astronaut_70x45"])]
    pipeline = ReferencePipeline(path, RerankSpec.exact(), batch_size=3)  # 4 candidates: two batches, padded
    assert pipeline.spec.is_exact(pipeline.ckpt.config.text.num_layers)
    ours = pipeline.rerank(QUERY, docs)
    oracle = TransformersOracle(path, RerankSpec.exact())
    expected = np.array([oracle.score(QUERY, d) for d in docs])
    assert np.abs(ours - expected).max() <= TOLERANCE, np.abs(ours - expected).max()
    assert np.ptp(expected) > 1e-2, "scores must differ between documents for the test to mean anything"
    result = reference_scores(path, QUERY, docs, RerankSpec.exact())
    assert sorted(r["index"] for r in result["results"]) == list(range(len(docs)))
    np.testing.assert_allclose([r["score"] for r in result["results"]], np.sort(ours)[::-1], atol=1e-6, rtol=0)
