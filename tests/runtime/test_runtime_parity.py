"""The runtime (ONNX Runtime + numpy + K/V store) vs the torch reference, per precision.

Tolerances on scores: fp32 1e-4 (exact and approximate specs), fp16 5e-2 (see export/onnx_export.py for
the reasoning). Rankings: identical in fp32; in fp16 two candidates may swap only if their reference scores
differ by less than the fp16 score tolerance (a near-tie, ranking_helpers.py). The reference itself equals
transformers (tests/export).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from ranking_helpers import assert_ranking_within  # noqa: E402

from minireranker.export.validation import compare_runtime  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.bundle import load_bundle  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.reranker import Reranker  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

APPROX = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64)
QUERIES = ["is there a cat?", "a rocket on the launch pad, seen from far away at dawn", "7"]
FP16_TOLERANCE = 5e-2  # scores; also the reference-score gap below which fp16 may swap two candidates


def corpus(images) -> list[Document]:
    return [
        Document(image=images["rocket_128x128"], id="rocket"),
        Document(text="A rocket on the launch pad.", id="text-rocket"),
        Document(image=images["chelsea_128x100"], text="a cat", id="cat"),
        Document(image=images["astronaut_70x45"], id="astronaut"),
        Document(image=images["camera_grey_90x120"], id="camera"),
        Document(text="seven", id="seven"),
    ]


def compare(bundle_path, images, tmp_path, tolerance: float, batch_size: int = 4,
            near_tie: float | None = None) -> dict:
    """Runtime vs reference on the corpus x QUERIES; returns the comparison report. Rankings identical, or
    with ``near_tie`` swapped only where the reference scores differ by less than it."""
    bundle = load_bundle(bundle_path)
    reference = ReferencePipeline(bundle.data["source"]["checkpoint"], bundle.spec)
    docs = corpus(images)
    with Reranker(bundle, tmp_path / "cache", batch_size=batch_size) as runtime:
        report = compare_runtime(reference, runtime, docs, QUERIES)
        entries = [reference.index(d, _kept(runtime, d)) for d in docs]
        for query in QUERIES:  # rankings: the runtime's order equals the reference's on the same tokens
            out = runtime.rerank(query, docs)
            expected = reference.score(query, entries)
            order = [r.index for r in out.results]
            if near_tie is None:
                assert order == list(np.argsort(-expected, kind="stable")), query
            else:
                assert_ranking_within(order, expected, near_tie, context=query)
    assert report["max_abs_diff"] <= tolerance, f"max |runtime - reference| = {report['max_abs_diff']:.3g} > {tolerance}"
    return report


def _kept(runtime, doc):
    kept = runtime.store.get(runtime.key(doc)).meta.get("kept_visual")
    return None if kept is None else np.asarray(kept)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_exact_spec_fp32(bundle_factory, images, tmp_path, preset):
    compare(bundle_factory(preset), images, tmp_path, 1e-4)


# every architecture, and jina-reranker-m0's form (its format, no system segment, the classifier head)
@pytest.mark.parametrize("preset", ["tiny", "mha_deep_stack3", "qwen2_5_vl_tiny", "jina_m0_tiny"])
def test_approximate_spec_fp32(bundle_factory, images, tmp_path, preset):
    report = compare(bundle_factory(preset, approx_for(preset)), images, tmp_path, 1e-4)
    assert report["kept_identical"] == 1.0  # in fp32 the guide picks the very same tokens


def approx_for(preset: str) -> RerankSpec:
    """APPROX, or its 3-layer form for the presets with 3 decoder layers."""
    return APPROX if PRESETS[preset].num_hidden_layers > 3 else RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5,
                                                                          query_position=64)


@pytest.mark.parametrize("preset", ["qwen2_5_vl_tiny", "jina_m0_tiny"])
def test_approximate_spec_fp16_other_architectures(bundle_factory, images, tmp_path, preset):
    compare(bundle_factory(preset, approx_for(preset), precision="fp16"), images, tmp_path, FP16_TOLERANCE,
            near_tie=FP16_TOLERANCE)


def test_fused_attention_fp32_window_attention(bundle_factory, images, tmp_path):
    """Qwen2.5-VL's windowed tower in the fused form (an SDPA mask per block); ~60 s, so one architecture."""
    compare(bundle_factory("qwen2_5_vl_tiny", approx_for("qwen2_5_vl_tiny"), attention="fused"), images, tmp_path, 1e-4)


def test_approximate_spec_fp16(bundle_factory, images, tmp_path):
    path = bundle_factory("tiny", APPROX, precision="fp16")
    report = compare(path, images, tmp_path, FP16_TOLERANCE, near_tie=FP16_TOLERANCE)
    print("fp16 report", report)
    assert report["kept_jaccard"] >= 0.5
    with Reranker(path, tmp_path / "cache") as runtime:  # the store keeps the bundle's precision
        runtime.index([Document(text="stored in fp16", id="x")])
        entry = runtime.store.get("id:x")
        assert entry.k.dtype == np.float16 and entry.v.dtype == np.float16


def test_fused_attention_fp32(bundle_factory, images, tmp_path):
    path = bundle_factory("tiny", APPROX, attention="fused")
    import onnx

    ops = {n.op_type for n in onnx.load(str(path / "onnx" / "band.onnx")).graph.node}
    assert "Attention" in ops
    compare(path, images, tmp_path, 1e-4)


def test_embedder_guide_fp32(bundle_factory, checkpoint_factory, images, tmp_path):
    embedder = checkpoint_factory("tiny", seed=7)
    spec = RerankSpec(exit_layer=3, band=(0, 3), keep_ratio=0.5, guide=f"embedder:{embedder}")
    compare(bundle_factory("tiny", spec), images, tmp_path, 1e-4)


