"""How long a document may be: decided before any engine runs, from the bundle and the caller's limit.

A document segment (the template's ``<Document>:`` and ``\\n``, image tokens, text tokens) longer than the
limit is a :class:`~minireranker.runtime.errors.DocumentTooLongError` for that document. The limit is the
smaller of the caller's ``max_document_tokens`` and the model's own: its ``max_position_embeddings``
(bundle.json ``model``; :data:`FALLBACK_MAX_POSITIONS` where a bundle does not record it) less the system
and instruction segments and a query of the longest length allowed. A text longer than
:data:`MAX_CHARS_PER_TOKEN` characters per token of the limit is refused from its length alone, so the
tokenizer never sees megabytes; the ``tokens`` reported is then a lower bound (its first characters' count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import DocumentError, DocumentTooLongError

# The smallest max_position_embeddings of the registered architectures (Qwen2-VL's 32768): the model's
# window where bundle.json does not record one (Qwen2.5-VL has 128000, Qwen3-VL 262144).
FALLBACK_MAX_POSITIONS = 32768
# No token of the Qwen tokenizers is this long in ordinary text (English averages about 4 characters):
# a text over this many characters per token of the limit is refused without tokenizing it whole.
MAX_CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class DocumentLimit:
    """``model``: the most tokens the model's positions leave a document; ``tokens``: the limit applied."""

    model: int
    tokens: int

    @classmethod
    def of(cls, positions: int | None, reserved: int, given: int | None) -> "DocumentLimit":
        """The limit for a model of ``positions`` (None: unknown) where ``reserved`` tokens are the template's
        and the longest query's, and the caller's ``given`` limit (None: the model's)."""
        if given is not None and (not isinstance(given, int) or isinstance(given, bool) or given < 1):
            raise DocumentError(f"max_document_tokens must be a positive integer or None, got {given!r}: pass "
                                "--max-document-tokens 1 or more, or leave it out for the model's own limit")
        own = (positions or FALLBACK_MAX_POSITIONS) - reserved
        if own < 1:
            raise DocumentError(f"the model's {positions} positions leave no room for a document after the "
                                f"template's and a query's {reserved} tokens; rebuild the bundle from a checkpoint "
                                "with more positions")
        return cls(own, own if given is None else min(given, own))

    def check_text(self, label: str, text: str | None, count: Callable[[str], int]) -> None:
        """Refuse ``text`` from its length alone when no ``tokens``-token text can be that long; ``count``
        (the plain-text token count) then sees its first characters only."""
        cap = self.tokens * MAX_CHARS_PER_TOKEN
        if text and len(text) > cap:
            seen = count(text[:cap])
            self._refuse(label, max(seen, self.tokens + 1), f"its text is {len(text):,} characters, more than "
                         f"the {cap:,} ({MAX_CHARS_PER_TOKEN} a token) that")

    def check_tokens(self, label: str, tokens: int) -> None:
        if tokens > self.tokens:
            self._refuse(label, tokens, f"it is {tokens:,} tokens, more than the")

    def _refuse(self, label: str, tokens: int, what: str) -> None:
        if self.tokens < self.model:
            detail = (f"max_document_tokens={self.tokens:,} allow; shorten or split it, or raise "
                      f"--max-document-tokens (at most {self.model:,} for this model)")
        else:
            detail = (f"{self.tokens:,} tokens the model's positions leave for a document; shorten it or split it "
                      "into several documents")
        raise DocumentTooLongError(f"document {label}: {what} {detail}", tokens, self.tokens)
