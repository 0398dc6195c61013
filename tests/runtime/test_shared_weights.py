"""The runtime's side of "each weight once" (runtime/weights.py, runtime/encoder.py): graphs open on first
use, and on the CPU every session computes with views of one mapping of the bundle's shared weight files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from minireranker.runtime.bundle import BundleError, load_bundle
from minireranker.runtime.documents import Document
from minireranker.runtime.reranker import DOCUMENT_GRAPHS, Reranker
from minireranker.runtime.weights import SharedWeights


def _images(n: int) -> list[Document]:
    rng = np.random.default_rng(3)
    return [Document(image=rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), id=f"d{i}") for i in range(n)]


def test_sessions_open_on_first_use_and_share_one_mapping(tiny_bundle, tmp_path):
    docs = _images(3)
    with Reranker(tiny_bundle, tmp_path / "kv") as writer:
        assert not any(r.is_open for r in writer.encoder.runners.values())  # nothing loaded before a call
        writer.index(docs)
        opened = {n for n, r in writer.encoder.runners.items() if r.is_open}
        assert opened == set(DOCUMENT_GRAPHS) & set(writer.encoder.runners)
        expected = writer.rerank("which image is it?", docs)
    with Reranker(tiny_bundle, tmp_path / "kv") as reader:  # every document cached: no document-side graph
        out = reader.rerank("which image is it?", docs)
        runners = reader.encoder.runners
        assert {n for n, r in runners.items() if r.is_open} == {"query_head", "band", "tail"}
        band = runners["band"].open()
        records = reader.bundle.data["graphs"]["band"]["initializers"]
        assert set(band._shared) == set(records)  # every moved initializer is a view handed to the session
        # one mapping per file serves every graph: a tensor the band shares with the document prefix (layers
        # 1..2) is one buffer in memory, handed to both sessions
        prefix = runners["doc_prefix"].open()
        graphs = reader.bundle.data["graphs"]
        by_place = {tuple(p[:2]): n for n, p in graphs["doc_prefix"]["initializers"].items()}
        common = [(by_place[tuple(p[:2])], n) for n, p in records.items() if tuple(p[:2]) in by_place]
        assert len(common) >= 8, common  # two layers' projections at least
        for prefix_name, band_name in common:
            assert prefix._shared[prefix_name].data_ptr() == band._shared[band_name].data_ptr()
    assert [r.score for r in out.results] == [r.score for r in expected.results]  # the same engines: equal


def test_views_are_read_only_and_a_bad_record_is_refused(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    record = bundle.data["graphs"]["doc_prefix"]["initializers"]
    weights = SharedWeights(tiny_bundle / "onnx")
    views = weights.views(record)
    name, view = next(iter(views.items()))
    assert not view.flags.writeable and view.dtype == np.dtype(record[name][2])
    with pytest.raises(BundleError, match="past the end"):
        weights.views({name: ["weights.bin", 10**12, "float32", [4]]})
    with pytest.raises(BundleError, match="missing"):
        weights.views({name: ["../bundle.json", 0, "float32", [4]]})


def _mapped(path) -> bool:
    """Whether this process maps ``path`` (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(str(path)) for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_closing_the_graphs_unmaps_the_weights(tiny_bundle, tmp_path):
    """The mapping lives as long as a session's views: a closed Reranker leaves no weight pages mapped
    (a build's end-to-end check opens the torch reference after it)."""
    import gc
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")  # a copy no other test's object maps
    weights = (bundle / "onnx" / "weights.bin").resolve()
    runtime = Reranker(bundle, tmp_path / "kv")
    runtime.index(_images(1))
    assert _mapped(weights)
    runtime.release_document_graphs()
    runtime.rerank("q", _images(1))  # the per-query graphs map the file again (they share its tensors)
    assert _mapped(weights)
    runtime.close()
    gc.collect()
    assert not _mapped(weights)
