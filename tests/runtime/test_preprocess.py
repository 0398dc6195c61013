"""Tests of minireranker.runtime.preprocess.

Every comparison with transformers is exact: ``np.array_equal`` on float32 pixel values (tolerance 0)
and equality of the grid. transformers and scikit-image are optional; tests needing them are skipped.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minireranker.runtime.errors import CheckpointError, DocumentError
from minireranker.runtime.preprocess import (
    PreprocessConfig,
    load_image,
    num_image_tokens,
    preprocess_image,
    smart_resize,
    to_rgb,
)

TINY = PreprocessConfig.tiny()
QWEN3_VL = PreprocessConfig()  # Qwen3-VL's preprocessor_config.json
CONFIGS = {"tiny": TINY, "qwen3-vl": QWEN3_VL}
# The same preprocessor_config.json, as shipped with Qwen3-VL checkpoints.
QWEN3_VL_JSON = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def _reference(image, config: PreprocessConfig):
    """transformers' pixel values and grid for ``image`` (a PIL image or numpy array)."""
    module = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    processor = module.Qwen2VLImageProcessorPil(
        patch_size=config.patch_size,
        merge_size=config.merge_size,
        temporal_patch_size=config.temporal_patch_size,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rescale_factor=config.rescale_factor,
        size={"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels},
    )
    out = processor(images=image)
    return np.asarray(out["pixel_values"]), tuple(int(v) for v in out["image_grid_thw"][0])


def _assert_matches_transformers(image, config: PreprocessConfig) -> None:
    pixels, grid = preprocess_image(image, config)
    expected_pixels, expected_grid = _reference(image, config)
    assert grid == expected_grid
    assert pixels.dtype == np.float32 and expected_pixels.dtype == np.float32
    assert pixels.shape == (grid[1] * grid[2], 3 * config.temporal_patch_size * config.patch_size**2)
    assert np.array_equal(pixels, expected_pixels)  # bit-identical, tolerance 0


def _photo(name: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return getattr(data, name)()


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- equality with transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "coffee", "camera", "page"])
def test_photos_match_transformers(photo: str, config_name: str) -> None:
    _assert_matches_transformers(Image.fromarray(_photo(photo)), CONFIGS[config_name])


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize(
    "height, width",
    [(45, 70), (100, 33), (64, 64), (7, 7), (1, 150), (150, 1), (3, 500), (480, 640), (301, 1003)],
)
def test_odd_sizes_match_transformers(height: int, width: int, config_name: str) -> None:
    # Sizes off the 32-pixel grid, below min_pixels (upscaled) and, for tiny, above max_pixels (downscaled).
    _assert_matches_transformers(Image.fromarray(_noise(height, width)), CONFIGS[config_name])


def test_downscaling_beyond_max_pixels_matches_transformers() -> None:
    config = PreprocessConfig(max_pixels=256 * 256)
    image = Image.fromarray(_photo("coffee"))  # 400x600 > 256*256
    assert preprocess_image(image, config)[1] == (1, 12, 18)  # 192x288 pixels
    _assert_matches_transformers(image, config)


def test_other_mean_std_and_resample_match_transformers() -> None:
    clip = PreprocessConfig(
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
        min_pixels=56 * 56,
        max_pixels=28 * 28 * 1280,
        patch_size=14,
    )
    _assert_matches_transformers(Image.fromarray(_photo("chelsea")), clip)


def _palette_with_transparency() -> Image.Image:
    palette = Image.fromarray(_noise(45, 70, seed=3)).quantize(16)
    palette.info["transparency"] = 5
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def _mode_image(mode: str) -> Image.Image:
    rgb = Image.fromarray(_noise(45, 70, seed=1))
    if mode == "RGBA":
        return Image.fromarray(np.dstack([_noise(45, 70, seed=1), _noise(45, 70, 1, seed=2)]))
    if mode == "LA":
        return Image.fromarray(np.dstack([_noise(45, 70, 1, seed=4), _noise(45, 70, 1, seed=2)]), "LA")
    if mode == "P+transparency":
        return _palette_with_transparency()
    return rgb.convert(mode)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+transparency", "P", "L", "1", "CMYK", "YCbCr", "LAB"])
def test_modes_match_transformers(mode: str, config_name: str) -> None:
    image = _mode_image(mode)
    if mode == "P+transparency":
        assert image.mode == "P" and image.info.get("transparency") is not None
    _assert_matches_transformers(image, CONFIGS[config_name])


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_uint8_arrays_match_transformers(channels: int) -> None:
    # transformers composites numpy RGBA in float64 and rounds; Pillow's alpha_composite agrees exactly.
    array = _noise(45, 70, channels=channels, seed=5)
    if channels == 1:
        array = array[:, :, None]
    _assert_matches_transformers(array, TINY)


