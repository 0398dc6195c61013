"""Qwen2.5-VL's window attention without reordering: each patch's window id (numpy) partitions the patches
exactly as transformers' ``get_vision_window_index`` does, and the tiny preset's windows (and its one
full-attention block) really change the tower's output, so the fp32 parity of tests/export/test_modeling_parity.py
(atol 1e-5) covers them."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.vision_utils import get_vision_window_index  # noqa: E402

from minireranker.export.checkpoint import load_state_dict, open_checkpoint  # noqa: E402
from minireranker.export.modeling import build_model  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.preprocess import preprocess_image  # noqa: E402
from minireranker.runtime.vision_inputs import vision_inputs, window_ids  # noqa: E402

MERGE, PATCH = 2, 14


def transformers_windows(grid_h: int, grid_w: int, window_size: int) -> set[frozenset[int]]:
    """transformers' windows as sets of merged-token indices (raster order over the merged grid)."""
    index, cu = get_vision_window_index(torch.tensor([[1, grid_h, grid_w]]), MERGE, window_size, PATCH)
    bounds = (cu // MERGE**2).tolist()
    return {frozenset(index[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])}


@pytest.mark.parametrize("window_size", [56, 112])
@pytest.mark.parametrize("grid", [(4, 4), (8, 10), (8, 6), (16, 16), (6, 22), (2, 2)])
def test_window_ids_partition_the_patches_as_transformers(grid, window_size):
    grid_h, grid_w = grid
    ids = window_ids(grid_h, grid_w, MERGE, window_size // MERGE // PATCH)  # [N], patches in merge-block order
    blocks = ids.reshape(-1, MERGE**2)  # one row per merged token, raster order
    assert (blocks == blocks[:, :1]).all(), "the patches of one merged token share its window"
    ours: dict[int, set[int]] = {}
    for token, window in enumerate(blocks[:, 0]):
        ours.setdefault(int(window), set()).add(token)
    assert {frozenset(s) for s in ours.values()} == transformers_windows(grid_h, grid_w, window_size)


def test_vision_inputs_without_table_or_windows():
    vi = vision_inputs(8, 10, MERGE, 0, 20, 10000.0)
    assert vi.window_id is None
    assert vi.pos_index.shape == vi.pos_weight.shape == (80, 4) and not vi.pos_weight.any()
    assert vision_inputs(8, 10, MERGE, 0, 20, 10000.0, window=2).window_id.shape == (80,)


@torch.no_grad()
def test_windows_and_the_full_attention_block_change_the_output(checkpoint_factory, images):
    preset = PRESETS["qwen2_5_vl_tiny"]
    ckpt = open_checkpoint(checkpoint_factory("qwen2_5_vl_tiny"))
    tower = build_model(ckpt.config, load_state_dict(ckpt)).eval().vision
    pixels, grid = preprocess_image(images["chelsea_128x100"], ckpt.preprocess)
    window = preset.window_size // MERGE // PATCH
    assert len(set(window_ids(grid[1], grid[2], MERGE, window).tolist())) == 6  # 4x5 merged tokens, 2x3 windows
    assert preset.fullatt_block_indexes == (1,) and preset.vision_depth == 3
    reference = tower(torch.from_numpy(pixels), grid[1], grid[2])[0]
    real = tower.block_masks
    for masks in (lambda ids: [None] * 3, lambda ids: [real(ids)[0]] * 3):  # no windows / windows everywhere
        tower.block_masks = masks
        try:
            changed = tower(torch.from_numpy(pixels), grid[1], grid[2])[0]
        finally:
            del tower.block_masks
        assert (changed - reference).abs().max() > 1e-3
    with pytest.raises(ValueError, match="window_id"):
        tower.block_masks(None)  # a windowed tower fed without its window ids
