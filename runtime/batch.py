"""``minireranker rerank --jsonl``: one query a line in, one result a line out, over one Reranker.

Input: eval's JSONL format (calibration/data.py, docs/eval.md) with the grades optional and ignored::

    {"qid": "q1", "query": "a red bus", "candidates": [{"image": "photos/a.png"}, {"text": "a timetable"},
                                                       {"id": "d17"}]}

* ``qid`` (optional, string or integer), ``query`` (a non-empty string), ``candidates`` (a non-empty list),
  ``meta`` (any value, ignored);
* a candidate: ``image`` (a path relative to the JSONL file's directory, or absolute; relative to the current
  directory for stdin), ``text``, ``id`` (string or integer), ``relevance`` and ``meta`` (ignored); an image,
  a text or an id. Its id is ``id`` as written when given (opaque, as in eval), else the one the command line
  gives the same document (runtime/documents.py: an image's resolved absolute path), so that ``index`` and
  ``--jsonl`` name one cache entry. A candidate with only an id is a document already indexed.
* Blank lines and lines starting with ``#`` are skipped; any other key is an error (a misspelt field).

Output, per query line (:func:`rerank_lines`)::

    {"line": 1, "qid": "q1", "query": "a red bus",
     "results": [{"rank": 1, "id": "/abs/photos/a.png", "index": 0, "document": "/abs/photos/a.png",
                  "score": 1.25, "probability": 0.78}, ...],
     "failed": [{"index": 2, "document": "d17", "error": "..."}]}

``qid`` only when the line has one; ``results`` and ``failed`` as ``RerankOutput.to_dict`` writes them, with
each result's ``rank`` (1 = best) and ``id`` added. A line that cannot be read or run gives
``{"line": n, "error": "FIELD: what is wrong; what to do"}`` instead.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .documents import Document, command_line_id
from .errors import MiniRerankerError

if TYPE_CHECKING:
    from .reranker import Reranker, RerankOutput

QUERY_KEYS = {"qid", "query", "candidates", "meta"}
CANDIDATE_KEYS = {"id", "image", "text", "relevance", "meta"}


class LineError(MiniRerankerError):
    """A JSONL line that cannot be read; ``field`` names what is wrong (``line``, ``query``,
    ``candidates[1].image``)."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field


@dataclass(frozen=True)
class QueryLine:
    """One query line: its number (from 1), qid (None: not given), query and candidates (ids always set)."""

    line: int
    qid: str | None
    query: str
    candidates: list[Document]


def _int_like(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_query_line(raw: str | bytes, number: int, base: Path) -> QueryLine | None:
    """The query of JSONL line ``number`` (None: blank or a comment); raises LineError."""
    try:
        text = raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw  # -sig: a BOM some editors write
    except UnicodeDecodeError as exc:
        raise LineError("line", f"not UTF-8 text ({exc})", "write the JSONL file as UTF-8") from None
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise LineError("line", f"not valid JSON ({exc})", "write one JSON object a line") from None
    if not isinstance(obj, dict):
        raise LineError("line", f"expected a JSON object, got {type(obj).__name__}",
                        'write {"query": ..., "candidates": [...]}')
    _no_unknown_keys(obj, QUERY_KEYS, "")
    qid, query, candidates = obj.get("qid"), obj.get("query"), obj.get("candidates")
    if qid is not None and not (isinstance(qid, str) and qid) and not _int_like(qid):
        raise LineError("qid", f"must be a non-empty string or an integer, got {qid!r}", "fix it or leave it out")
    if not isinstance(query, str) or not query.strip():
        raise LineError("query", f"must be a non-empty string, got {query!r}", "write the query text")
    if not isinstance(candidates, list) or not candidates:
        raise LineError("candidates", f"must be a non-empty list, got {candidates!r}",
                        "list the query's candidate documents")
    docs = [_candidate(f"candidates[{j}]", c, base) for j, c in enumerate(candidates)]
    return QueryLine(number, None if qid is None else str(qid), query, docs)


def _no_unknown_keys(obj: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise LineError(f"{where}{unknown[0]}", "unknown field", f"use only {sorted(known)}")


def _candidate(where: str, obj: Any, base: Path) -> Document:
    if not isinstance(obj, dict):
        raise LineError(where, f"expected a JSON object, got {type(obj).__name__}",
                        'write {"image": ..., "text": ..., "id": ...}')
    _no_unknown_keys(obj, CANDIDATE_KEYS, f"{where}.")
    cid, image, text = obj.get("id"), obj.get("image"), obj.get("text")
    if cid is not None and not (isinstance(cid, str) and cid) and not _int_like(cid):
        raise LineError(f"{where}.id", f"must be a non-empty string or an integer, got {cid!r}",
                        "fix it or leave it out")
    if text is not None and not isinstance(text, str):
        raise LineError(f"{where}.text", f"must be a string or null, got {text!r}", "fix it")
    if image is not None and (not isinstance(image, str) or not image):
        raise LineError(f"{where}.image", f"must be a path string or null, got {image!r}", "fix it")
    if image is None and not text and cid is None:
        raise LineError(where, "has no image, no non-empty text and no id",
                        "give an image and/or a text, or the id of a document already indexed")
    path = None
    if image is not None:
        path = Path(image) if Path(image).is_absolute() else base / image
        if not path.is_file():
            raise LineError(f"{where}.image", f"no such file {str(path)!r}",
                            "image paths are relative to the JSONL file's directory (stdin: the current one), "
                            "or absolute")
    if cid is not None:
        return Document(image=path, text=text or None, id=str(cid))
    doc = Document(image=path, text=text or None)
    return dataclasses.replace(doc, id=command_line_id(doc))


def result_line(query: QueryLine, out: "RerankOutput") -> dict:
    """The output object of one query line (see the module docstring) from its ``RerankOutput``."""
    data = out.to_dict()
    results = [{"rank": rank, "id": r.id, **row} for rank, (r, row) in enumerate(zip(out.results, data["results"]), 1)]
    head = {"line": query.line, **({"qid": query.qid} if query.qid is not None else {}), "query": out.query}
    return {**head, "results": results, "failed": data["failed"]}


def rerank_lines(reranker: "Reranker", lines: Iterable[str | bytes], base: Path,
                 top_k: int | None = None) -> Iterator[dict]:
    """Rerank each query line of ``lines`` (JSONL, see the module docstring) with ``reranker``, yielding one
    output object per query line as soon as it is scored: its results, or ``{"line", "error"}``. Image paths
    are relative to ``base``; ``top_k`` applies to each line."""
    for number, raw in enumerate(lines, 1):
        try:
            query = read_query_line(raw, number, base)
            if query is not None:
                yield result_line(query, reranker.rerank(query.query, query.candidates, top_k))
        except MiniRerankerError as exc:  # a malformed line, or a query over the token limit: this line only
            yield {"line": number, "error": str(exc)}
