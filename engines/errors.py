"""The project's root exception and the engines' own error.

They live here, at the bottom of the import order (tools -> calibration -> export -> runtime -> engines),
so that ``engines`` raises the project's exception types without importing the runtime;
:mod:`minireranker.runtime.errors` re-exports both, and every ``except MiniRerankerError`` catches them.
"""

from __future__ import annotations


class MiniRerankerError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class EngineError(MiniRerankerError):
    """An engine cannot be loaded, or was fed inputs that do not fit it."""
