"""The exceptions of ``minireranker eval`` and ``minireranker calibrate``.

Both derive from :class:`~minireranker.runtime.errors.MiniRerankerError`, so the command line prints
their message as one ``error: ...`` line (exit status 2) instead of a traceback.
"""

from __future__ import annotations

from ..runtime.errors import MiniRerankerError


class EvalDataError(MiniRerankerError):
    """A labelled set (JSONL) is unreadable or malformed: the message names the file, line and field."""


class CalibrationError(MiniRerankerError):
    """A sweep that cannot run as asked (bad grid, missing torch, a dense model that scores nothing)."""


def require_torch(command: str) -> None:
    """Fail with a clear message when torch (the ``export`` extra) is missing: eval and calibrate run the
    torch reference of the model, which the torch-free runtime install does not carry."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CalibrationError(
            f"minireranker {command} runs the torch reference of the model and needs torch: "
            "install the 'export' extra (pip install 'minireranker[export]')"
        ) from None
