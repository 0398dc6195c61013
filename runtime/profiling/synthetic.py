"""What the profiler feeds the runtime: synthetic queries of an exact token count, synthetic page-like
documents (deterministic per seed and index), and the candidate pool a profile reranks over."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..documents import Document

if TYPE_CHECKING:  # only for annotations: profile.py imports this module
    from .profile import ProfileConfig

_WORDS = ("find the invoice page with a red table that shows total revenue by region for last quarter and a bar "
          "chart of costs").split()


def synthetic_query(tokenizer: Any, tokens: int) -> tuple[str, int]:
    """A query of ``tokens`` tokens (exactly where the tokenizer allows) made of ordinary words."""
    def count(words: list[str]) -> int:
        return len(tokenizer.encode(" ".join(words), add_special_tokens=False).ids) if words else 0

    words: list[str] = []
    while count(words) < tokens:
        words.append(_WORDS[len(words) % len(_WORDS)])
    while count(words) > tokens:
        words.pop()
    for i in range(4 * tokens):  # top up with single letters, usually one token each after a space
        if count(words) >= tokens:
            break
        words.append("abcdefghijklmnopqrstuvwxyz"[i % 26])
        if count(words) > tokens:
            words.pop()
    return " ".join(words) or "a", max(1, count(words))


def synthetic_id(index: int, config: ProfileConfig, prefix: str = "profile") -> str:
    w, h = config.image_size
    return f"{prefix}/{w}x{h}/s{config.seed}/t{config.doc_text_words}/{index}"


def synthetic_document(index: int, config: ProfileConfig, prefix: str = "profile") -> Document:
    """A deterministic page-like image of ``config.image_size`` (grey text-line blocks on white), JPEG-encoded
    as a file would be (so decoding is part of indexing, and a thousand of them fit in memory), plus
    ``doc_text_words`` words of text when asked."""
    import io

    from PIL import Image

    w, h = config.image_size
    rng = np.random.default_rng((config.seed, index))
    page = np.full((h, w, 3), 255, dtype=np.uint8)
    line = max(2, h // 40)
    for top in range(line, h - line, 2 * line):
        left, right = sorted(rng.integers(0, w, 2))
        page[top: top + line, left: max(left + 1, right)] = rng.integers(0, 160, 3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="JPEG", quality=90)
    text = " ".join(_WORDS[(index + i) % len(_WORDS)] for i in range(config.doc_text_words)) or None
    return Document(image=buffer.getvalue(), text=text, id=synthetic_id(index, config, prefix))


class Pool:
    """The candidate documents: synthetic (generated on demand) or given (repeated to fill N)."""

    def __init__(self, config: ProfileConfig, given: Sequence[Document] | None) -> None:
        self.config, self.given = config, list(given) if given else None

    def warm_id(self, i: int) -> str:
        if self.given is None:
            return synthetic_id(i, self.config)
        doc = self.given[i % len(self.given)]
        return doc.id if doc.id is not None else f"profile-doc/{doc.label}"

    def warm(self, i: int) -> Document:
        if self.given is None:
            return synthetic_document(i, self.config)
        doc = self.given[i % len(self.given)]
        return Document(doc.image, doc.text, id=self.warm_id(i))

    def cold(self, i: int) -> Document | None:
        """A document under a cold-only id (so deleting it never touches the warm pool or the user's ids)."""
        if self.given is None:
            return synthetic_document(i, self.config, "profile-cold")
        doc = self.given[i % len(self.given)]
        if doc.image is None and not doc.text:
            return None  # an id without content cannot be indexed again
        return Document(doc.image, doc.text, id=f"profile-cold/{doc.label}")

    def size(self, n: int) -> int:
        return n if self.given is None else min(n, len(self.given))
