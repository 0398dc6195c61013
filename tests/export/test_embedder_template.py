"""The embedder template has one source (runtime/template.py); its strings are pinned here, and the export's
pruning guide tokenizes exactly them."""

from __future__ import annotations

import pytest

from minireranker.runtime.template import (
    EMBEDDER_IMAGE_HEAD,
    EMBEDDER_SYSTEM,
    IMAGE_PAD,
    embedder_image_tail,
    embedder_text,
)

IMAGE_DOCUMENT = ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                  "<|image_pad|><|image_pad|><|vision_end|>a caption<|im_end|>\n<|im_start|>assistant\n")
TEXT_DOCUMENT = ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
                 "a red bus<|im_end|>\n<|im_start|>assistant\n")


def test_the_embedder_sequences_are_the_documented_ones():
    assert EMBEDDER_SYSTEM == "Represent the user's input."
    assert EMBEDDER_IMAGE_HEAD + IMAGE_PAD * 2 + embedder_image_tail("a caption") == IMAGE_DOCUMENT
    assert embedder_text("a red bus") == TEXT_DOCUMENT
    assert embedder_image_tail(None) == embedder_image_tail("") == "<|vision_end|><|im_end|>\n<|im_start|>assistant\n"


def test_the_pruning_guide_tokenizes_the_template(checkpoint_factory):
    pytest.importorskip("torch")
    from minireranker.export.checkpoint import open_checkpoint
    from minireranker.export.pruning import EmbedderGuide

    path = checkpoint_factory("tiny")
    guide = EmbedderGuide(str(path), open_checkpoint(path), None)
    tokenizer = guide.tokenizer
    ids = tokenizer.encode(IMAGE_DOCUMENT, add_special_tokens=False).ids
    doc = guide.document((1, 2), "a caption")
    assert guide.system_ids + doc.ids == ids
    assert doc.num_image == 2 and ids[len(guide.system_ids)] == tokenizer.token_to_id(IMAGE_PAD)
