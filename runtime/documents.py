"""Documents: an image, a text, or an image followed by a text, with an optional id.

On the command line a document is written as:

* ``PATH`` — an image file;
* ``text:STRING`` — a text document;
* ``PATH::text:STRING`` — an image followed by a text (the document segment holds both, image first).

Directories and globs are expanded by :func:`expand_document_args` (images only, sorted).
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DocumentError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class Document:
    """One candidate. ``image`` is a path, bytes, a PIL image or a numpy array; ``text`` a string."""

    image: Any = None
    text: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise DocumentError(f"document text must be a string, got {type(self.text).__name__}")
        if self.image is None and not self.text and self.id is None:
            raise DocumentError("a document needs an image, a non-empty text, or an id already indexed")

    @property
    def label(self) -> str:
        """How the document is named in messages and JSON output."""
        if self.id is not None:
            return str(self.id)
        parts = []
        if self.image is not None:
            parts.append(str(self.image) if isinstance(self.image, (str, Path)) else f"<{type(self.image).__name__}>")
        if self.text:
            parts.append("text:" + self.text)
        return "::".join(parts)

    @classmethod
    def parse(cls, arg: str) -> "Document":
        """Parse one command-line DOC argument (see the module docstring)."""
        if arg.startswith("text:"):
            text = arg[len("text:"):]
            if not text:
                raise DocumentError("empty text document 'text:'; write text:SOMETHING")
            return cls(text=text)
        image, sep, rest = arg.partition("::")
        if sep and (not rest.startswith("text:") or rest == "text:"):
            raise DocumentError(f"document {arg!r}: after '::' write text:STRING with a non-empty STRING "
                                "(an image followed by a text)")
        path = Path(image)
        if not path.is_file():
            raise DocumentError(
                f"document {arg!r}: no such image file {image!r}; write text:STRING for a text document"
            )
        return cls(image=path, text=rest[len("text:"):] or None if sep else None)

    def content_hash(self) -> str:
        """A stable hash of the content (image bytes or pixels, and text), for cache keys."""
        h = hashlib.sha256()
        # Length-prefixed fields, so no image bytes can impersonate a text suffix.
        data = _image_bytes(self.image) if self.image is not None else b""
        text = (self.text or "").encode("utf-8")
        for tag, field in ((b"image", data), (b"text", text)):
            h.update(tag + len(field).to_bytes(8, "little") + field)
        return h.hexdigest()


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (str, Path)):
        try:
            return Path(image).read_bytes()
        except OSError as exc:
            raise DocumentError(f"cannot read image file {str(image)!r} ({exc.strerror or exc}); "
                                "check that the file exists and is readable") from None
    if isinstance(image, bytes):
        return image
    if hasattr(image, "tobytes"):  # PIL image or numpy array
        shape = getattr(image, "shape", None) or getattr(image, "size", None)
        mode = getattr(image, "mode", None) or getattr(image, "dtype", None)
        return f"{shape}|{mode}|".encode() + image.tobytes()
    raise DocumentError(f"unsupported image type {type(image).__name__}: pass a path, bytes, PIL image or array")


def expand_document_args(args: list[str]) -> list[Document]:
    """Parse DOC arguments, expanding directories (their image files, sorted) and glob patterns."""
    docs: list[Document] = []
    for arg in args:
        if not arg.startswith("text:") and "::" not in arg:
            path = Path(arg)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise DocumentError(f"directory {arg} holds no image files ({sorted(IMAGE_SUFFIXES)})")
                docs.extend(Document(image=p) for p in files)
                continue
            if any(ch in arg for ch in "*?[") and not path.exists():
                matches = sorted(glob.glob(arg))
                if not matches:
                    raise DocumentError(f"pattern {arg!r} matches no file")
                docs.extend(Document.parse(m) for m in matches)
                continue
        docs.append(Document.parse(arg))
    return docs
