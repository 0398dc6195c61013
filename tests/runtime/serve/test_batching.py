"""Dynamic batching: pairs of different queries in shared engine calls score as they do alone (1e-5)."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from minireranker.runtime.serve.batcher import DynamicBatcher
from minireranker.runtime.documents import Document

TOL = 1e-5
QUERIES = ["a cat", "a dog", "rocket launch at dawn", "a cup of coffee on a desk, seen from above"]


def _documents(images) -> list[Document]:
    return [Document(image=images["astronaut_70x45"]), Document(image=images["chelsea_128x100"], text="a cat"),
            Document(text="a plain text document"), Document(image=images["coffee_33x100"])]


def _check_batched_equals_unbatched(bundle, cache, images, batch_size: int) -> int:
    """Score every (query, document) pair in one score_pairs call; compare with rerank per query."""
    from minireranker.runtime.reranker import Reranker

    docs = _documents(images)
    with Reranker(bundle, cache, batch_size=batch_size) as r:
        alone = {}
        for q in QUERIES:
            out = r.rerank(q, docs)
            alone[q] = {res.index: res.score for res in out.results}
        states = [r.prepare_query(q) for q in QUERIES]
        entries, failed = r.lookup(docs)
        assert not failed
        pairs = [(s, e) for s in states for _, e in entries]
        rng = np.random.default_rng(0)
        order = rng.permutation(len(pairs))  # interleave queries, as concurrent requests would
        scores = r.score_pairs([pairs[k] for k in order])
        for k, score in zip(order, scores):
            q, d = divmod(int(k), len(entries))
            assert abs(score - alone[QUERIES[q]][entries[d][0]]) <= TOL
        return len({len(s.ids) for s in states})


def test_score_pairs_across_queries_equals_rerank(tiny_bundle, tmp_path, images):
    assert _check_batched_equals_unbatched(tiny_bundle, tmp_path / "cache", images, batch_size=5) > 1


def _band_batches(r, queries: tuple[str, ...]) -> list[int]:
    """Score two same-length queries x two documents; the ``hidden`` batch of each band call."""
    calls = []
    runner = r.encoder.runners["band"]
    original = runner.infer
    runner.infer = lambda feed: calls.append(feed["hidden"].shape[0]) or original(feed)
    by_length: dict[int, list] = {}
    for q in queries:
        state = r.prepare_query(q)
        by_length.setdefault(len(state.ids), []).append(state)
    same_length = next(states[:2] for states in by_length.values() if len(states) >= 2)
    entries, _ = r.lookup([Document(text="one"), Document(text="two")])
    r.score_pairs([(s, e) for s in same_length for _, e in entries])
    return calls


SAME_LENGTH_CANDIDATES = ("a cat", "a dog", "a car", "the sun", "a bird", "blue sky", "cats", "dogs", "red", "sun")


@pytest.mark.parametrize("attention", ["portable", "fused"])
def test_band_takes_pairs_of_different_queries_in_one_call(bundle_factory, tmp_path, images, attention):
    """Bundles are built with a free batch axis on the band's ``hidden`` (one query hidden per candidate),
    so pairs of different queries of one token length share a band call, in both attention modes."""
    from minireranker.runtime.reranker import Reranker
    from minireranker.runtime.spec import RerankSpec

    # the approximate spec tests/runtime's parity and tests/engines' op checks build too: no extra build
    bundle = bundle_factory("tiny", RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64),
                            attention=attention)
    with Reranker(bundle, tmp_path / "probe") as r:
        assert r.encoder.runners["band"].input_metadata()["hidden"].shape[0] != 1  # a free batch axis
        assert _band_batches(r, SAME_LENGTH_CANDIDATES) == [4]  # both queries' pairs in one band call
    assert _check_batched_equals_unbatched(bundle, tmp_path / "cache", images, batch_size=5) > 1


@pytest.mark.parametrize("schema_version", [1, 3])
def test_bundle_with_a_batch_one_band_hidden_is_refused_with_a_rebuild_message(tiny_bundle, tmp_path, schema_version):
    """A bundle whose band ``hidden`` is fixed to batch 1 (built before the axis was freed, schema 1) is
    refused in one line saying to rebuild it; so is such a graph in a current (schema 3) bundle (the graph I/O
    table)."""
    import json

    onnx = pytest.importorskip("onnx")
    from minireranker.runtime.bundle import BundleError
    from minireranker.runtime.reranker import Reranker

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    model = onnx.load(str(bundle / "onnx" / "band.onnx"))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert model.graph.input[0].name == "hidden" and dim.dim_param == "hidden_batch"
    dim.dim_value = 1  # clears dim_param: the old, fixed axis
    onnx.save(model, str(bundle / "onnx" / "band.onnx"))
    data = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    data["schema_version"] = schema_version
    data["files"]["onnx/band.onnx"] = (bundle / "onnx" / "band.onnx").stat().st_size
    (bundle / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BundleError) as info:
        Reranker(bundle, tmp_path / "probe")
    message = str(info.value)
    assert "\n" not in message and "rebuild it with `minireranker build`" in message, message
    assert ("old schema version 1" if schema_version == 1 else "'hidden' axis 0 is fixed to 1") in message, message


def test_batcher_gathers_concurrent_requests():
    calls = []

    def score(pairs):
        calls.append(len(pairs))
        time.sleep(0.05)
        return np.asarray(pairs, dtype=float) * 2

    # a window far longer than the test: the batch closes when its 10 pairs are in (max_pairs), so how fast
    # this thread submits cannot split it
    batcher = DynamicBatcher(score, window_s=600, max_pairs=10)
    futures = [batcher.submit([i, i + 0.5]) for i in range(5)]
    results = [f.result(timeout=10) for f in futures]
    for i, r in enumerate(results):
        assert list(r) == [2 * i, 2 * i + 1]
    assert calls == [10]  # one batch: all five arrived inside the window
    batcher.close()


def test_batcher_respects_max_pairs_and_reports_errors():
    calls = []

    def score(pairs):
        calls.append(len(pairs))
        if "bad" in pairs:
            raise ValueError("boom")
        return np.zeros(len(pairs))

    batcher = DynamicBatcher(score, window_s=0.1, max_pairs=4)
    futures = [batcher.submit([1, 2, 3]) for _ in range(3)]
    for f in futures:
        f.result(timeout=10)
    assert calls == [3, 3, 3]  # 3 + 3 > 4: never merged, never split
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(["bad"]).result(timeout=10)
    assert batcher.submit([7]).result(timeout=10).shape == (1,)  # the worker survived the error
    batcher.close()
    from minireranker.runtime.serve.batcher import BatcherClosed

    with pytest.raises(BatcherClosed):
        batcher.submit([1])


def test_concurrent_http_requests_share_batches(live):
    """Eight clients at once: every answer equals the one the same request gets alone."""
    from serve_helpers import TEXTS

    queries = ["a cat", "a rocket", "snow", "coffee", "a cat", "a rocket", "snow", "coffee"]
    alone = {q: live.call("POST", "/v1/rerank", {"query": q, "documents": TEXTS})[1]["results"] for q in set(queries)}
    got: dict[int, list] = {}

    def client(i: int) -> None:
        got[i] = live.call("POST", "/v1/rerank", {"query": queries[i], "documents": TEXTS})[1]["results"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, q in enumerate(queries):
        assert [r["index"] for r in got[i]] == [r["index"] for r in alone[q]]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(got[i], alone[q])) <= TOL
