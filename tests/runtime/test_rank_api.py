"""The app-facing API: Reranker.from_pretrained and rank(), where a str is a text and a path/PIL/array an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minireranker.runtime import Document, Reranker
from minireranker.runtime.bundle import BundleError
from minireranker.runtime.errors import DocumentError, DocumentTooLongError
from minireranker.runtime.reranker import as_document, default_cache_dir


@pytest.fixture(scope="module")
def reranker(tiny_bundle, tmp_path_factory):
    with Reranker.from_pretrained(tiny_bundle, cache_dir=tmp_path_factory.mktemp("kv")) as r:
        yield r


def test_rank_reads_str_as_text_and_paths_pil_arrays_as_images(reranker, images, tmp_path):
    photo = images["chelsea_128x100"]
    photo.save(tmp_path / "cat.png")
    docs = ["a cat on a sofa", Path(tmp_path / "cat.png"), photo, np.asarray(photo),
            Document(image=photo, text="a cat", id="mine")]
    ranked = reranker.rank("a cat", docs)
    assert sorted(r.index for r in ranked) == [0, 1, 2, 3, 4]
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    by_index = {r.index: r for r in ranked}
    # the same image as a path, a PIL image and an array scores the same (1e-6: one engine, same pixels)
    assert by_index[1].score == pytest.approx(by_index[2].score, abs=1e-6)
    assert by_index[2].score == pytest.approx(by_index[3].score, abs=1e-6)
    # ids only where asked for
    assert [by_index[i].id for i in range(4)] == [None] * 4 and by_index[4].id == "mine"
    # the text is scored as a text, as rerank scores Document(text=...), not looked up as an id
    text_score = reranker.rerank("a cat", [Document(text="a cat on a sofa")]).results[0].score
    assert by_index[0].score == pytest.approx(text_score, abs=1e-6)
    assert by_index[0].document == "text:a cat on a sofa"


def test_rank_top_k(reranker):
    ranked = reranker.rank("red", ["a red circle", "a blue square", "green"], top_k=2)
    assert len(ranked) == 2
    everything = reranker.rank("red", ["a red circle", "a blue square", "green"])
    assert [(r.index, r.score) for r in ranked] == [(r.index, r.score) for r in everything[:2]]


def test_rank_raises_naming_the_failing_document(reranker):
    with pytest.raises(DocumentError, match=r"document \[1\]"):
        reranker.rank("red", ["a red circle", 42])
    with pytest.raises(DocumentTooLongError, match=r"document \[1\] text:"):
        reranker.rank("red", ["a red circle", "word " * 100_000])


def test_as_document_rejects_what_is_not_a_document():
    assert as_document("x") == Document(text="x")
    assert as_document(b"\x89PNG").image == b"\x89PNG"
    with pytest.raises(DocumentError, match=r"document \[3\] is a dict"):
        as_document({"text": "x"}, 3)


def test_from_pretrained_on_a_checkpoint_says_how_to_build(tiny_checkpoint, tmp_path):
    with pytest.raises(BundleError, match=r"is a checkpoint, not a bundle: .*minireranker build"):
        Reranker.from_pretrained(tiny_checkpoint, cache_dir=tmp_path)
    with pytest.raises(BundleError, match="not a bundle"):
        Reranker.from_pretrained(tmp_path, cache_dir=tmp_path / "kv")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIRERANKER_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MINIRERANKER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "minireranker" / "kv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "minireranker" / "kv"


def test_build_and_load(tiny_checkpoint, tmp_path):
    from minireranker.export.onnx_export import build_and_load
    from minireranker.runtime.spec import RerankSpec

    spec = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=1.0, query_position=64)
    with build_and_load(tiny_checkpoint, tmp_path / "bundle", spec, cache_dir=tmp_path / "kv",
                        log=lambda message: None) as reranker:
        ranked = reranker.rank("red", ["a red circle", "a blue square"])
        assert len(ranked) == 2 and (tmp_path / "bundle" / "bundle.json").is_file()
