"""The labelled JSONL format: every malformed input is one clear error naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_cli

from minireranker.calibration.data import load_labelled_set
from minireranker.calibration.errors import EvalDataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = {"qid": "q1", "query": "a cat", "candidates": [
    {"id": "d1", "image": "img.png", "text": None, "relevance": 1},
    {"id": "d2", "image": None, "text": "a dog", "relevance": 0}]}


def _write(tmp_path: Path, *objects, raw: str | None = None) -> Path:
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "img.png")
    path = tmp_path / "set.jsonl"
    lines = ["# comment", ""] + [json.dumps(o) for o in objects] + ([raw] if raw is not None else [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cand(**change) -> dict:
    c = dict(GOOD["candidates"][0])
    c.update(change)
    return {**GOOD, "candidates": [c, GOOD["candidates"][1]]}


def test_good_set_loads(tmp_path):
    data = load_labelled_set(_write(tmp_path, GOOD, {**GOOD, "qid": None, "meta": {"split": "x"}}))
    assert data.labelled and len(data.queries) == 2
    q = data.queries[0]
    assert q.qid == "q1" and q.line == 3 and list(q.grades) == [1, 0]
    assert q.candidates[0].image == tmp_path / "img.png" and q.candidates[1].text == "a dog"
    assert data.queries[1].qid == "4"  # default: the line number
    assert list(data.documents) == ["d1", "d2"]


CASES = {
    "bad-json": ([], "{not json", ["set.jsonl:3", "not valid JSON"]),
    "not-object": ([], "[1, 2]", ["set.jsonl:3", "expected a JSON object"]),
    "no-query": ([{**GOOD, "query": ""}], None, ["set.jsonl:3", "field 'query'"]),
    "no-candidates": ([{**GOOD, "candidates": []}], None, ["set.jsonl:3", "field 'candidates'"]),
    "unknown-query-field": ([{**GOOD, "querry": "x"}], None, ["set.jsonl:3", "field 'querry'", "unknown"]),
    "negative-grade": ([_cand(relevance=-1)], None, ["set.jsonl:3", "candidates[0].relevance", "non-negative"]),
    "string-grade": ([_cand(relevance="2")], None, ["candidates[0].relevance"]),
    "bool-grade": ([_cand(relevance=True)], None, ["candidates[0].relevance"]),
    "missing-image": ([_cand(image="nope.png")], None, ["set.jsonl:3", "candidates[0].image", "nope.png",
                                                         "relative to the JSONL"]),
    "empty-candidate": ([_cand(image=None, text=None)], None, ["candidates[0]", "neither an image nor"]),
    "text-not-string": ([_cand(text=3)], None, ["candidates[0].text"]),
    "misspelt-grade": ([{**GOOD, "candidates": [{"id": "d1", "image": "img.png", "relevence": 1}]}], None,
                       ["candidates[0].relevence", "unknown field"]),
    "mixed-labels": ([{**GOOD, "candidates": [GOOD["candidates"][0], {"id": "d2", "text": "a dog"}]}], None,
                     ["set.jsonl:3", "candidates[1].relevance", "present on some"]),
    "duplicate-qid": ([GOOD, GOOD], None, ["set.jsonl:4", "'qid'", "repeats line 3"]),
    "id-two-contents": ([GOOD, {**GOOD, "qid": "q2", "candidates": [{"id": "d1", "text": "other", "relevance": 0}]}],
                        None, ["set.jsonl:4", "candidates[0].id", "'d1'", "line 3"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_errors_name_file_line_and_field(tmp_path, case):
    objects, raw, parts = CASES[case]
    path = _write(tmp_path, *objects, raw=raw)
    with pytest.raises(EvalDataError) as info:
        load_labelled_set(path)
    message = str(info.value)
    assert str(path) in message
    for part in parts:
        assert part in message, (part, message)


def test_label_free_set_needs_calibrate(tmp_path):
    free = {**GOOD, "candidates": [{"id": "d1", "image": "img.png"}, {"id": "d2", "text": "a dog"}]}
    path = _write(tmp_path, free)
    assert load_labelled_set(path, require_labels=False).queries[0].grades is None
    with pytest.raises(EvalDataError, match="no candidate has a 'relevance' grade"):
        load_labelled_set(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(EvalDataError, match="no such file"):
        load_labelled_set(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match="holds no query"):
        load_labelled_set(tmp_path / "empty.jsonl")


def test_cli_prints_one_error_line(tmp_path, tiny_checkpoint):
    path = _write(tmp_path, _cand(relevance=-1))
    proc = run_cli("eval", tiny_checkpoint, "--data", path, "--out", tmp_path / "out")
    assert_one_error_line(proc, "set.jsonl:3", "candidates[0].relevance")
    proc = run_cli("calibrate", tiny_checkpoint, "--data", path, "--keep-ratios", "0,1")
    assert_one_error_line(proc, "--keep-ratios")
