"""Shared fixtures: tiny checkpoints (built once per session) and real images from scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """``make(preset, seed=0) -> Path`` of a tiny Qwen3-VL checkpoint, cached for the session."""
    from minireranker.export.tiny import write_tiny_checkpoint

    cache: dict[tuple[str, int], Path] = {}

    def make(preset: str = "tiny", seed: int = 0) -> Path:
        if (preset, seed) not in cache:
            out = tmp_path_factory.mktemp(f"ckpt-{preset}-{seed}")
            cache[(preset, seed)] = write_tiny_checkpoint(out, preset, seed=seed)
        return cache[(preset, seed)]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_factory) -> Path:
    return checkpoint_factory("tiny")


def real_images() -> dict[str, Image.Image]:
    """Real photographs shipped inside scikit-image, cropped/resized to awkward, non-square sizes."""
    from skimage import data

    return {
        "astronaut_70x45": Image.fromarray(data.astronaut()).resize((70, 45)),
        "chelsea_128x100": Image.fromarray(data.chelsea()).resize((128, 100)),
        "coffee_33x100": Image.fromarray(data.coffee()).resize((33, 100)),
        "camera_grey_90x120": Image.fromarray(data.camera()).resize((90, 120)),  # mode L
        "rocket_128x128": Image.fromarray(data.rocket()).resize((128, 128)),
    }


@pytest.fixture(scope="session")
def images() -> dict[str, Image.Image]:
    return real_images()


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
