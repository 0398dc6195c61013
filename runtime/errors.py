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


class TokenizerError(MiniRerankerError):
    """The tokenizer cannot encode the template as required (e.g. `yes` is not one token)."""


class CacheError(MiniRerankerError):
    """The K/V cache directory cannot be used (not writable, not a store) or an entry is malformed."""
