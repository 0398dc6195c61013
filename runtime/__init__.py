"""The torch-free runtime: ``from minireranker.runtime import Reranker, Document``.

The two names load on first use (PEP 562), so importing a submodule (``minireranker.runtime.kvstore``,
...) does not pull in ONNX Runtime.
"""

from __future__ import annotations

__all__ = ["Document", "Reranker"]


def __getattr__(name: str):
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    if name == "Document":
        from .documents import Document

        return Document
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
