"""The band reaches the runtime's scores: they equal transformers with the layer-dependent mask (export/oracle.py)
and are far from the same spec without the band restriction.

The parity tests compare the runtime with our torch reference, so a band that export and runtime both ignored
would pass them; here the oracle owes nothing to our code. Tolerance: |runtime - oracle| <= 1e-4 (fp32, as
tests/runtime/test_runtime_parity.py); the band must move every score by more than 100 times that.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.export.oracle import TransformersOracle  # noqa: E402
from minireranker.runtime.bundle import load_bundle  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.reranker import Reranker  # noqa: E402

TOLERANCE = 1e-4           # fp32 runtime vs the oracle: the runtime-parity tolerance
BAND_EFFECT = 100 * TOLERANCE  # the least |banded - unbanded| score difference for the test to have power
QUERY = "is there a rocket or a cat?"


def corpus(images) -> list[Document]:
    return [
        Document(image=images["rocket_128x128"], id="rocket"),
        Document(text="A rocket on the launch pad.", id="text-rocket"),
        Document(image=images["chelsea_128x100"], text="a cat", id="cat"),
    ]


def test_runtime_scores_follow_the_band_of_the_oracle(tiny_bundle, images, tmp_path):
    bundle = load_bundle(tiny_bundle)
    spec = bundle.spec  # resolved: exit 3, band [1, 2], keep 0.5, query_position 64
    assert spec.band != (0, spec.exit_layer), "the bundle's spec must restrict the band, or this proves nothing"
    checkpoint = bundle.data["source"]["checkpoint"]
    docs = corpus(images)
    with Reranker(bundle, tmp_path / "cache") as runtime:
        out = runtime.rerank(QUERY, docs)
        assert not out.failed
        got = np.array([r.score for r in sorted(out.results, key=lambda r: r.index)])
        kept = [runtime.store.get(runtime.key(d)).meta.get("kept_visual") for d in docs]
    kept = [None if k is None else np.asarray(k) for k in kept]  # the oracle drops the tokens the runtime dropped
    banded = TransformersOracle(checkpoint, spec)
    unbanded = TransformersOracle(checkpoint, dataclasses.replace(spec, band=(0, spec.exit_layer)))
    with_band = np.array([banded.score(QUERY, d, k) for d, k in zip(docs, kept)])
    without_band = np.array([unbanded.score(QUERY, d, k) for d, k in zip(docs, kept)])
    print("|runtime - oracle|", np.abs(got - with_band), "|runtime - unbanded oracle|", np.abs(got - without_band))
    assert np.abs(got - with_band).max() <= TOLERANCE, np.abs(got - with_band).max()
    assert np.abs(got - without_band).min() > BAND_EFFECT, np.abs(got - without_band)
