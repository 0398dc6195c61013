"""Grid-dependent inputs of the vision tower, computed in numpy (the engines take them as inputs).

The vision graph is the same for every image size; what depends on the patch grid (``grid_h x grid_w``
patches) is integer bookkeeping, done here once per image:

* the (row, col) of each patch in the order pixel rows arrive (merge blocks, raster inside a block);
* the 4 bilinear (align_corners) taps and weights that resample the learned ``side x side`` position
  embedding to the grid;
* the 2-D rotary cos/sin: the first half of the frequencies rotate by the row, the second by the column.

All float math is float32, like the model's.
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


def vision_inputs(grid_h: int, grid_w: int, merge: int, side: int, head_dim: int, theta: float) -> VisionInputs:
    """Everything the vision graph needs besides the pixels, for a ``grid_h x grid_w`` patch grid."""
    rows, cols = merge_block_coords(grid_h, grid_w, merge)
    h_taps, h_w = _axis_taps(rows, grid_h, side)
    w_taps, w_w = _axis_taps(cols, grid_w, side)
    index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4).astype(np.float32)
    rot = head_dim // 2
    inv_freq = (1.0 / np.float32(theta) ** (np.arange(0, rot, 2, dtype=np.float32) / np.float32(rot))).astype(np.float32)
    freqs = np.concatenate([rows[:, None].astype(np.float32) * inv_freq, cols[:, None].astype(np.float32) * inv_freq],
                           axis=-1)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return VisionInputs(index, weight, np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32))
