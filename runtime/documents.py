"""Documents: an image, a text, or an image followed by a text, with an optional id.

On the command line a document is written as:

* ``PATH`` — an image file;
* ``text:STRING`` — a text document;
* ``PATH::text:STRING`` — an image followed by a text (the document segment holds both, image first).

Directories and globs are expanded by :func:`expand_document_args` (images only, sorted). Only regular
files are documents: a FIFO, a device or a socket named like an image in a directory is skipped (with a
warning on the ``minireranker.runtime`` logger), and an image path is opened as a regular file of at most
``MAX_IMAGE_FILE_BYTES`` (runtime/preprocess.py) before anything reads it (runtime/files.py), so nothing
blocks on a FIFO or reads ``/dev/zero`` without bound.

Lists (:func:`expand_list_args`): an argument ``-`` stands for the lines of stdin, ``@FILE`` for the lines
of FILE (a file, or a pipe such as ``@<(find photos -name '*.png')``): one DOC (or id) a line, taken as
written but for the whitespace at its ends, blank lines skipped; a line is never a list itself.

Ids on the command line (docs/cli.md): a document the command line parses gets the id
:func:`command_line_id` gives it, and ``--ids X`` looks up :func:`resolve_id` of X, so that every spelling
of a path (``./a.png``, ``../here/a.png``, its absolute path, a link to it) names one cache entry::

    PATH                 the file's resolved absolute path (os.path.realpath: links resolved)
    PATH::text:STRING    that path, then ::text:STRING
    text:STRING          as written

The library (:class:`Document`, the Reranker) and the server keep ids opaque: they resolve nothing, so a
server never looks at a client's paths. Caches indexed before this rule hold ids as typed;
:func:`ids_indexed_as_typed` finds the ``--ids`` arguments such a cache holds only under those.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from .errors import DocumentError
from .files import FileTooLargeError, NotRegularFileError, file_kind, read_regular
from .preprocess import MAX_IMAGE_FILE_BYTES

log = logging.getLogger("minireranker.runtime")

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
        if path.exists() and not path.is_file():
            raise DocumentError(f"document {arg!r}: no such image file {image!r} (it is "
                                f"{file_kind(path.stat().st_mode)}, not a regular file); pass the path of an image "
                                "file, or write text:STRING for a text document")
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


def short_label(label: str, width: int = 80) -> str:
    """A document's label for a message: at most ``width`` characters (a long text is cut, its length said)."""
    return label if len(label) <= width else f"{label[:width]}... ({len(label):,} characters)"


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (str, Path)):
        try:
            return read_regular(image, MAX_IMAGE_FILE_BYTES)
        except (NotRegularFileError, FileTooLargeError, IsADirectoryError) as exc:
            raise DocumentError(f"image file {str(image)!r} {exc.strerror}; pass the path of an image file (at most "
                                f"{MAX_IMAGE_FILE_BYTES:,} bytes)") from None
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
                files = _regular_images(path)
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


def _regular_images(directory: Path) -> list[Path]:
    """The image files of ``directory``, sorted: regular files (or links to them) only, others skipped."""
    files = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        path = Path(entry.path)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            regular = entry.is_file()  # follows links: a link to a regular file is a document
        except OSError:
            regular = False
        if regular:
            files.append(path)
        else:
            try:
                kind = file_kind(os.stat(path).st_mode)
            except OSError as exc:
                kind = f"unreadable ({exc.strerror or exc})"
            log.warning("skipping %s in %s: it is %s, not a regular image file", entry.name, directory, kind)
    return files


# -- the command line's ids ---------------------------------------------------------------------------
def command_line_id(doc: Document) -> str:
    """The id of a document the command line parsed: an image path's resolved absolute path (then
    ``::text:STRING`` if it has a text), ``text:STRING`` for a text, or the id it already has."""
    if doc.id is not None:
        return str(doc.id)
    if isinstance(doc.image, (str, Path)):
        return os.path.realpath(doc.image) + (f"::text:{doc.text}" if doc.text else "")
    return doc.label


def resolve_id(typed: str) -> str:
    """The id that ``--ids typed`` looks up: :func:`command_line_id` of the document ``typed`` names when it
    names an existing file (``PATH`` or ``PATH::text:STRING``); anything else as written."""
    if typed.startswith("text:"):
        return typed
    path, sep, rest = typed.partition("::")
    if os.path.isfile(typed):
        return os.path.realpath(typed)
    if sep and rest.startswith("text:") and os.path.isfile(path):
        return f"{os.path.realpath(path)}::{rest}"
    return typed


def typed_id_forms(typed: str) -> list[str]:
    """The ids a cache indexed before :func:`resolve_id` may hold for ``--ids typed`` (ids were the
    string typed at index time): ``typed`` itself, normalised, relative to here and absolute; [] when
    ``typed`` resolves to itself (nothing changed for it)."""
    resolved = resolve_id(typed)
    if resolved == typed:
        return []
    path, sep, rest = typed.partition("::") if not os.path.isfile(typed) else (typed, "", "")
    tail = sep + rest
    forms = [typed, os.path.normpath(path) + tail, os.path.relpath(os.path.abspath(path)) + tail,
             os.path.abspath(path) + tail]
    return [f for f in dict.fromkeys(forms) if f != resolved]


def ids_indexed_as_typed(typed: Sequence[str], cached: Callable[[str], bool]) -> list[str]:
    """The ``--ids`` arguments whose resolved id ``cached`` (id -> whether the cache holds it) misses but
    whose id as typed before (:func:`typed_id_forms`) it holds: documents to index again."""
    return [t for t in typed if not cached(resolve_id(t)) and any(cached(form) for form in typed_id_forms(t))]


# -- lists: - and @FILE ----------------------------------------------------------------------------
def expand_list_args(args: Sequence[str], stdin: TextIO | None = None) -> list[str]:
    """``args`` with ``-`` replaced by the lines of ``stdin`` (default ``sys.stdin``) and ``@FILE`` by the
    lines of FILE (see the module docstring); any other argument as it is."""
    out: list[str] = []
    for arg in args:
        if arg == "-":
            out.extend(_list_lines(lambda: (stdin or sys.stdin).read(), "- (stdin)"))
        elif arg.startswith("@") and len(arg) > 1:
            out.extend(_list_lines(lambda: Path(arg[1:]).read_text(encoding="utf-8"), arg))
        else:
            out.append(arg)
    return out


def _list_lines(read, name: str) -> list[str]:
    """The non-blank lines of what ``read()`` returns, stripped; an unreadable list is a DocumentError."""
    try:
        text = read()
    except FileNotFoundError:
        raise DocumentError(f"{name}: no such file; @FILE reads one DOC a line from FILE (write ./{name} for a "
                            "document whose name starts with @)") from None
    except IsADirectoryError:
        raise DocumentError(f"{name}: is a directory; @FILE reads one DOC a line from the file FILE (a "
                            f"directory of images is a DOC itself: write {name[1:]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{name}: cannot read it as UTF-8 text ({exc}); give a list of one DOC a line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