# -- colour modes -----------------------------------------------------------------------------------


def test_to_rgb_composites_transparency_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent: white
    rgba[1, :] = (0, 0, 0, 128)  # half-transparent black: grey
    rgb = to_rgb(Image.fromarray(rgba))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [127, 127, 127]


def test_to_rgb_greyscale_and_bilevel_replicate() -> None:
    grey = _noise(5, 6, channels=1)
    assert np.array_equal(to_rgb(Image.fromarray(grey)), np.repeat(grey[:, :, None], 3, axis=2))
    bilevel = Image.fromarray(grey).convert("1")
    assert set(np.unique(to_rgb(bilevel))) <= {0, 255}


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_to_rgb_scales_sixteen_bit(mode: str) -> None:
    samples = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(samples) if mode == "I;16" else Image.fromarray(samples.astype(np.int32))
    assert image.mode == mode
    assert to_rgb(image)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(to_rgb(image)[..., 0], to_rgb(image)[..., 2])


def test_to_rgb_cmyk_is_pillow_conversion() -> None:
    cmyk = Image.fromarray(_noise(4, 4, seed=9)).convert("CMYK")
    assert np.array_equal(to_rgb(cmyk), np.array(cmyk.convert("RGB")))


# -- smart_resize -----------------------------------------------------------------------------------

SIDES = [1, 2, 15, 16, 17, 31, 32, 33, 45, 64, 70, 100, 127, 128, 129, 255, 256, 500, 1023, 1024, 1025, 3000, 5000]


@pytest.mark.parametrize(
    "factor, min_pixels, max_pixels", [(32, 32 * 32, 128 * 128), (32, 65536, 16777216), (28, 3136, 12845056)]
)
def test_smart_resize_matches_transformers(factor: int, min_pixels: int, max_pixels: int) -> None:
    module = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    for height in SIDES:
        for width in SIDES:
            if max(height, width) / min(height, width) > 200:
                with pytest.raises(DocumentError, match="aspect ratio"):
                    smart_resize(height, width, factor, min_pixels, max_pixels)
                continue
            expected = module.smart_resize(height, width, factor, min_pixels, max_pixels)
            assert smart_resize(height, width, factor, min_pixels, max_pixels) == expected, (height, width)


def test_num_image_tokens() -> None:
    pixels, grid = preprocess_image(_noise(64, 64), TINY)
    assert grid == (1, 4, 4) and pixels.shape == (16, 1536)
    assert num_image_tokens(grid, TINY.merge_size) == 4
    assert num_image_tokens(np.array([1, 12, 20]), 2) == 60


# -- load_image -------------------------------------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_image_sources(tmp_path: Path) -> None:
    array = _noise(20, 30, seed=7)
    path = tmp_path / "doc.png"
    path.write_bytes(_png_bytes(array))
    for source in (str(path), path, path.read_bytes(), bytearray(path.read_bytes()), Image.fromarray(array), array):
        assert np.array_equal(to_rgb(load_image(source)), array), type(source)
    assert load_image(array[:, :, 0]).mode == "L"
    assert load_image(np.dstack([array, array[:, :, :1]])).mode == "RGBA"


def test_load_image_float_array_rounds_to_uint8() -> None:
    floats = np.array([[0.0, 0.5, 1.0, 0.1]], dtype=np.float32)
    assert np.asarray(load_image(floats)).tolist() == [[0, 128, 255, 26]]


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    stored[:, :20, 0] = 255
    stored[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif)
    for source in (path, path.read_bytes()):
        shown = to_rgb(load_image(source))
        assert shown.shape == (40, 20, 3)  # clockwise rotation puts the left half on top
        assert shown[5, 10, 0] > 200 and shown[5, 10, 2] < 60  # red on top (JPEG: tolerance 60 levels)
        assert shown[35, 10, 2] > 200 and shown[35, 10, 0] < 60  # blue below


