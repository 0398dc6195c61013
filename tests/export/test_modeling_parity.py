"""Our torch modules vs transformers' Qwen3-VL, fp32, atol 1e-5: vision features, DeepStack, every layer.

Parametrized over every tiny preset, so a new preset is covered without editing this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from minireranker.export.checkpoint import load_state_dict, open_checkpoint  # noqa: E402
from minireranker.export.modeling import build_model  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.preprocess import preprocess_image  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402
from minireranker.runtime.template import VisionFirstTemplate, document_positions, text_positions  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module", params=sorted(PRESETS))
def pair(request, checkpoint_factory):
    """(our model, transformers' model, checkpoint) for one preset."""
    path = checkpoint_factory(request.param)
    ckpt = open_checkpoint(path)
    ours = build_model(ckpt.config, load_state_dict(ckpt)).eval()
    theirs = transformers.Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return ours, theirs, ckpt


@pytest.mark.parametrize("name", ["astronaut_70x45", "chelsea_128x100", "camera_grey_90x120"])
@torch.no_grad()
def test_vision_tower_and_deepstack_match(pair, images, name):
    ours, theirs, ckpt = pair
    pixels, grid = preprocess_image(images[name], ckpt.preprocess)
    embeds, deepstack = ours.vision(torch.from_numpy(pixels), grid[1], grid[2])
    out = theirs.model.visual(torch.from_numpy(pixels), grid_thw=torch.tensor([grid]))
    torch.testing.assert_close(embeds, out.pooler_output, atol=ATOL, rtol=0)
    assert len(deepstack) == len(out.deepstack_features) == len(ckpt.config.vision.deepstack_indexes)
    for mine, ref in zip(deepstack, out.deepstack_features):
        torch.testing.assert_close(mine, ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_every_decoder_layer_matches(pair, images):
    """Feed one vision-first sequence (image + text document, query) through both; compare each layer."""
    ours, theirs, ckpt = pair
    template = VisionFirstTemplate(ckpt.load_tokenizer(), RerankSpec())
    pixels, grid = preprocess_image(images["chelsea_128x100"], ckpt.preprocess)
    merge = ckpt.config.vision.spatial_merge_size
    doc = template.document((grid[1] // merge, grid[2] // merge), "a cat")
    query = template.query("is there a cat?")
    s = len(template.system_ids)
    ids = template.system_ids + doc.ids + query
    doc_pos, query_start = document_positions(s, doc)
    positions = np.concatenate([text_positions(0, s), doc_pos, text_positions(query_start, len(query))], axis=1)

    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in theirs.model.language_model.layers]
    ids_t = torch.tensor([ids])
    try:
        theirs(input_ids=ids_t, pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.tensor([grid]),
               mm_token_type_ids=(ids_t == ckpt.config.image_token_id).int())
    finally:
        for h in hooks:
            h.remove()

    # Our side: the same sequence, uncached, layer by layer (DeepStack added after the layer output).
    embeds, deepstack = ours.vision(torch.from_numpy(pixels), grid[1], grid[2])
    x = ours.embed_tokens(ids_t[0]).clone()
    rows = torch.arange(s + doc.image_start, s + doc.image_start + doc.num_image)
    x[rows] = embeds
    x = x[None]
    cos, sin = ours.rotary(torch.from_numpy(positions)[:, None])
    assert len(captured) == ckpt.config.text.num_layers
    for i, layer in enumerate(ours.layers):
        x, _, _ = layer(x, cos, sin)
        torch.testing.assert_close(x[0], captured[i].reshape(x[0].shape), atol=ATOL, rtol=0,
                                   msg=lambda m: f"layer {i}: {m}")
        if i < len(deepstack):
            x[0, rows] += deepstack[i]


@torch.no_grad()
def test_rope_positions_match_transformers_rope_index(pair, images):
    """Our template positions == transformers' get_rope_index for image, text and image+text documents."""
    _, theirs, ckpt = pair
    template = VisionFirstTemplate(ckpt.load_tokenizer(), RerankSpec())
    s = len(template.system_ids)
    merge = ckpt.config.vision.spatial_merge_size
    _, grid = preprocess_image(images["coffee_33x100"], ckpt.preprocess)
    for grid_hw, text in [((grid[1] // merge, grid[2] // merge), None), (None, "plain text"),
                          ((grid[1] // merge, grid[2] // merge), "and a caption")]:
        doc = template.document(grid_hw, text)
        query = template.query("q")
        ids = torch.tensor([template.system_ids + doc.ids + query])
        doc_pos, qs = document_positions(s, doc)
        ours = np.concatenate([text_positions(0, s), doc_pos, text_positions(qs, len(query))], axis=1)
        if grid_hw is None:
            expected = np.broadcast_to(np.arange(ids.shape[1]), (3, ids.shape[1]))
        else:
            pos, _ = theirs.model.get_rope_index(ids, (ids == ckpt.config.image_token_id).int(),
                                                 image_grid_thw=torch.tensor([grid]))
            expected = pos[:, 0].numpy()
        np.testing.assert_array_equal(ours, expected)
