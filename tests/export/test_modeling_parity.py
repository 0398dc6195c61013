"""Our torch modules vs transformers' own model of each architecture, fp32, atol 1e-5: vision features,
DeepStack (where the architecture has it), every decoder layer, the last token's logits, the rope index.

Parametrized over every tiny preset, so a new preset (of any registered architecture) is covered without
editing this file; the transformers class is the one the preset's adapter names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from minireranker.export.arch import architecture_for  # noqa: E402
from minireranker.export.checkpoint import load_state_dict, open_checkpoint  # noqa: E402
from minireranker.export.modeling import build_model  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.preprocess import preprocess_image  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402
from minireranker.runtime.template import VisionFirstTemplate, document_positions, text_positions  # noqa: E402

ATOL = 1e-5
# Decoder layers: max |ours - transformers| over max(1, max |transformers|), per layer. Both sides are float32
# and round differently (op order, and torch's kernels differ by the CPU's vector width), so the difference
# grows with depth and with the hidden state's size, about 1e-6 of the largest value per layer. Measured on
# 2026-12-02 over every tiny preset and layer: worst 1.53e-6 with torch's AVX-512 kernels (1.04e-5 at
# max |ref| 6.8: the absolute 1e-5 this test used failed on such a CPU), 1.50e-6 with ATEN_CPU_CAPABILITY=avx2.
# 3e-6 is twice the worst: 25 float32 steps (2^-23) of the layer's largest value. A wrong rotary or mask
# is off by O(1e-2) or more.
LAYER_SCALED_ATOL = 3e-6


@pytest.fixture(scope="module", params=sorted(PRESETS))
def pair(request, checkpoint_factory):
    """(our model, transformers' model, checkpoint) for one preset."""
    path = checkpoint_factory(request.param)
    ckpt = open_checkpoint(path)
    ours = build_model(ckpt.config, load_state_dict(ckpt)).eval()
    model_class = getattr(transformers, architecture_for(ckpt.config.model_type).transformers_class)
    theirs = model_class.from_pretrained(path, dtype=torch.float32).eval()
    return ours, theirs, ckpt


@pytest.mark.parametrize("name", ["astronaut_70x45", "chelsea_128x100", "camera_grey_90x120"])
@torch.no_grad()
def test_vision_tower_and_deepstack_match(pair, images, name):
    ours, theirs, ckpt = pair
    pixels, grid = preprocess_image(images[name], ckpt.preprocess)
    embeds, deepstack = ours.vision(torch.from_numpy(pixels), grid[1], grid[2])
    out = theirs.model.visual(torch.from_numpy(pixels), grid_thw=torch.tensor([grid]))
    torch.testing.assert_close(embeds, out.pooler_output, atol=ATOL, rtol=0)
    theirs_deepstack = getattr(out, "deepstack_features", None) or []  # Qwen2-VL, Qwen2.5-VL: none
    assert len(deepstack) == len(theirs_deepstack) == len(ckpt.config.vision.deepstack_indexes)
    for mine, ref in zip(deepstack, theirs_deepstack):
        torch.testing.assert_close(mine, ref, atol=ATOL, rtol=0)


def vision_first_inputs(ours, ckpt, image) -> dict:
    """One vision-first sequence (image + text document, query): ids, pixels, grid, positions, image rows."""
    template = VisionFirstTemplate(ckpt.load_tokenizer(), RerankSpec())
    pixels, grid = preprocess_image(image, ckpt.preprocess)
    merge = ckpt.config.vision.spatial_merge_size
    doc = template.document((grid[1] // merge, grid[2] // merge), "a cat")
    query = template.query("is there a cat?")
    s = len(template.system_ids)
    doc_pos, query_start = document_positions(s, doc)
    positions = np.concatenate([text_positions(0, s), doc_pos, text_positions(query_start, len(query))], axis=1)
    rows = torch.arange(s + doc.image_start, s + doc.image_start + doc.num_image)
    return {"ids": torch.tensor([template.system_ids + doc.ids + query]), "pixels": torch.from_numpy(pixels),
            "grid": grid, "positions": torch.from_numpy(positions)[:, None], "rows": rows}


def run_ours(ours, seq: dict) -> list[torch.Tensor]:
    """Our side, uncached, layer by layer (DeepStack added after the layer output): each layer's output."""
    embeds, deepstack = ours.vision(seq["pixels"], seq["grid"][1], seq["grid"][2])
    x = ours.embed_tokens(seq["ids"][0]).clone()
    x[seq["rows"]] = embeds
    x = x[None]
    cos, sin = ours.rotary(seq["positions"])
    outputs = []
    for i, layer in enumerate(ours.layers):
        x, _, _ = layer(x, cos, sin)
        outputs.append(x[0].clone())
        if i < len(deepstack):
            x[0, seq["rows"]] += deepstack[i]
    return outputs


@torch.no_grad()
def test_every_decoder_layer_and_the_last_logits_match(pair, images):
    """Feed one vision-first sequence through both; compare each layer's output and the last token's logits."""
    ours, theirs, ckpt = pair
    seq = vision_first_inputs(ours, ckpt, images["chelsea_128x100"])
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in theirs.model.language_model.layers]
    try:
        out = theirs(input_ids=seq["ids"], pixel_values=seq["pixels"], image_grid_thw=torch.tensor([seq["grid"]]),
                     mm_token_type_ids=(seq["ids"] == ckpt.config.image_token_id).int())
    finally:
        for h in hooks:
            h.remove()
    mine = run_ours(ours, seq)
    assert len(captured) == len(mine) == ckpt.config.text.num_layers
    for i, (x, ref) in enumerate(zip(mine, captured)):
        atol = LAYER_SCALED_ATOL * max(1.0, float(ref.abs().max()))
        torch.testing.assert_close(x, ref.reshape(x.shape), atol=atol, rtol=0, msg=lambda m: f"layer {i}: {m}")
    logits = ours.norm(mine[-1][-1]) @ ours.lm_head.T  # [vocab]: the last token through the final norm and head
    torch.testing.assert_close(logits, out.logits[0, -1], atol=ATOL, rtol=0)


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
