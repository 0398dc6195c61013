"""Documents: command-line parsing, directory and glob expansion, content hashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minireranker.runtime.documents import Document, expand_document_args
from minireranker.runtime.errors import DocumentError


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    return write_png(tmp_path / "page.png")


# -- Document.parse -------------------------------------------------------------------------------
def test_parse_image_path(image):
    doc = Document.parse(str(image))
    assert doc.image == image and doc.text is None and doc.id is None
    assert doc.label == str(image)


def test_parse_text():
    doc = Document.parse("text:a red bus")
    assert doc.image is None and doc.text == "a red bus"
    assert doc.label == "text:a red bus"


def test_parse_text_keeps_colons_and_double_colons():
    doc = Document.parse("text:a::b:c")
    assert doc.image is None and doc.text == "a::b:c"


def test_parse_image_then_text(image):
    doc = Document.parse(f"{image}::text:caption here")
    assert doc.image == image and doc.text == "caption here"
    assert doc.label == f"{image}::text:caption here"


def test_parse_missing_file_names_it_and_suggests_text(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DocumentError, match="no such image file") as info:
        Document.parse(str(missing))
    assert str(missing) in str(info.value) and "text:" in str(info.value)


def test_parse_missing_file_with_text(tmp_path):
    with pytest.raises(DocumentError, match="nope.png"):
        Document.parse(f"{tmp_path / 'nope.png'}::text:caption")


def test_parse_directory_is_not_an_image(tmp_path):
    with pytest.raises(DocumentError, match="no such image file"):
        Document.parse(str(tmp_path))


def test_parse_empty_text():
    with pytest.raises(DocumentError, match="empty text") as info:
        Document.parse("text:")
    assert "text:SOMETHING" in str(info.value)


@pytest.mark.parametrize("suffix", ["caption", "", "txt:caption", "image:x"])
def test_parse_bad_double_colon_suffix(image, suffix):
    with pytest.raises(DocumentError, match="after '::'") as info:
        Document.parse(f"{image}::{suffix}")
    assert "text:STRING" in str(info.value)


def test_document_needs_content():
    with pytest.raises(DocumentError, match="needs an image"):
        Document()
    with pytest.raises(DocumentError, match="needs an image"):
        Document(text="")


def test_document_text_must_be_a_string():
    with pytest.raises(DocumentError, match="string"):
        Document(text=b"bytes")  # type: ignore[arg-type]


def test_document_id_only_is_allowed():
    assert Document(id="doc-7").label == "doc-7"


# -- expand_document_args -------------------------------------------------------------------------
def test_expand_directory_gives_its_images_sorted(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    names = ["c.png", "a.png", "b.PNG", "d.jpg"]
    for i, name in enumerate(names):
        if name.endswith("jpg"):
            Image.new("RGB", (8, 8)).save(folder / name)
        else:
            write_png(folder / name, seed=i)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    docs = expand_document_args([str(folder)])
    assert [d.image for d in docs] == sorted(folder / n for n in names)
    assert all(d.text is None for d in docs)


def test_expand_keeps_argument_order_around_a_directory(tmp_path, image):
    folder = tmp_path / "pages"
    folder.mkdir()
    write_png(folder / "b.png", 1)
    write_png(folder / "a.png", 2)
    docs = expand_document_args(["text:first", str(folder), f"{image}::text:last"])
    assert [d.label for d in docs] == [
        "text:first", str(folder / "a.png"), str(folder / "b.png"), f"{image}::text:last",
    ]


def test_expand_glob_sorted(tmp_path):
    for name, seed in (("z.png", 0), ("m.png", 1), ("a.png", 2)):
        write_png(tmp_path / name, seed)
    (tmp_path / "other.jpg").write_bytes(b"x")
    docs = expand_document_args([str(tmp_path / "*.png")])
    assert [d.image for d in docs] == [tmp_path / "a.png", tmp_path / "m.png", tmp_path / "z.png"]


def test_expand_glob_matching_nothing(tmp_path):
    with pytest.raises(DocumentError, match="matches no file"):
        expand_document_args([str(tmp_path / "*.png")])


def test_expand_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DocumentError, match="no image files") as info:
        expand_document_args([str(empty)])
    assert str(empty) in str(info.value)


def test_expand_directory_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DocumentError, match="no image files"):
        expand_document_args([str(tmp_path)])


def test_expand_passes_errors_through(tmp_path):
    with pytest.raises(DocumentError, match="no such image file"):
        expand_document_args(["text:ok", str(tmp_path / "missing.png")])


# -- content_hash ---------------------------------------------------------------------------------
def test_content_hash_is_stable_and_depends_on_content_not_path(tmp_path):
    a = write_png(tmp_path / "a.png", seed=0)
    copy = tmp_path / "copy.png"
    copy.write_bytes(a.read_bytes())
    other = write_png(tmp_path / "b.png", seed=1)
    h = Document(image=a).content_hash()
    assert h == Document(image=a).content_hash()
    assert h == Document.parse(str(a)).content_hash()
    assert h == Document(image=copy).content_hash()
    assert h == Document(image=str(a)).content_hash()
    assert h == Document(image=a.read_bytes()).content_hash()
    assert h != Document(image=other).content_hash()
    assert len(h) == 64 and int(h, 16) >= 0


def test_content_hash_distinguishes_text_image_and_both(image):
    hashes = {
        Document(text="a red bus").content_hash(),
        Document(text="a red bus.").content_hash(),
        Document(image=image).content_hash(),
        Document(image=image, text="a red bus").content_hash(),
        Document(image=image, text="a blue bus").content_hash(),
    }
    assert len(hashes) == 5


def test_content_hash_is_the_same_in_another_process(image):
    # a cache key is read back by other processes: it must not depend on per-process state (hash seeds)
    import subprocess
    import sys

    code = (
        "import sys; from minireranker.runtime.documents import Document; "
        "print(Document(image=sys.argv[1], text='caption').content_hash())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == Document(image=image, text="caption").content_hash()


def test_content_hash_ignores_id():
    assert Document(text="x", id="1").content_hash() == Document(text="x", id="2").content_hash()


def test_content_hash_of_arrays_and_pil_images():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    h = Document(image=pixels).content_hash()
    assert h == Document(image=pixels.copy()).content_hash()
    assert h != Document(image=pixels[::-1].copy()).content_hash()
    assert h != Document(image=pixels.reshape(4, 16, 3)).content_hash()  # same bytes, other shape
    pil = Image.fromarray(pixels)
    assert Document(image=pil).content_hash() == Document(image=Image.fromarray(pixels.copy())).content_hash()
    assert Document(image=pil).content_hash() != Document(image=pil.convert("L")).content_hash()


def test_content_hash_unreadable_image(tmp_path):
    doc = Document(image=tmp_path / "gone.png")
    with pytest.raises(DocumentError, match="cannot read image"):
        doc.content_hash()


def test_content_hash_unsupported_image_type():
    with pytest.raises(DocumentError, match="unsupported image type"):
        Document(image=12345).content_hash()


def test_image_with_empty_text_suffix_is_an_error(tmp_path):
    from PIL import Image

    from minireranker.runtime.documents import Document
    from minireranker.runtime.errors import DocumentError

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(DocumentError, match="non-empty"):
        Document.parse(f"{path}::text:")


def test_content_hash_fields_cannot_impersonate_each_other():
    from minireranker.runtime.documents import Document

    assert Document(image=b"abc" + b"text:foo").content_hash() != Document(image=b"abc", text="foo").content_hash()
