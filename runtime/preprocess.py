"""Image preprocessing for Qwen3-VL with numpy and Pillow only (no torch, no transformers).

For the same settings the output is bit-identical to transformers' ``Qwen2VLImageProcessorPil``::

    source --load_image--> PIL image --to_rgb--> [H, W, 3] uint8
      --smart_resize + PIL resize--> [h, w, 3] uint8      h, w multiples of patch*merge, min<=h*w<=max
      --x*rescale (float64, then float32), (x-mean)/std (float32)--> [h, w, 3] float32
      --patchify--> pixel_values [grid_h*grid_w, 3*T*P*P], grid_thw (1, grid_h, grid_w)

Rows of ``pixel_values`` come in merge-block order (each merge*merge block of neighbouring patches is
contiguous) and each row is laid out ``[channel, frame, patch row, patch column]``; a still image is
given to the vision tower as ``T`` identical frames.

How :func:`to_rgb` treats each Pillow mode (equal to transformers wherever transformers reads the mode
sensibly):

* ``RGB``: as is.
* Anything with an alpha band (``RGBA``, ``LA``, ``PA``) or a ``transparency`` entry (``P``, ``L`` or
  ``RGB`` with a tRNS chunk): alpha-composited onto opaque white, as transformers does.
* ``L`` (greyscale): replicated into three channels. ``1`` (bilevel): 0 -> 0, 1 -> 255.
* ``P`` (palette) without transparency, ``CMYK``, ``YCbCr``, ``LAB``, ``F``: Pillow's ``convert("RGB")``.
* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` and ``I`` (which Pillow uses for 16-bit PNGs): taken to hold
  16-bit samples, clipped to 0..65535 and scaled to 8 bits as ``round(v / 257)``, then replicated.
  This deliberately differs from transformers, whose ``convert("RGB")`` clips every value above 255 and
  turns a 16-bit image nearly white. A transparency entry of a 16-bit image is ignored.

:func:`load_image` applies the EXIF orientation of files and encoded bytes (PIL images and arrays are
taken as they are) and reads the first frame of animated or multi-page files. A file or bytes whose header
claims more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb) is refused before it is
decoded. Numpy arrays must be channels last: ``HxW`` (greyscale), ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4``
(RGBA), ``uint8``, or any float dtype with values in ``[0, 1]``, which become ``uint8`` as ``round(v * 255)``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import CheckpointError, DocumentError
from .files import FileTooLargeError, NotRegularFileError, open_regular

__all__ = [
    "ImageSource", "PreprocessConfig", "load_image", "num_image_tokens", "preprocess_image",
    "smart_resize", "to_rgb",
]

ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

MAX_ASPECT_RATIO = 200  # Qwen-VL's limit on max(h, w) / min(h, w)
MAX_IMAGE_FILE_BYTES = 256 << 20  # an image file larger than this is refused before it is read
RESAMPLE_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_JSON_KEYS = {"min_pixels": "size.shortest_edge", "max_pixels": "size.longest_edge"}
_ALWAYS_ON = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _invalid(field: str, value: Any, need: str) -> CheckpointError:
    key = _JSON_KEYS.get(field, field)
    return CheckpointError(
        f"image preprocessor setting {key}={value!r} is invalid: it must be {need}; "
        f"fix `{key}` in preprocessor_config.json (PreprocessConfig.{field})"
    )


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the Qwen-VL image processor, as read from ``preprocessor_config.json``."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536  # "size": {"shortest_edge"}
    max_pixels: int = 16777216  # "size": {"longest_edge"}
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise _invalid(name, getattr(self, name), "a positive integer")
        if self.max_pixels < self.factor**2:
            raise _invalid("max_pixels", self.max_pixels, f"at least (patch_size*merge_size)**2 = {self.factor**2}")
        if self.min_pixels > self.max_pixels:
            raise _invalid("min_pixels", self.min_pixels, f"at most size.longest_edge = {self.max_pixels}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if not isinstance(value, Sequence) or len(value) != 3 or not all(_is_number(v) for v in value):
                raise _invalid(name, value, "three finite numbers (R, G, B)")
            if name == "image_std" and min(value) <= 0:
                raise _invalid(name, value, "three positive numbers")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if not _is_number(self.rescale_factor) or self.rescale_factor <= 0:
            raise _invalid("rescale_factor", self.rescale_factor, "a positive number (usually 1/255)")
        object.__setattr__(self, "rescale_factor", float(self.rescale_factor))
        if self.resample not in RESAMPLE_CODES:
            raise _invalid("resample", self.resample, f"one of {sorted(RESAMPLE_CODES)}")

    @property
    def factor(self) -> int:
        """Side of one merged patch in pixels: resized sides are multiples of it."""
        return self.patch_size * self.merge_size

    @classmethod
    def tiny(cls) -> PreprocessConfig:
        """Small limits for tests: a 64x64 image stays 64x64 (4x4 patches, 4 image tokens)."""
        return cls(min_pixels=32 * 32, max_pixels=128 * 128)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Read a Hugging Face ``preprocessor_config.json`` dict; unknown keys are ignored."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"preprocessor config must be a JSON object, got {type(d).__name__}")
        for flag in _ALWAYS_ON:
            if d.get(flag, True) is not True:
                raise CheckpointError(
                    f"image preprocessor setting {flag}={d[flag]!r} is not supported: the runtime always "
                    f"resizes, rescales, normalizes and converts to RGB; remove `{flag}` or set it to true"
                )
        size = d.get("size") or {}
        if not isinstance(size, Mapping):
            raise CheckpointError(
                f"image preprocessor setting size={size!r} is invalid: it must be an object such as "
                '{"shortest_edge": 65536, "longest_edge": 16777216}; fix `size` in preprocessor_config.json'
            )
        kwargs: dict[str, Any] = {}
        # The legacy top-level keys win over "size", as in transformers.
        for field, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            value = next((v for v in (d.get(field), size.get(edge), size.get(field)) if v is not None), None)
            if value is not None:
                kwargs[field] = value
        for name in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor"):
            if d.get(name) is not None:
                kwargs[name] = d[name]
        for name in ("image_mean", "image_std"):
            if d.get(name) is not None:
                kwargs[name] = (d[name],) * 3 if _is_number(d[name]) else d[name]
        if d.get("resample") is not None:
            names = {code: name for name, code in RESAMPLE_CODES.items()}
            if not _is_int(d["resample"]) or d["resample"] not in names:
                raise _invalid("resample", d["resample"], "a PIL resampling code 0..5 (3 = bicubic)")
            kwargs["resample"] = names[d["resample"]]
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PreprocessConfig:
        """Read ``preprocessor_config.json``, or that file inside a checkpoint directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path} not found; the checkpoint needs its preprocessor_config.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is not a readable JSON file ({error}); restore it") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``preprocessor_config.json`` keys; ``from_dict`` reads it back."""
        return {
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "resample": RESAMPLE_CODES[self.resample],
        }