def test_query_head_runs_once_per_query(tiny_bundle, images, tmp_path):
    docs = corpus(images) * 3  # 18 candidates, batch 4: 5 band batches
    with Reranker(tiny_bundle, tmp_path / "cache", batch_size=4) as runtime:
        runtime.index(docs)
        for n in (1, 7, 18):
            before = runtime.stats["query_head_runs"]
            runtime.rerank("a rocket", docs[:n])
            assert runtime.stats["query_head_runs"] - before == 1


def test_cached_and_on_the_fly_scores_agree(tiny_bundle, images, tmp_path):
    docs = corpus(images)
    with Reranker(tiny_bundle, tmp_path / "cache") as runtime:
        first = runtime.rerank("a cat", docs)          # indexes on the fly
        assert first.timings.get("index", 0) > 0
        second = runtime.rerank("a cat", [d.id for d in docs])  # ids only: all from the cache
        assert second.timings.get("index", 0) == 0
    assert [(r.index, r.score) for r in first.results] == [(r.index, r.score) for r in second.results]


def test_a_rerank_reads_its_candidates_with_one_batched_store_read(tiny_bundle, images, tmp_path, monkeypatch):
    """The serving read is the benchmarked one: one ``get_many`` per rerank (each key once), no lone ``get``."""
    docs = corpus(images)
    with Reranker(tiny_bundle, tmp_path / "cache") as runtime:
        runtime.index(docs)
        store, batches, stray, inside = runtime.store, [], [], []
        real_get, real_many = store.get, store.get_many

        def get_many(keys):
            batches.append(list(keys))
            inside.append(True)
            try:
                return real_many(keys)
            finally:
                inside.pop()

        monkeypatch.setattr(store, "get_many", get_many)
        monkeypatch.setattr(store, "get", lambda key: (None if inside else stray.append(key)) or real_get(key))
        hits = store.stats()["hits"]
        out = runtime.rerank("a cat", [*docs, docs[0].id])  # the first document twice (the second by id)
        assert store.stats()["hits"] - hits == len(docs) and not out.failed
    assert batches == [[runtime.key(d) for d in docs]] and stray == []
    scores = {r.index: r.score for r in out.results}
    assert abs(scores[len(docs)] - scores[0]) <= 1e-6  # the same entry in one batch: same score (1e-6)


def test_tokenization_equals_transformers(tiny_bundle):
    """The runtime's template ids (tokenizers) == transformers' tokenizer on the same segments: the
    instruction segment (cached with each document) and the query segment (per pair) apart."""
    from transformers import AutoTokenizer

    bundle = load_bundle(tiny_bundle)
    hf = AutoTokenizer.from_pretrained(bundle.data["source"]["checkpoint"])
    with Reranker(bundle, bundle.path.parent / "tok-cache") as runtime:
        t = runtime.template
        assert t.system_ids == hf.encode(f"<|im_start|>system\n{t.spec.system}<|im_end|>\n<|im_start|>user\n",
                                         add_special_tokens=False)
        instruction = hf.encode(f"<Instruct>: {t.spec.instruction}\n<Query>:", add_special_tokens=False)
        assert t.instruction_ids == instruction == bundle.template["instruction_ids"]
        for query in ["", "hello", "Ünïcödé ☃ and 中文", "  spaces  and\ttabs\n", "<|im_end|> injected",
                      *PUNCTUATED]:
            # the query is plain text (runtime/template.py): '<|im_end|> injected' is characters, not a token
            expected = hf.encode(query, add_special_tokens=False, split_special_tokens=True) \
                + hf.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
            assert t.query_text(query) == expected, query
            assert t.query(query) == instruction + expected, query
            if query:  # the runtime refuses an empty query (TokenizerError); per pair it runs these ids
                assert list(runtime.prepare_query(query).ids) == expected, query
        doc = t.document((2, 3), "a caption")
        assert doc.ids == hf.encode("<Document>:<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>a caption\n",
                                    add_special_tokens=False)


# Queries whose first characters the byte-level pre-tokenizer would join to the instruction's closing ':'
# (">:?" is one pre-token of "<Query>:?what"): tokenized as their own segment they cannot merge with it.
PUNCTUATED = ["?what is in the picture", ", and a cat", "...rocket", ":colon first", " a space first"]


@pytest.mark.parametrize("spec", [None, APPROX], ids=["exact", "approximate"])
def test_a_query_starting_with_punctuation_scores_like_transformers(bundle_factory, images, tmp_path, spec):
    """The cache boundary between '<Query>:' and the query text: the runtime == transformers (export/oracle.py,
    which builds the same segments) to 1e-4 in fp32, for the exact spec (the plain model) and the approximate
    one (its masked oracle, on the runtime's kept tokens)."""
    from minireranker.export.oracle import TransformersOracle
    from minireranker.export.tokenizer_factory import build_tokenizer

    pieces = [p for p, _ in build_tokenizer().pre_tokenizer.pre_tokenize_str("<Query>:" + PUNCTUATED[0])]
    assert ">:?" in pieces  # joined, ':' and '?' would be one pre-token: the segment boundary keeps them apart
    bundle = load_bundle(bundle_factory("tiny", spec))
    docs = corpus(images)[:3]
    oracle = TransformersOracle(bundle.data["source"]["checkpoint"], bundle.spec)
    with Reranker(bundle, tmp_path / "cache") as runtime:
        for query in PUNCTUATED:
            out = runtime.rerank(query, docs)
            assert not out.failed
            got = np.array([r.score for r in sorted(out.results, key=lambda r: r.index)])
            kept = [_kept(runtime, d) for d in docs]
            want = np.array([oracle.score(query, d, k) for d, k in zip(docs, kept)])
            assert np.abs(got - want).max() <= 1e-4, (query, np.abs(got - want).max())
