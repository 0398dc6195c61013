"""The document segment at token level for every kind of document (text only, image only, image + text)
vs transformers' tokenizer and image processor.

The expected ids are transformers' AutoTokenizer on the template written out here by hand, as
runtime/template.py's docstring states it (``<Document>:[<|vision_start|><|image_pad|>*n<|vision_end|>][text]\\n``),
with ``n`` from transformers' Qwen2VLImageProcessorPil; nothing of the project's template code builds them.
User text is plain text (runtime/template.py): the text between the template's own special tokens is
encoded with transformers' ``split_special_tokens=True``, so ``<|im_end|> injected`` stays characters.
test_runtime_parity.py::test_tokenization_equals_transformers covers the system and query segments and
an image + text document; this file adds the text-only and image-only branches, and checks that what the
runtime stores for each document has exactly that many tokens (and its instruction segment's).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from minireranker.runtime.bundle import load_bundle  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.reranker import Reranker  # noqa: E402

TEXTS = ["a caption", "A rocket on the launch pad.", "7", "Ünïcödé ☃ and 中文", "  spaces  and\ttabs\n",
         "<|im_end|> injected", "<|image_pad|> looks like an image", "ends with a newline\n"]
GRIDS = [(1, 1), (2, 3), (4, 2), (5, 5)]
PAD, START, END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"


@pytest.fixture(scope="module")
def hf(tiny_bundle):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(load_bundle(tiny_bundle).data["source"]["checkpoint"])


@pytest.fixture(scope="module")
def runtime(tiny_bundle, tmp_path_factory):
    with Reranker(tiny_bundle, tmp_path_factory.mktemp("doc-tokens")) as r:
        yield r


def encode(hf, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False)


def plain(hf, text: str) -> list[int]:
    """User text (and the template text beside it up to the next template special token) as plain text."""
    return hf.encode(text, add_special_tokens=False, split_special_tokens=True)


def image_pads(checkpoint: str, image) -> int:
    """transformers' number of merged image tokens for ``image``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
    grid = processor(images=[image.convert("RGB")], return_tensors="np")["image_grid_thw"][0]
    return int(np.prod(grid)) // processor.merge_size**2


@pytest.mark.parametrize("text", TEXTS)
def test_text_only_document_equals_transformers(hf, runtime, text):
    doc = runtime.template.document(None, text)
    assert doc.ids == plain(hf, f"<Document>:{text}\n"), text
    assert (doc.image_start, doc.num_image, doc.grid_hw) == (-1, 0, (0, 0))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("text", [None, ""])
def test_image_only_document_equals_transformers(hf, runtime, grid, text):
    n = grid[0] * grid[1]
    doc = runtime.template.document(grid, text)
    assert doc.ids == encode(hf, f"<Document>:{START}" + PAD * n + f"{END}\n"), (grid, text)
    assert doc.image_start == len(encode(hf, f"<Document>:{START}")) and doc.num_image == n
    assert doc.ids[doc.image_start: doc.image_start + n] == encode(hf, PAD * n)


def test_image_and_text_document_equals_transformers(hf, runtime):
    for grid in GRIDS:
        n = grid[0] * grid[1]
        for text in TEXTS:
            expected = encode(hf, f"<Document>:{START}" + PAD * n + END) + plain(hf, f"{text}\n")
            assert runtime.template.document(grid, text).ids == expected, (grid, text)


def test_stored_entries_have_transformers_token_counts(hf, runtime, tiny_bundle, images):
    """What the runtime indexes: a text-only entry holds transformers' document tokens; an image entry the
    same minus its pruned visual tokens (kept_visual in its meta), for images, texts and both."""
    checkpoint = load_bundle(tiny_bundle).data["source"]["checkpoint"]
    docs = [Document(text=t, id=f"text-{i}") for i, t in enumerate(TEXTS)]
    docs += [Document(image=img, id=f"image-{name}") for name, img in sorted(images.items())]
    docs.append(Document(image=images["chelsea_128x100"], text="a cat", id="image+text"))
    report = runtime.index(docs)
    assert not report.failed, report.failed
    spec = runtime.spec
    instruction = encode(hf, f"<Instruct>: {spec.instruction}\n<Query>:")
    for doc in docs:
        entry = runtime.store.get(runtime.key(doc))
        # every entry carries the instruction segment's K/V, layers A..E, of transformers' token count
        assert entry.instruction_k.shape == (spec.exit_layer - spec.band[0] + 1, entry.k.shape[1],
                                             len(instruction), entry.k.shape[3]), doc.id
        if doc.image is None:
            expected = plain(hf, f"<Document>:{doc.text}\n")
            assert entry.k.shape[2] == len(expected), doc.id
            assert entry.meta.get("kept_visual") is None, doc.id  # text is never pruned
            continue
        n = image_pads(checkpoint, doc.image)
        expected = encode(hf, f"<Document>:{START}" + PAD * n + END) + plain(hf, f"{doc.text or ''}\n")
        kept = entry.meta["kept_visual"]
        assert 0 < len(kept) < n, doc.id  # tiny_bundle prunes (keep 0.5): the count below means something
        assert entry.k.shape[2] == len(expected) - n + len(kept), doc.id
