"""Qwen2.5-VL's torch modules: Qwen2-VL's (:mod:`.qwen2_vl_torch`) with window attention in the tower.

Besides what its config sets on the shared modules (RMSNorm blocks and merger, the gated SiLU MLP with
biases), the tower attends within windows of ``window_size`` pixels in every block not listed in
``fullatt_block_indexes`` and over the whole image in those. No token is reordered: the graph takes each
patch's window (``window_id``, :func:`~minireranker.runtime.vision_inputs.window_ids`) and masks attention
to "same window", which equals transformers' permute-attend-unpermute (the module docstring of
:mod:`minireranker.runtime.vision_inputs` says why). The decoder is the shared one, as in Qwen2-VL.
"""

from __future__ import annotations

from torch import Tensor

from .qwen2_vl_torch import Qwen2VLTorch, VisionTower


class WindowedVisionTower(VisionTower):
    """Qwen2-VL's tower whose blocks outside ``fullatt_block_indexes`` attend within windows."""

    def block_masks(self, window_id: Tensor | None) -> list[Tensor | None]:
        if window_id is None:
            raise ValueError("this vision tower attends within windows: pass window_id (runtime/vision_inputs.py)")
        same_window = (window_id[:, None] == window_id[None, :])[None, None]  # bool [1, 1, N, N]
        full = self.cfg.fullatt_block_indexes
        return [None if i in full else same_window for i in range(len(self.blocks))]


class Qwen2_5_VLTorch(Qwen2VLTorch):
    """The pieces of Qwen2.5-VL the pipeline composes: windowed vision tower, embeddings, layers, exit head."""

    vision_tower = WindowedVisionTower