@pytest.mark.parametrize(
    "source, message",
    [
        (np.zeros((4, 5, 2), np.uint8), "unsupported shape"),
        (np.zeros((3, 4, 5, 3), np.uint8), "unsupported shape"),
        (np.zeros((3, 4, 5), np.uint8), "transpose"),
        (np.zeros((4, 5, 3), np.uint16), "unsupported dtype"),
        (np.zeros((4, 5), np.bool_), "unsupported dtype"),
        (np.full((4, 5), 2.0), r"within \[0, 1\]"),
        (np.full((4, 5), np.nan), r"within \[0, 1\]"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (Image.new("RGB", (0, 5)), "empty"),
        (np.zeros((1, 201), np.uint8), "aspect ratio of 201.0:1"),
        (Image.new("RGB", (3, 700)), "crop it, pad it"),
        (b"certainly not an image", "cannot be decoded"),
        (b"", "cannot be decoded"),
        (12, "cannot read an image from a int"),
        ([[0, 1]], "pass a file path"),
    ],
)
def test_load_image_errors(source, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        load_image(source)


def test_load_image_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(DocumentError, match="missing.png.*no such file"):
        load_image(missing)
    with pytest.raises(DocumentError, match="is a directory"):
        load_image(tmp_path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DocumentError, match="corrupt.png.*cannot be decoded"):
        load_image(str(corrupt))
    jpeg = io.BytesIO()
    Image.fromarray(_photo("astronaut")).save(jpeg, format="JPEG")
    with pytest.raises(DocumentError, match=r"image bytes \(\d+ bytes\) cannot be decoded"):
        load_image(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # truncated


def test_to_rgb_errors() -> None:
    with pytest.raises(DocumentError, match="mode 'La' .* cannot be read as RGB"):
        to_rgb(Image.new("La", (3, 2)))
    jpeg = io.BytesIO()
    Image.fromarray(_photo("astronaut")).save(jpeg, format="JPEG")
    lazy = Image.open(io.BytesIO(jpeg.getvalue()[:5000]))  # truncated, not decoded yet
    with pytest.raises(DocumentError, match="mode 'RGB' .* cannot be read as RGB"):
        preprocess_image(lazy, TINY)


def test_load_image_accepts_extreme_but_allowed_aspect() -> None:
    assert load_image(np.zeros((1, 200), np.uint8)).size == (200, 1)


# -- PreprocessConfig -------------------------------------------------------------------------------


def test_config_defaults_equal_qwen3_vl_json() -> None:
    assert PreprocessConfig.from_dict(QWEN3_VL_JSON) == QWEN3_VL


@pytest.mark.parametrize(
    "config",
    [QWEN3_VL, TINY, PreprocessConfig(patch_size=14, min_pixels=3136, max_pixels=12845056, resample="bilinear")],
)
def test_config_round_trips(config: PreprocessConfig, tmp_path: Path) -> None:
    d = config.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert PreprocessConfig.from_dict(d) == config
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(d))
    assert PreprocessConfig.from_file(tmp_path) == config
    assert PreprocessConfig.from_file(tmp_path / "preprocessor_config.json") == config


def test_config_legacy_pixel_keys() -> None:
    qwen2_vl = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "image_mean": 0.5, "resample": 3}
    config = PreprocessConfig.from_dict({**qwen2_vl, "size": {"min_pixels": 1, "max_pixels": 2}})
    assert (config.min_pixels, config.max_pixels, config.patch_size) == (3136, 12845056, 14)
    assert config.image_mean == (0.5, 0.5, 0.5) and config.resample == "bicubic"
    nested = PreprocessConfig.from_dict({"size": {"min_pixels": 1024, "max_pixels": 16384}})
    assert (nested.min_pixels, nested.max_pixels) == (1024, 16384)
    # The top-level keys win over "size", as in transformers.
    mixed = PreprocessConfig.from_dict({"size": {"shortest_edge": 1024, "longest_edge": 16384}, "max_pixels": 4096})
    assert (mixed.min_pixels, mixed.max_pixels) == (1024, 4096)


@pytest.mark.parametrize(
    "d, message",
    [
        ({"patch_size": 0}, "patch_size=0 is invalid"),
        ({"merge_size": "2"}, "merge_size='2' is invalid: it must be a positive integer"),
        ({"temporal_patch_size": True}, "temporal_patch_size=True"),
        ({"size": {"shortest_edge": 5000, "longest_edge": 4096}}, "size.shortest_edge=5000 .* at most"),
        ({"size": {"shortest_edge": 16, "longest_edge": 512}}, r"size.longest_edge=512 .* \(patch_size\*merge_size"),
        ({"size": [1, 2]}, "size=.* fix `size`"),
        ({"image_mean": [0.5, 0.5]}, "image_mean=.* three finite numbers"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std=.* three positive numbers"),
        ({"rescale_factor": -1}, "rescale_factor=-1"),
        ({"resample": 9}, "resample=9 .* PIL resampling code"),
        ({"do_normalize": False}, "do_normalize=False is not supported"),
    ],
)
def test_config_validation_errors(d: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        PreprocessConfig.from_dict(d)


def test_config_direct_validation_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="resample='cubic'"):
        PreprocessConfig(resample="cubic")
    with pytest.raises(CheckpointError, match="not found"):
        PreprocessConfig.from_file(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON file"):
        PreprocessConfig.from_file(tmp_path)
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        PreprocessConfig.from_dict([1, 2])


def test_module_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, minireranker.runtime.preprocess; "
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
