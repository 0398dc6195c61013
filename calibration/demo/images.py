"""The demo's image sources and how a document is drawn: the sklearn digits split once by a seeded
permutation, the skimage photographs, and rendering (``rng`` None: the canonical, unaugmented image;
with ``rng``: the training augmentation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageEnhance

from .data import DIGIT_SIDE, PHOTO_LONG_SIDE, SPLIT_SIZES, DocSpec


@dataclass(frozen=True)
class Digits:
    """The sklearn digits (ink 0..16, [N, 8, 8]) and their labels, with the three source splits."""

    images: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    def of(self, split: str) -> np.ndarray:
        return self.splits[split]


@lru_cache(maxsize=2)
def split_digits(seed: int = 0) -> Digits:
    """Load the digits and split the source images by a seeded permutation (disjoint, covering)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    calib, heldout = SPLIT_SIZES["calib"], SPLIT_SIZES["heldout"]
    splits = {"calib": np.sort(order[:calib]), "heldout": np.sort(order[calib: calib + heldout]),
              "train": np.sort(order[calib + heldout:])}
    return Digits(data.images.astype(np.float32), data.target.astype(np.int64), splits)


@lru_cache(maxsize=None)
def photo_source(name: str) -> Image.Image:
    """The skimage photograph, RGB, downscaled to ``2 * PHOTO_LONG_SIDE`` (augmented crops come from it)."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype == bool:
        array = np.where(array, 0, 255).astype(np.uint8)  # the horse: a black silhouette on white
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((2 * PHOTO_LONG_SIDE, 2 * PHOTO_LONG_SIDE), Image.Resampling.LANCZOS)
    return image


def render_digit_cell(ink: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """One 8x8 digit (ink 0..16) drawn dark on white in a DIGIT_SIDE square: uint8 [S, S]."""
    size, shift = 56, (0, 0)
    contrast = 1.0
    if rng is not None:
        size = int(rng.integers(46, 61))
        shift = tuple(int(v) for v in rng.integers(-3, 4, size=2))
        contrast = float(rng.uniform(0.7, 1.0))
    small = Image.fromarray((255 - ink * (255.0 / 16.0) * contrast).clip(0, 255).astype(np.uint8))
    glyph = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    cell = np.full((DIGIT_SIDE, DIGIT_SIDE), 255, dtype=np.uint8)
    top = (DIGIT_SIDE - size) // 2 + shift[0]
    left = (DIGIT_SIDE - size) // 2 + shift[1]
    top, left = min(max(top, 0), DIGIT_SIDE - size), min(max(left, 0), DIGIT_SIDE - size)
    cell[top: top + size, left: left + size] = glyph
    return cell


def render_photo(name: str, rng: np.random.Generator | None = None) -> Image.Image:
    """The photograph, longer side PHOTO_LONG_SIDE; with ``rng`` a random crop, flip, colour jitter, size."""
    image = photo_source(name)
    if rng is None:
        image = image.copy()
        image.thumbnail((PHOTO_LONG_SIDE, PHOTO_LONG_SIDE), Image.Resampling.LANCZOS)
        return image
    w, h = image.size
    scale = float(rng.uniform(0.6, 1.0))
    cw, ch = max(16, int(w * scale)), max(16, int(h * scale))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.75, 1.25)))
    side = int(rng.integers(80, 161))
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    return image


def render(doc: DocSpec, digits: Digits, rng: np.random.Generator | None = None) -> Image.Image | None:
    """The document's image (None for a text document)."""
    if not doc.has_image:
        return None
    if doc.photo is not None:
        return render_photo(doc.photo, rng)
    parts = []
    for i, source in enumerate(doc.sources):
        parts.append(np.full((DIGIT_SIDE, doc.margins[i]), 255, dtype=np.uint8))
        parts.append(render_digit_cell(digits.images[source], rng))
    parts.append(np.full((DIGIT_SIDE, doc.margins[-1]), 255, dtype=np.uint8))
    return Image.fromarray(np.concatenate(parts, axis=1), mode="L")
