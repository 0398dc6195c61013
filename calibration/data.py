"""The labelled set: one query per JSONL line, its candidates and their relevance grades.

Format (``docs/eval.md`` has the full description)::

    {"qid": "q001", "query": "a handwritten seven",
     "candidates": [{"id": "d17", "image": "images/d17.png", "text": null, "relevance": 2}, ...]}

* ``qid`` (optional, string or integer): default the line number; unique in the file.
* ``query``: a non-empty string.
* ``candidates``: a non-empty list of objects with
  ``id`` (optional string or integer; default the image path and text, so equal content is one document),
  ``image`` (path relative to the JSONL file's directory, or absolute; or null),
  ``text`` (string or null) — at least one of ``image``/``text`` —, and
  ``relevance``: a non-negative integer grade, 0 = not relevant.
* Either every candidate of the file has ``relevance`` or none has (a label-free set, which only
  ``minireranker calibrate`` accepts: it then measures agreement with the dense scores).
* A ``meta`` key (any JSON value) is allowed on queries and candidates and ignored; any other key is
  an error, so a misspelt ``relevence`` cannot silently make the set label-free.
* An ``id`` names one document across the whole file: the same id with different content is an error.

Blank lines and lines starting with ``#`` are skipped. Every error names the file, the line, the field
and what to do (:class:`EvalDataError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.documents import Document
from .errors import EvalDataError

QUERY_KEYS = {"qid", "query", "candidates", "meta"}
CANDIDATE_KEYS = {"id", "image", "text", "relevance", "meta"}


@dataclass(frozen=True)
class LabelledQuery:
    """One query: its candidates as :class:`Document` objects (``id`` always set) and their grades."""

    qid: str
    query: str
    candidates: list[Document]
    grades: np.ndarray | None    # int64 [N]; None in a label-free set
    line: int


@dataclass(frozen=True)
class LabelledSet:
    path: Path
    queries: list[LabelledQuery]

    @property
    def labelled(self) -> bool:
        return self.queries[0].grades is not None

    @property
    def documents(self) -> dict[str, Document]:
        """Every distinct document of the set by id, in first-seen order."""
        return {d.id: d for q in self.queries for d in q.candidates}

    @property
    def num_pairs(self) -> int:
        return sum(len(q.candidates) for q in self.queries)


def _int_like(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _LineReader:
    """Validation of one line, with the location in every message."""

    def __init__(self, path: Path, line: int) -> None:
        self.path, self.line = path, line

    def fail(self, where: str, problem: str, fix: str) -> EvalDataError:
        return EvalDataError(f"{self.path}:{self.line}: {where}: {problem}; {fix}")

    def query(self, obj: Any) -> tuple[str | None, str, list]:
        if not isinstance(obj, dict):
            raise self.fail("line", f"expected a JSON object, got {type(obj).__name__}",
                            'write one object per line: {"query": ..., "candidates": [...]}')
        unknown = sorted(set(obj) - QUERY_KEYS)
        if unknown:
            raise self.fail(f"field {unknown[0]!r}", "unknown field", f"use only {sorted(QUERY_KEYS)}")
        qid = obj.get("qid")
        if qid is not None and not (isinstance(qid, str) and qid) and not _int_like(qid):
            raise self.fail("field 'qid'", f"must be a non-empty string or an integer, got {qid!r}",
                            "fix it or leave it out (default: the line number)")
        query = obj.get("query")
        if not isinstance(query, str) or not query.strip():
            raise self.fail("field 'query'", f"must be a non-empty string, got {query!r}", "write the query text")
        cands = obj.get("candidates")
        if not isinstance(cands, list) or not cands:
            raise self.fail("field 'candidates'", f"must be a non-empty list, got {cands!r}",
                            "list the query's candidate documents")
        return None if qid is None else str(qid), query, cands

    def candidate(self, j: int, obj: Any, base: Path) -> tuple[Document, int | None]:
        where = f"candidates[{j}]"
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected a JSON object, got {type(obj).__name__}",
                            'write {"id": ..., "image": ..., "text": ..., "relevance": ...}')
        unknown = sorted(set(obj) - CANDIDATE_KEYS)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", "unknown field", f"use only {sorted(CANDIDATE_KEYS)}")
        cid, image, text, grade = obj.get("id"), obj.get("image"), obj.get("text"), obj.get("relevance")
        if cid is not None and not (isinstance(cid, str) and cid) and not _int_like(cid):
            raise self.fail(f"{where}.id", f"must be a non-empty string or an integer, got {cid!r}",
                            "fix it or leave it out")
        if text is not None and not isinstance(text, str):
            raise self.fail(f"{where}.text", f"must be a string or null, got {text!r}", "fix it")
        if image is not None and (not isinstance(image, str) or not image):
            raise self.fail(f"{where}.image", f"must be a path string or null, got {image!r}", "fix it")
        if image is None and not text:
            raise self.fail(where, "has neither an image nor a non-empty text", "give one of them (or both)")
        image_path = None
        if image is not None:
            image_path = Path(image) if Path(image).is_absolute() else base / image
            if not image_path.is_file():
                raise self.fail(f"{where}.image", f"no such file {str(image_path)!r}",
                                "image paths are relative to the JSONL file's directory (or absolute)")
        if "relevance" in obj and (not _int_like(grade) or grade < 0):
            raise self.fail(f"{where}.relevance", f"must be a non-negative integer grade, got {grade!r}",
                            "use 0 for not relevant, 1, 2, ... for more relevant")
        key = str(cid) if cid is not None else f"{image_path or ''}|{text or ''}"
        return Document(image=image_path, text=text, id=key), (grade if "relevance" in obj else None)


def load_labelled_set(path: str | Path, require_labels: bool = True) -> LabelledSet:
    """Read and validate a labelled JSONL file (see the module docstring)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalDataError(f"{path}: no such file; give the labelled set's JSONL path (see docs/eval.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: cannot read it as UTF-8 text ({exc}); give a JSONL file") from None
    queries: list[LabelledQuery] = []
    seen_docs: dict[str, tuple[Any, Any, int]] = {}
    seen_qids: dict[str, int] = {}
    labelled: bool | None = None
    for number, raw in enumerate(lines, 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        reader = _LineReader(path, number)
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise reader.fail("line", f"not valid JSON ({exc})", "write one JSON object per line") from None
        qid, query, cands = reader.query(obj)
        qid = qid if qid is not None else str(number)
        if qid in seen_qids:
            raise reader.fail("field 'qid'", f"{qid!r} repeats line {seen_qids[qid]}", "make qids unique")
        seen_qids[qid] = number
        docs, grades = [], []
        for j, c in enumerate(cands):
            doc, grade = reader.candidate(j, c, path.parent)
            has = grade is not None
            if labelled is None:
                labelled = has
            elif has != labelled:
                raise reader.fail(f"candidates[{j}].relevance", "present on some candidates of the file and "
                                  "absent on others", "grade every candidate, or none (a label-free set)")
            first = seen_docs.setdefault(doc.id, (doc.image, doc.text, number))
            if (first[0], first[1]) != (doc.image, doc.text):
                raise reader.fail(f"candidates[{j}].id", f"id {doc.id!r} names other content on line {first[2]}",
                                  "give distinct documents distinct ids")
            docs.append(doc)
            grades.append(grade)
        queries.append(LabelledQuery(qid, query, docs, np.asarray(grades, dtype=np.int64) if labelled else None,
                                     number))
    if not queries:
        raise EvalDataError(f"{path}: holds no query; write one JSON object per line (see docs/eval.md)")
    if require_labels and not labelled:
        raise EvalDataError(f"{path}: no candidate has a 'relevance' grade; this command needs graded candidates "
                            "(only calibrate accepts a label-free set)")
    return LabelledSet(path, queries)
