"""The project's exception types.

Every error a user can cause (a bad checkpoint, a bad spec, an unreadable image, a bad command-line
argument) is raised as a subclass of :class:`MiniRerankerError` with a message that names the input and
says what to do. The command line prints these messages without a traceback.
"""

from __future__ import annotations


class MiniRerankerError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class CheckpointError(MiniRerankerError):
    """A checkpoint directory is missing a file, is inconsistent, or holds unsupported weights."""


class SpecError(MiniRerankerError):
    """A reranking spec (`minireranker.json`, or flags that build one) is invalid."""


class DocumentError(MiniRerankerError):
    """A document (image, text, or both) cannot be read or is malformed."""


class TokenizerError(MiniRerankerError):
    """The tokenizer cannot encode the template as required (e.g. `yes` is not one token)."""


class CacheError(MiniRerankerError):
    """The K/V cache directory cannot be used (not writable, not a store) or an entry is malformed."""
