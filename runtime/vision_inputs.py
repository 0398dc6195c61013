"""Grid-dependent inputs of the vision tower, computed in numpy (the engines take them as inputs).

The vision graph is the same for every image size; what depends on the patch grid (``grid_h x grid_w``
patches) is integer bookkeeping, done here once per image:

* the (row, col) of each patch in the order pixel rows arrive (merge blocks, raster inside a block);
* the 4 bilinear (align_corners) taps and weights that resample the learned ``side x side`` position
  embedding to the grid (Qwen3-VL; a model without that table, ``side`` 0, gets zeros its graph never reads);
* the 2-D rotary cos/sin: the first half of the frequencies rotate by the row, the second by the column;
* with window attention (Qwen2.5-VL), the window each patch belongs to (:func:`window_ids`).

All float math is float32, like the model's.

Window attention needs no reordering of the patches. transformers permutes the merge units window by
window (``window_index``), attends within contiguous runs and undoes the permutation after the merger; every
other op of the tower is per token, so the tower is equivariant under that permutation and attention
masked to "same window" (``window_id[:, None] == window_id[None, :]``, built in the graph) computes the
same thing on the patches in their own order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VisionInputs:
    pos_index: np.ndarray    # int64 [N, 4] rows of the learned position table
    pos_weight: np.ndarray   # float32 [N, 4]
    rot_cos: np.ndarray      # float32 [N, head_dim]
    rot_sin: np.ndarray      # float32 [N, head_dim]
    window_id: np.ndarray | None = None  # int64 [N] each patch's attention window (None: no window attention)


def merge_block_coords(grid_h: int, grid_w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) int64 [N] of each patch, in merge-block order."""
    idx = np.arange(grid_h * grid_w, dtype=np.int64)
    in_col, in_row = idx % merge, (idx // merge) % merge
    block_col = (idx // (merge * merge)) % (grid_w // merge)
    block_row = idx // (merge * merge * (grid_w // merge))
    return block_row * merge + in_row, block_col * merge + in_col


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    lo = np.floor(src)
    frac = (src - lo).astype(np.float32)
    lo = lo.astype(np.int64)
    taps = np.stack([lo, np.minimum(lo + 1, side - 1)], axis=1)
    return taps, np.stack([np.float32(1) - frac, frac], axis=1)


def window_ids(grid_h: int, grid_w: int, merge: int, window: int) -> np.ndarray:
    """Attention window of each patch, int64 [N] in merge-block order: windows are ``window x window``
    merged tokens, tiled from the top-left corner, the last row and column of windows cut short (transformers
    pads the merged grid up to whole windows and drops the padding, which is the same partition)."""
    rows, cols = merge_block_coords(grid_h, grid_w, merge)
    per_row = -(-(grid_w // merge) // window)  # windows across
    return (rows // merge // window) * per_row + cols // merge // window


def vision_inputs(grid_h: int, grid_w: int, merge: int, side: int, head_dim: int, theta: float,
                  window: int = 0) -> VisionInputs:
    """Everything the vision graph needs besides the pixels, for a ``grid_h x grid_w`` patch grid.

    ``side``: of the learned position table (0: none); ``window``: side of an attention window in merged
    tokens (0: every patch attends over the whole image).
    """
    rows, cols = merge_block_coords(grid_h, grid_w, merge)
    if side > 0:
        h_taps, h_w = _axis_taps(rows, grid_h, side)
        w_taps, w_w = _axis_taps(cols, grid_w, side)
        index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
        weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4).astype(np.float32)
    else:
        n = rows.shape[0]
        index, weight = np.zeros((n, 4), np.int64), np.zeros((n, 4), np.float32)
    rot = head_dim // 2
    inv_freq = (1.0 / np.float32(theta) ** (np.arange(0, rot, 2, dtype=np.float32) / np.float32(rot))).astype(np.float32)
    freqs = np.concatenate([rows[:, None].astype(np.float32) * inv_freq, cols[:, None].astype(np.float32) * inv_freq],
                           axis=-1)
    emb = np.concatenate([freqs, freqs], axis=-1)
    windows = window_ids(grid_h, grid_w, merge, window) if window > 0 else None
    return VisionInputs(index, weight, np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32), windows)
