"""Batch command lines (issue 18): ``rerank --jsonl FILE|-`` (one query a line in, one JSON line out) and
document and id lists from ``-`` (stdin) or ``@FILE``. Commands run in-process (main()), on the session's
tiny bundle, in a directory of their own."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from minireranker.runtime.batch import read_query_line
from minireranker.runtime.errors import MiniRerankerError
from minireranker.tools.cli import main

QUERY = "a cat on a red sofa"
SAME_RUNTIME_ATOL = 1e-6  # the same engines on the same K/V in one process


@pytest.fixture
def here(tmp_path, images, monkeypatch) -> Path:
    """tmp_path (the current directory) with photos/a.png and photos/b.png."""
    (tmp_path / "photos").mkdir()
    images["astronaut_70x45"].save(tmp_path / "photos" / "a.png")
    images["chelsea_128x100"].save(tmp_path / "photos" / "b.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"))


def run(argv: list, capsys) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return status, captured.out, captured.err


def one_error(argv: list, capsys, *parts: str) -> str:
    status, out, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(p in lines[0] for p in parts), (lines[0], parts)
    return lines[0]


def rerank_json(bundle: Path, *docs: str, capsys, ids: tuple = ()) -> dict:
    argv = ["rerank", bundle, "--cache", "kv", "--query", QUERY, "--json", *docs] + (["--ids", *ids] if ids else [])
    status, out, err = run(argv, capsys)
    assert status == 0, err
    return json.loads(out)


# -- - and @FILE ----------------------------------------------------------------------------------
def test_index_reads_documents_from_stdin_and_a_file_mixed_with_arguments(here, tiny_bundle, capsys, monkeypatch):
    stdin(monkeypatch, "photos/a.png\n\n  text:a red bus  \n")
    (here / "list.txt").write_text("photos/b.png\r\n\n")
    status, out, _ = run(["index", tiny_bundle, "--cache", "kv", "--quiet", "text:first", "-", "@list.txt"], capsys)
    assert status == 0 and out.startswith("indexed 4, skipped 0 (already cached), failed 0"), out
    # the ids those lists gave, looked up by list too: in the order given, every one cached
    (here / "ids.txt").write_text("photos/a.png\ntext:a red bus\n")
    stdin(monkeypatch, "./photos/b.png\ntext:first\n")
    result = rerank_json(tiny_bundle, capsys=capsys, ids=("@ids.txt", "-"))
    assert result["failed"] == []
    assert [r["document"] for r in sorted(result["results"], key=lambda r: r["index"])] == [
        os.path.realpath("photos/a.png"), "text:a red bus", os.path.realpath("photos/b.png"), "text:first"]


def test_rerank_documents_from_a_list_score_as_the_same_arguments(here, tiny_bundle, capsys):
    (here / "list.txt").write_text("photos/b.png\ntext:a red bus\n")
    listed = rerank_json(tiny_bundle, "photos/a.png", "@list.txt", capsys=capsys)
    typed = rerank_json(tiny_bundle, "photos/a.png", "photos/b.png", "text:a red bus", capsys=capsys)
    assert [(r["index"], r["document"]) for r in listed["results"]] == \
        [(r["index"], r["document"]) for r in typed["results"]]
    for a, b in zip(listed["results"], typed["results"]):
        assert a["score"] == pytest.approx(b["score"], abs=SAME_RUNTIME_ATOL)


def test_stdin_is_read_once(here, tiny_bundle, capsys):
    one_error(["rerank", tiny_bundle, "-", "--cache", "kv", "--query", QUERY, "--ids", "-"], capsys,
              "'-' (stdin) is given 2 times", "DOC", "--ids", "@FILE")
    one_error(["index", tiny_bundle, "-", "-", "--cache", "kv"], capsys, "stdin")


def test_rerank_reads_stdin_after_the_options(here, tiny_bundle, capsys, monkeypatch):
    stdin(monkeypatch, "text:a red bus\n")
    status, out, _ = run(["rerank", tiny_bundle, "--cache", "kv", "--query", QUERY, "--json", "-"], capsys)
    assert status == 0 and json.loads(out)["results"][0]["document"] == "text:a red bus"


def test_a_missing_or_unreadable_list_is_one_line(here, tiny_bundle, capsys):
    one_error(["index", tiny_bundle, "--cache", "kv", "@missing.txt"], capsys, "@missing.txt: no such file",
              "./@missing.txt")
    one_error(["rerank", tiny_bundle, "--cache", "kv", "--query", QUERY, "--ids", "@photos"], capsys,
              "@photos: is a directory")
    (here / "latin1.txt").write_bytes(b"caf\xe9.png\n")
    one_error(["index", tiny_bundle, "--cache", "kv", "@latin1.txt"], capsys, "@latin1.txt", "UTF-8")


# -- --jsonl --------------------------------------------------------------------------------------
def jsonl(*objects) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects)


def test_rerank_jsonl_file_one_line_out_per_query_bad_lines_reported_and_skipped(here, tiny_bundle, capsys):
    data = here / "queries"
    data.mkdir()
    os.symlink(here / "photos", data / "photos")  # image paths are relative to the file's directory
    (data / "q.jsonl").write_text(jsonl(
        {"qid": "q1", "query": QUERY, "candidates": [{"image": "photos/a.png", "relevance": 2},
                                                      {"text": "a red bus"}, {"image": "photos/b.png", "id": "b"}]},
        "# a comment, then a blank line", "",
        "{not json",
        {"query": "a bus", "candidates": [{"image": "photos/nope.png"}]},
        {"query": "a bus", "candidate": []},
        {"query": "a red bus", "candidates": [{"image": str(here / "photos" / "b.png"), "text": "a caption"},
                                              {"id": "never-indexed"}]},
    ))
    status, out, err = run(["rerank", tiny_bundle, "--cache", "kv", "--jsonl", data / "q.jsonl", "--top-k", "2"],
                           capsys)
    assert status == 1  # bad lines and a failed document
    first, last = [json.loads(line) for line in out.splitlines()]
    assert (first["line"], first["qid"], first["query"]) == (1, "q1", QUERY)
    assert [r["rank"] for r in first["results"]] == [1, 2] and first["failed"] == []  # --top-k per line
    ids = {os.path.realpath("photos/a.png"): 0, "text:a red bus": 1, "b": 2}
    for r in first["results"]:
        assert set(r) == {"rank", "id", "index", "document", "score", "probability"}
        assert ids[r["id"]] == r["index"] and r["document"] == r["id"]
    assert last["line"] == 7 and "qid" not in last
    assert [r["id"] for r in last["results"]] == [os.path.realpath("photos/b.png") + "::text:a caption"]
    assert [f["index"] for f in last["failed"]] == [1] and "not in the cache" in last["failed"][0]["error"]
    errors = [json.loads(line) for line in err.splitlines()]
    assert [e["line"] for e in errors] == [4, 5, 6]
    assert errors[0]["error"].startswith("line: not valid JSON")
    assert errors[1]["error"].startswith("candidates[0].image: no such file")
    assert errors[2]["error"].startswith("candidate: unknown field")
    # the scores are those of the same documents on the command line
    single = rerank_json(tiny_bundle, "photos/a.png", "text:a red bus", capsys=capsys)
    want = {r["document"]: r["score"] for r in single["results"]}
    for r in first["results"]:
        if r["id"] in want:
            assert r["score"] == pytest.approx(want[r["id"]], abs=SAME_RUNTIME_ATOL)


def test_rerank_jsonl_from_stdin_reads_images_relative_to_here(here, tiny_bundle, capsys, monkeypatch):
    stdin(monkeypatch, "\ufeff" + jsonl({"query": QUERY, "candidates": [{"image": "photos/a.png"}]},  # a BOM first
                                        {"query": "x" * 20000, "candidates": [{"text": "a"}]}))
    status, out, err = run(["rerank", tiny_bundle, "--cache", "kv", "--jsonl", "-"], capsys)
    assert status == 1
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["results"][0]["id"] == os.path.realpath("photos/a.png")
    (error,) = [json.loads(line) for line in err.splitlines()]
    assert error["line"] == 2 and "the query is 20,000 characters long" in error["error"]


def test_rerank_jsonl_usage_errors(here, tiny_bundle, capsys):
    one_error(["rerank", tiny_bundle, "--cache", "kv", "--jsonl", "missing.jsonl"], capsys,
              "--jsonl missing.jsonl: cannot open it")
    (here / "q.jsonl").write_text(jsonl({"query": QUERY, "candidates": [{"text": "a"}]}))
    one_error(["rerank", tiny_bundle, "--cache", "kv", "--jsonl", "q.jsonl", "text:extra"], capsys,
              "--jsonl", "give no DOC or --ids")
    one_error(["rerank", tiny_bundle, "--cache", "kv", "--jsonl", "-", "--ids", "-"], capsys, "stdin")
    with pytest.raises(SystemExit) as exit_info:  # argparse: --query and --jsonl exclude each other
        main(["rerank", str(tiny_bundle), "--cache", "kv", "--jsonl", "q.jsonl", "--query", QUERY])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rerank", str(tiny_bundle), "--cache", "kv", "text:a"])
    assert "one of the arguments --query --jsonl is required" in capsys.readouterr().err


@pytest.mark.parametrize("line, field", [
    ('[1, 2]', "line: expected a JSON object"),
    ('{"query": "", "candidates": [{"text": "a"}]}', "query: must be a non-empty string"),
    ('{"query": "q", "candidates": []}', "candidates: must be a non-empty list"),
    ('{"query": "q", "candidates": [{}]}', "candidates[0]: has no image, no non-empty text and no id"),
    ('{"query": "q", "candidates": [{"text": 3}]}', "candidates[0].text: must be a string"),
    ('{"query": "q", "candidates": [{"id": true}]}', "candidates[0].id: must be a non-empty string or an integer"),
    ('{"query": "q", "qid": [], "candidates": [{"text": "a"}]}', "qid: must be"),
    ('{"query": "q", "candidates": [{"text": "a", "relevence": 1}]}', "candidates[0].relevence: unknown field"),
])
def test_a_bad_line_names_its_field(line, field, tmp_path):
    with pytest.raises(MiniRerankerError) as info:
        read_query_line(line, 3, tmp_path)
    assert str(info.value).startswith(field), str(info.value)


def test_help_says_what_a_bad_line_does(capsys):
    with pytest.raises(SystemExit):
        main(["rerank", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "reported on stderr" in text and "skipped" in text and "exit status is then 1" in text
    assert "@FILE" in text and "resolved absolute path" in text
