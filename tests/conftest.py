"""Shared fixtures: tiny checkpoints (built once per session) and real images from scikit-image."""

from __future__ import annotations

import os

# Triton runs its kernels on the CPU under its interpreter (tests/engines/test_band_kernel.py), which it
# decides for its own language functions when it is first imported; collecting the tests imports peft, and
# peft imports triton, so the switch must be set before any test module is imported: here.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


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


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory, checkpoint_factory):
    """``make(preset="tiny", spec=None, precision="fp32", attention="portable") -> Path`` of a built bundle.

    ``spec`` is a RerankSpec (None: the exact spec). Bundles are built once per session and cached.
    """
    from minireranker.export.onnx_export import BuildConfig, build_bundle
    from minireranker.runtime.spec import RerankSpec

    cache: dict[tuple, Path] = {}

    def make(preset: str = "tiny", spec=None, precision: str = "fp32", attention: str = "portable") -> Path:
        spec = spec or RerankSpec.exact()
        key = (preset, repr(spec), precision, attention)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"bundle-{preset}-{precision}-{attention}") / "bundle"
            build_bundle(checkpoint_factory(preset), out, spec, BuildConfig(precision=precision, attention=attention),
                         log=lambda message: None)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(bundle_factory) -> Path:
    """The tiny preset under an approximate spec (band [1, 2], exit 3, keep 0.5, self guide), fp32."""
    from minireranker.runtime.spec import RerankSpec

    return bundle_factory("tiny", RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64))
