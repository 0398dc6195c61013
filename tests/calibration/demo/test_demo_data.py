"""The demo data: deterministic, disjoint splits, graded as documented, and the bundled files intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the demo data is generated from sklearn's digits (the dev extra)")

from PIL import Image  # noqa: E402

from minireranker.calibration.demo import data, data_files, images, pools  # noqa: E402

ASSETS = Path(data.__file__).parent / "assets"
LABELLED_KEYS = {"qid", "query", "candidates", "meta"}
CANDIDATE_KEYS = {"id", "image", "text", "relevance"}


def test_splits_are_disjoint_cover_everything_and_are_seeded():
    digits = images.split_digits(0)
    sets = [set(digits.of(s).tolist()) for s in data.SPLITS]
    assert sum(len(s) for s in sets) == len(digits.labels) == 1797
    assert set().union(*sets) == set(range(1797))
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
    again = images.split_digits.__wrapped__(0)
    assert all(np.array_equal(again.of(s), digits.of(s)) for s in data.SPLITS)
    other = images.split_digits.__wrapped__(1)
    assert not np.array_equal(other.of("heldout"), digits.of("heldout"))


def test_documents_of_a_split_use_only_its_images():
    digits = images.split_digits(0)
    for split in ("calib", "heldout"):
        own = set(digits.of(split).tolist())
        docs = pools.digit_documents(digits, split, composites=100, seed=3)
        assert all(set(d.sources) <= own for d in docs)
        assert all(tuple(int(digits.labels[s]) for s in d.sources) == d.digits for d in docs)


@pytest.mark.parametrize("query, digits, grade", [
    (data.QuerySpec("digit", (7,)), (7,), 2),
    (data.QuerySpec("digit", (7,)), (3, 7), 1),
    (data.QuerySpec("digit", (7,)), (3, 5), 0),
    (data.QuerySpec("ordered", (3, 5)), (3, 1, 5), 2),
    (data.QuerySpec("ordered", (3, 5)), (5, 3), 1),
    (data.QuerySpec("ordered", (3, 5)), (3, 2), 0),
    (data.QuerySpec("pair", (3, 5)), (5, 3), 2),
    (data.QuerySpec("pair", (3, 5)), (3,), 1),
    (data.QuerySpec("count", (9,), count=3), (1, 9, 4), 2),
    (data.QuerySpec("count", (9,), count=3), (9, 4), 1),
    (data.QuerySpec("count", (9,), count=3), (1, 2, 4), 0),
])
def test_relevance_follows_the_documented_rules(query, digits, grade):
    assert data.relevance(query, data.DocSpec("x", digits)) == grade
    assert data.relevance(query, data.DocSpec("t", digits, text="some text")) == grade  # texts graded alike


def test_photo_queries_match_the_photo_and_its_text_only():
    q = data.QuerySpec("photo", photo="chelsea")
    assert data.relevance(q, data.DocSpec("p", photo="chelsea")) == 2
    assert data.relevance(q, data.DocSpec("t", photo="chelsea", text="A cat.")) == 2
    assert data.relevance(q, data.DocSpec("p", photo="coffee")) == 0
    assert data.relevance(q, data.DocSpec("d", (7,))) == 0
    assert not data.DocSpec("t", photo="chelsea", text="A cat.").has_image


def test_query_phrasings_read_well():
    assert data.QuerySpec("digit", (7,)).text == "a handwritten seven"
    assert data.QuerySpec("ordered", (3, 5)).text == "a three to the left of a five"
    assert data.QuerySpec("ordered", (8, 3)).text == "an eight to the left of a three"
    assert data.QuerySpec("count", (9,), count=3).text == "three digits including a nine"


def test_candidates_are_seeded_unique_and_graded():
    digits = images.split_digits(0)
    pool = pools.build_pool(digits, "calib", 100, seed=5)
    q = data.QuerySpec("ordered", (3, 5))
    first = pools.select_candidates(q, pool, np.random.default_rng(1), (3, 4, 8, 7))
    again = pools.select_candidates(q, pool, np.random.default_rng(1), (3, 4, 8, 7))
    assert [(d.id, g) for d, g in first] == [(d.id, g) for d, g in again]
    assert len({d.id for d, _ in first}) == len(first)
    assert all(data.relevance(q, d) == g for d, g in first)
    assert sum(g == 2 for _, g in first) >= 1


def test_rendering_is_deterministic_and_augmentation_varies():
    digits = images.split_digits(0)
    doc = data.DocSpec("c", (3, 5), (int(digits.of("train")[0]), int(digits.of("train")[1])), (32, 0, 0))
    canonical = np.asarray(images.render(doc, digits))
    assert canonical.shape == (64, 160)
    assert np.array_equal(canonical, np.asarray(images.render(doc, digits)))
    augmented = np.asarray(images.render(doc, digits, np.random.default_rng(0)))
    assert augmented.shape == canonical.shape and not np.array_equal(augmented, canonical)
    assert images.render(data.DocSpec("t", text="hello"), digits) is None


def test_labelled_set_generation_is_deterministic(tmp_path):
    digits = images.split_digits(0)
    a = data_files.write_labelled_set(tmp_path / "a", "calib", digits, seed=2)
    b = data_files.write_labelled_set(tmp_path / "b", "calib", digits, seed=2)
    assert a.read_text() == b.read_text()


# ---------------------------------------------------------------------------------------------------
# the bundled files
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, low, high, kinds", [
    ("heldout", 200, 260, {"digit", "ordered", "pair", "count", "photo"}),  # 200+: a 2% difference shows
    ("calib", 25, 40, {"digit", "ordered", "pair", "count"})])
def test_bundled_labelled_sets_parse_and_reference_existing_images(name, low, high, kinds):
    path = ASSETS / "eval" / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert low <= len(rows) <= high
    assert {row["meta"]["kind"] for row in rows} == kinds
    assert len({row["query"] for row in rows}) == len(rows)  # distinct query texts
    assert len({r["qid"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == LABELLED_KEYS and row["query"]
        assert 20 <= len(row["candidates"]) <= 30
        assert any(c["relevance"] == 2 for c in row["candidates"])
        for c in row["candidates"]:
            assert set(c) == CANDIDATE_KEYS and c["relevance"] in (0, 1, 2)
            assert c["image"] is not None or c["text"]
            if c["image"] is not None:
                assert (path.parent / c["image"]).is_file(), c["image"]
            if c["id"].startswith(("train", "calib", "heldout")):
                assert c["id"].startswith(name)  # candidates come from their own split only


def test_bundled_heldout_set_is_what_the_generator_writes(tmp_path):
    digits = images.split_digits(0)
    fresh = data_files.write_labelled_set(tmp_path, "heldout", digits, seed=1)  # train_demo's seed + 1
    bundled = ASSETS / "eval" / "heldout.jsonl"
    assert fresh.read_text() == bundled.read_text()
    row = json.loads(bundled.read_text().splitlines()[0])
    image = next(c["image"] for c in row["candidates"] if c["image"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / image)), np.asarray(Image.open(bundled.parent / image)))


def test_bundled_corpus_parses_and_its_queries_have_answers():
    path = ASSETS / "corpus" / "corpus.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert 80 <= len(rows) <= 130
    for row in rows:
        assert set(row) == {"id", "image", "text", "caption"}
        assert (row["image"] is None) != (row["text"] is None)
        if row["image"]:
            assert (path.parent / row["image"]).is_file()
    queries = (ASSETS / "corpus" / "queries.txt").read_text(encoding="utf-8").splitlines()
    assert queries == [q.text for q in data_files.DEMO_QUERIES]


def test_bundled_assets_stay_small():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 15 * 2**20, f"the demo assets hold {total / 2**20:.1f} MB; keep it under 15 MB"
