"""Ids on the command line (issue 18): a path's id is its file's resolved absolute path, at index and at
``rerank --ids``, so that ``./``, absolute, ``..`` and linked spellings name one cache entry; a cache indexed
under the old ids (the string typed) gets a one-line note. Commands run in-process (main()), on the
session's tiny bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from minireranker.runtime.documents import (Document, command_line_id, ids_indexed_as_typed, resolve_id,
                                            typed_id_forms)
from minireranker.runtime.reranker import Reranker
from minireranker.tools.cli import main

QUERY = "a cat on a red sofa"
NOTE = "note: this cache was indexed with ids as typed"


@pytest.fixture
def photos(tmp_path, images, monkeypatch) -> Path:
    """tmp_path (the current directory) with photos/a.png, sub/ and link.png -> photos/a.png."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "sub").mkdir()
    images["astronaut_70x45"].save(tmp_path / "photos" / "a.png")
    os.symlink(tmp_path / "photos" / "a.png", tmp_path / "link.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spellings(root: Path) -> dict[str, str]:
    """Five ways to write photos/a.png from ``root``."""
    return {"relative": "photos/a.png", "dot": "./photos/a.png", "absolute": str(root / "photos" / "a.png"),
            "dotdot": "sub/../photos/a.png", "link": "link.png"}


def run(argv: list, capsys) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return status, captured.out, captured.err


# -- the rule -------------------------------------------------------------------------------------
def test_every_spelling_of_a_path_resolves_to_one_id(photos):
    want = os.path.realpath(photos / "photos" / "a.png")
    for name, form in spellings(photos).items():
        assert resolve_id(form) == want, name
        assert command_line_id(Document.parse(form)) == want, name
        assert resolve_id(f"{form}::text:a caption") == f"{want}::text:a caption", name
        assert command_line_id(Document.parse(f"{form}::text:a caption")) == f"{want}::text:a caption", name


def test_texts_and_other_ids_stay_as_written(photos):
    for typed in ("text:a red bus", "text:photos/a.png", "d17", "photos/missing.png", "photos",
                  "photos/missing.png::text:x"):
        assert resolve_id(typed) == typed
        assert typed_id_forms(typed) == []
    assert command_line_id(Document.parse("text:a::b")) == "text:a::b"


def test_typed_id_forms_are_what_an_old_cache_may_hold(photos):
    absolute, resolved = os.path.abspath("photos/a.png"), os.path.realpath("photos/a.png")
    unresolved = [absolute] if absolute != resolved else []  # where the temporary directory is behind a link
    assert typed_id_forms("./photos/a.png") == ["./photos/a.png", "photos/a.png", *unresolved]
    assert typed_id_forms("link.png") == ["link.png", os.path.abspath("link.png")]
    assert typed_id_forms(resolved) == []  # typed as it resolves: nothing changed for it
    old_cache = {"photos/a.png", "text:a red bus"}
    assert ids_indexed_as_typed(["./photos/a.png", "link.png", "text:a red bus"], old_cache.__contains__) == \
        ["./photos/a.png"]  # link.png was never indexed; a text's id did not change
    new_cache = old_cache | {resolved}
    assert ids_indexed_as_typed(["./photos/a.png"], new_cache.__contains__) == []  # re-indexed: a hit


# -- index under one spelling, rerank --ids with the others ------------------------------------------
def test_index_dedupes_spellings_into_one_entry(photos, tiny_bundle, capsys):
    status, out, _ = run(["index", tiny_bundle, "--cache", "kv", "--quiet", *spellings(photos).values()], capsys)
    assert status == 0
    assert out.startswith("indexed 1, skipped 4 (already cached), failed 0")
    with Reranker(tiny_bundle, "kv") as reranker:
        assert reranker.store.keys() == [f"id:{os.path.realpath('photos/a.png')}"]


@pytest.mark.parametrize("indexed_as", ["relative", "absolute", "link"])
def test_rerank_ids_finds_the_entry_under_every_other_spelling(photos, tiny_bundle, capsys, indexed_as):
    forms = spellings(photos)
    assert run(["index", tiny_bundle, "--cache", "kv", "--quiet", forms.pop(indexed_as)], capsys)[0] == 0
    status, out, err = run(["rerank", tiny_bundle, "--cache", "kv", "--query", QUERY, "--json",
                            "--ids", *forms.values()], capsys)
    assert status == 0 and err == "", err
    result = json.loads(out)
    assert result["failed"] == []
    want = os.path.realpath("photos/a.png")
    assert [r["document"] for r in result["results"]] == [want] * len(forms)
    assert len({r["score"] for r in result["results"]}) == 1  # one entry, read for each spelling


def test_rerank_ids_from_another_directory_with_dotdot(photos, tiny_bundle, capsys, monkeypatch):
    assert run(["index", tiny_bundle, "--cache", "kv", "--quiet", "photos/a.png::text:a caption"], capsys)[0] == 0
    monkeypatch.chdir(photos / "sub")
    status, out, _ = run(["rerank", tiny_bundle, "--cache", "../kv", "--query", QUERY, "--json",
                          "--ids", "../photos/a.png::text:a caption"], capsys)
    assert status == 0
    assert json.loads(out)["results"][0]["document"] == os.path.realpath("../photos/a.png") + "::text:a caption"


# -- a cache indexed under the old ids --------------------------------------------------------------
def test_an_old_cache_gets_a_one_line_note(photos, tiny_bundle, capsys):
    with Reranker(tiny_bundle, "kv") as reranker:  # as `index photos/a.png` wrote it before: the id as typed
        assert reranker.index([Document(image=Path("photos/a.png"), id="photos/a.png")]).indexed == 1
    status, out, err = run(["rerank", tiny_bundle, "--cache", "kv", "--query", QUERY, "--ids", "./photos/a.png",
                            "text:never indexed"], capsys)
    assert status == 1
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and NOTE in notes[0] and "re-index" in notes[0] and notes[0].endswith("./photos/a.png")
    assert "minireranker index" in notes[0]
    # once re-indexed under the new id, the lookup hits and says nothing
    assert run(["index", tiny_bundle, "--cache", "kv", "--quiet", "photos/a.png"], capsys)[0] == 0
    status, _, err = run(["rerank", tiny_bundle, "--cache", "kv", "--query", QUERY, "--ids", "./photos/a.png"],
                         capsys)
    assert status == 0 and err == ""


def test_a_plain_miss_gets_no_note(photos, tiny_bundle, capsys):
    status, _, err = run(["rerank", tiny_bundle, "--cache", "kv", "--query", QUERY, "--ids", "photos/a.png"], capsys)
    assert status == 1
    assert NOTE not in err and "not in the cache" in err
