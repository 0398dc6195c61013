"""The project's exception types.

Every error a user can cause (a bad checkpoint, a bad spec, an unreadable image, a bad command-line
argument) is raised as a subclass of :class:`MiniRerankerError` with a message that names the input and
says what to do. The command line prints these messages without a traceback. ``MiniRerankerError`` and
``EngineError`` (a graph cannot be loaded, or a feed does not fit it) are defined in
:mod:`minireranker.engines.errors` and re-exported here.
"""

from __future__ import annotations

# The root type lives in engines/ (the bottom of the import order) so that engines raise it too.
from ..engines.errors import EngineError, MiniRerankerError  # noqa: F401  (re-exported)


class CheckpointError(MiniRerankerError):
    """A checkpoint directory is missing a file, is inconsistent, or holds unsupported weights."""


class SpecError(MiniRerankerError):
    """A reranking spec (`minireranker.json`, or flags that build one) is invalid."""


class DocumentError(MiniRerankerError):
    """A document (image, text, or both) cannot be read or is malformed."""


class DocumentTooLongError(DocumentError):
    """A document's token count exceeds the model's positions or the configured ``max_document_tokens``.

    Raised before any engine runs; ``tokens`` is the document's count and ``limit`` the limit it broke.
    The server answers it with 413, per document.
    """

    def __init__(self, message: str, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


class TokenizerError(MiniRerankerError):
    """The tokenizer cannot encode the template as required (e.g. `yes` is not one token)."""


class CacheError(MiniRerankerError):
    """The K/V cache directory cannot be used (not writable, not a store) or an entry is malformed."""


class CacheFullError(CacheError):
    """An entry could not be written because the cache's file system is full (ENOSPC) or over quota (EDQUOT).

    The reranker then scores the document uncached (and says so once); ``index`` reports it per document.
    """


class NotCachedError(CacheError):
    """A read-only reranker (``Reranker(read_only=True)``, ``serve --read-only``) was given a document its
    cache does not hold; it never computes one. Index it through the writer, then ask again."""