def _check_size(height: int, width: int, name: str) -> None:
    if height < 1 or width < 1:
        raise DocumentError(f"{name} is empty ({width}x{height} pixels); pass an image with pixels in it")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise DocumentError(
            f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.1f}:1, above Qwen-VL's limit of "
            f"{MAX_ASPECT_RATIO}:1; crop it, pad it, or cut it into several images"
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Output (height, width): multiples of ``factor``, area in [min_pixels, max_pixels], aspect ~kept."""
    _check_size(height, width, f"an image of {width}x{height}")
    out_h, out_w = round(height / factor) * factor, round(width / factor) * factor
    if out_h * out_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        out_h = max(factor, math.floor(height / shrink / factor) * factor)
        out_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif out_h * out_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        out_h = math.ceil(height * grow / factor) * factor
        out_w = math.ceil(width * grow / factor) * factor
    return out_h, out_w


def _too_large(name: str, detail: str) -> DocumentError:
    return DocumentError(
        f"{name} {detail}, above Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS), so it was not decoded; downscale the image, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )


def _is_empty(data: str | os.PathLike | io.BytesIO) -> bool:
    try:
        return (data.getbuffer().nbytes if isinstance(data, io.BytesIO) else os.path.getsize(data)) == 0
    except OSError:
        return False


def _decode(data: str | os.PathLike | io.BytesIO, name: str) -> Image.Image:
    try:
        # a path is opened as a regular file only (never a FIFO or a device) and capped in size
        source = data if isinstance(data, io.BytesIO) else open_regular(data, MAX_IMAGE_FILE_BYTES)
        with contextlib.closing(source) if source is not data else contextlib.nullcontext(), \
                Image.open(source) as opened:  # reads the header only
            # Pillow raises DecompressionBombError above 2x MAX_IMAGE_PIXELS but only warns between 1x and
            # 2x, and would then allocate the whole image: refuse from the header, before decoding.
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and opened.width * opened.height > limit:
                raise _too_large(name, f"claims {opened.width}x{opened.height} = "
                                       f"{opened.width * opened.height:,} pixels")
            opened.load()  # decode now, so that a truncated file fails here
            return ImageOps.exif_transpose(opened)  # a new image, valid after close
    except DocumentError:
        raise
    except Image.DecompressionBombError as error:  # raised by Image.open, before the check above
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(name, f"claims {int(claimed[1]):,} pixels" if claimed else "is too large") from None
    except (NotRegularFileError, FileTooLargeError) as error:
        raise DocumentError(f"{name} {error.strerror}; pass the path of an image file (at most "
                            f"{MAX_IMAGE_FILE_BYTES:,} bytes)") from None
    except FileNotFoundError:
        raise DocumentError(f"{name}: no such file; check the path") from None
    except IsADirectoryError:
        raise DocumentError(f"{name} is a directory; pass the path of an image file") from None
    except PermissionError:
        raise DocumentError(f"{name} cannot be read (permission denied); check its permissions") from None
    except Exception as error:  # decoders of untrusted data raise many types (OSError, SyntaxError, ...)
        if _is_empty(data):
            raise DocumentError(f"{name} cannot be decoded as an image: it is empty (0 bytes); pass a valid "
                                "JPEG, PNG, WebP, ... file (check that it was completely written)") from None
        if isinstance(error, OSError) and error.errno is not None:  # the file system's error, not a decoder's
            raise DocumentError(f"{name} cannot be read ({error.strerror or error}); "
                                "check that the file exists and is readable") from None
        raise DocumentError(
            f"{name} cannot be decoded as an image ({error}); pass a valid JPEG, PNG, WebP, ... file"
        ) from None


def _image_from_array(array: np.ndarray) -> Image.Image:
    name = f"numpy array of shape {array.shape} and dtype {array.dtype}"
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DocumentError(
            f"{name}: unsupported shape; pass HxW (greyscale), HxWx3 (RGB) or HxWx4 (RGBA), channels last "
            "(turn CxHxW into HxWxC with array.transpose(1, 2, 0))"
        )
    _check_size(array.shape[0], array.shape[1], name)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DocumentError(f"{name}: float pixels must be finite and within [0, 1]; rescale, or pass uint8")
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DocumentError(f"{name}: unsupported dtype; pass uint8 (0..255) or floats in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))


def load_image(source: ImageSource) -> Image.Image:
    """Open a path, encoded bytes, PIL image or numpy array (see the module docstring) as a PIL image."""
    if isinstance(source, Image.Image):
        image, name = source, f"PIL image ({source.mode}, {source.width}x{source.height})"
    elif isinstance(source, np.ndarray):
        image, name = _image_from_array(source), f"numpy array of shape {source.shape}"
    elif isinstance(source, (str, os.PathLike)):
        name = f"image file {os.fspath(source)!r}"
        image = _decode(source, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = f"image bytes ({len(source)} bytes)"
        image = _decode(io.BytesIO(bytes(source)), name)
    else:
        raise DocumentError(
            f"cannot read an image from a {type(source).__name__}; pass a file path, encoded image bytes, "
            "a PIL image or an HxWx3 uint8 numpy array"
        )
    _check_size(image.height, image.width, name)
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """[H, W, 3] uint8 RGB pixels of ``image``; the module docstring says how each mode is treated."""
    mode = image.mode
    try:
        if mode in _SIXTEEN_BIT_MODES:
            samples = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
            image = Image.fromarray(np.rint(samples / 257).astype(np.uint8))
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return np.array(image.convert("RGB"))
    except (OSError, ValueError) as error:  # a mode Pillow cannot convert, or a lazily opened broken file
        raise DocumentError(
            f"PIL image of mode {mode!r} ({image.width}x{image.height}) cannot be read as RGB ({error}); "
            "pass an RGB, RGBA, L, P or CMYK image, or the file itself"
        ) from None


def _patchify(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """[H, W, C] -> [grid_h*grid_w, C*T*P*P], rows in merge-block order."""
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    height, width, channels = pixels.shape
    grid_h, grid_w = height // p, width // p
    blocks = pixels.reshape(grid_h // m, m, p, grid_w // m, m, p, channels)
    # (block row, row in block, pixel row, block col, col in block, pixel col, C) -> (br, bc, rb, cb, C, pr, pc)
    blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5)
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], blocks.shape[:5] + (t, p, p))
    return frames.reshape(grid_h * grid_w, channels * t * p * p)


def preprocess_image(source: ImageSource, config: PreprocessConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Pixel values [grid_h*grid_w, 3*T*P*P] float32 and grid_thw (1, grid_h, grid_w) of one image."""
    rgb = to_rgb(load_image(source))  # [H, W, 3] uint8
    height, width = smart_resize(rgb.shape[0], rgb.shape[1], config.factor, config.min_pixels, config.max_pixels)
    resized = Image.fromarray(rgb).resize((width, height), resample=RESAMPLE_CODES[config.resample])
    # Scaling in float64 then rounding once to float32, and normalizing in float32, keeps the bits of
    # transformers' rescale() and normalize().
    pixels = (np.asarray(resized, dtype=np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    pixels = (pixels - mean) / std  # [h, w, 3] float32
    return _patchify(pixels, config), (1, height // config.patch_size, width // config.patch_size)


def num_image_tokens(grid_thw: Sequence[int], merge_size: int) -> int:
    """Number of visual tokens the language model sees: one per merge*merge block of patches."""
    t, grid_h, grid_w = (int(v) for v in grid_thw)
    return t * grid_h * grid_w // merge_size**2
