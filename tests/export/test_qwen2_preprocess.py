"""Qwen2-VL / Qwen2.5-VL image preprocessing: our numpy path is bit-identical (tolerance 0) to transformers'
``Qwen2VLImageProcessorPil`` with their settings (patch 14, merge 2, CLIP mean/std), on images whose sides
are not multiples of 28, read from the tiny checkpoints' own preprocessor_config.json as the oracle reads it,
and with the released checkpoints' pixel budget."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

from minireranker.runtime.preprocess import PreprocessConfig, preprocess_image  # noqa: E402

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# Qwen2-VL-2B-Instruct's and Qwen2.5-VL's preprocessor_config.json
RELEASED = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
ODD_SIZES = [(45, 70), (100, 33), (120, 90), (129, 257), (301, 1003), (29, 29), (1, 150)]  # (height, width)


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def assert_bit_identical(image: Image.Image, ours: PreprocessConfig, theirs: Qwen2VLImageProcessorPil) -> None:
    pixels, grid = preprocess_image(image, ours)
    out = theirs(images=[image])
    assert grid == tuple(int(v) for v in out["image_grid_thw"][0])
    assert pixels.dtype == np.asarray(out["pixel_values"]).dtype == np.float32
    assert np.array_equal(pixels, np.asarray(out["pixel_values"]))  # bit-identical, tolerance 0


@pytest.mark.parametrize("preset", ["qwen2_vl_tiny", "qwen2_5_vl_tiny"])
def test_tiny_checkpoint_preprocessing_is_transformers(checkpoint_factory, images, preset):
    directory = checkpoint_factory(preset)
    ours, theirs = PreprocessConfig.from_file(directory), Qwen2VLImageProcessorPil.from_pretrained(directory)
    assert (ours.patch_size, ours.image_mean, ours.image_std) == (14, CLIP_MEAN, CLIP_STD)
    for image in images.values():  # 70x45, 128x100, 33x100, 90x120 (greyscale), 128x128
        assert_bit_identical(image, ours, theirs)
    for height, width in ODD_SIZES:
        assert height % 28 or width % 28
        assert_bit_identical(noise(height, width), ours, theirs)


def test_released_settings_preprocessing_is_transformers(images):
    ours = PreprocessConfig.from_dict(RELEASED)
    settings = {k: v for k, v in RELEASED.items() if k not in ("image_processor_type", "processor_class")}
    theirs = Qwen2VLImageProcessorPil(**settings)
    for image in images.values():
        assert_bit_identical(image, ours, theirs)
    for height, width in ODD_SIZES:
        assert_bit_identical(noise(height, width, seed=height), ours, theirs)
