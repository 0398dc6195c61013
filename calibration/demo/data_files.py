"""The demo's data files: the labelled eval sets (``eval/{split}.jsonl`` and images) and the demo corpus
(``corpus/corpus.jsonl``, ``queries.txt`` and images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import DocSpec, QuerySpec, relevance
from .images import Digits, render
from .pools import build_pool, eval_queries, select_candidates

EVAL_COMPOSITES = 300                # composites in the candidate pool of calib / heldout
EVAL_COUNTS = (3, 4, 8, 7)           # candidates per query: grade 2, grade 1, hard grade 0, random grade 0
PHOTO_COUNTS = (2, 0, 8, 14)         # a photo query has two relevant documents (the photograph, its text)
DEMO_QUERIES = (QuerySpec("digit", (7,)), QuerySpec("ordered", (3, 5)), QuerySpec("pair", (2, 8)),
                QuerySpec("count", (9,), count=3), QuerySpec("photo", photo="chelsea"),
                QuerySpec("photo", photo="coffee"), QuerySpec("photo", photo="astronaut"),
                QuerySpec("photo", photo="rocket", phrasing=1))


def save_image(doc: DocSpec, digits: Digits, directory: Path) -> str | None:
    """Write the document's canonical image (PNG; JPEG for photographs) once; its file name, or None."""
    if not doc.has_image:
        return None
    name = f"{doc.id}.jpg" if doc.photo is not None else f"{doc.id}.png"
    path = directory / name
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        image = render(doc, digits)
        image.save(path, **({"quality": 88} if doc.photo is not None else {"optimize": True}))
    return name


def write_labelled_set(directory: Path, split: str, digits: Digits, seed: int,
                       kinds: dict[str, int] | None = None) -> Path:
    """``{split}.jsonl`` in the labelled format, images under ``images/`` (paths relative to the file).

    One JSON object per line: ``{"qid", "query", "candidates": [{"id", "image", "text", "relevance"}],
    "meta": {"kind"}}`` (the query's kind, :class:`.data.QuerySpec`; eval ignores ``meta``).
    Each query has ~24 candidates: 3 fully relevant, up to 4 partial, 8 hard and 7+ random negatives,
    with at least one photograph and one text document among them. ``kinds``: queries per kind (default
    :data:`.pools.EVAL_QUERY_KINDS` of the split).
    """
    pool = build_pool(digits, split, EVAL_COMPOSITES, seed)
    rng = np.random.default_rng(seed + 7)
    lines = []
    for i, query in enumerate(eval_queries(split, seed, kinds)):
        chosen = select_candidates(query, pool, rng, PHOTO_COUNTS if query.kind == "photo" else EVAL_COUNTS)
        for extra in (pool.photos, pool.texts):
            if not any(doc in extra for doc, _ in chosen):
                doc = extra[int(rng.integers(len(extra)))]
                chosen.append((doc, relevance(query, doc)))
        candidates = [{"id": doc.id, "image": _relative(save_image(doc, digits, directory / "images")),
                       "text": doc.text, "relevance": grade} for doc, grade in chosen]
        lines.append(json.dumps({"qid": f"{split}-q{i:03d}", "query": query.text, "candidates": candidates,
                                 "meta": {"kind": query.kind}}))
    path = directory / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _relative(name: str | None) -> str | None:
    return None if name is None else f"images/{name}"


def corpus_documents(digits: Digits, seed: int) -> list[DocSpec]:
    """~100 held-out documents: each demo query's relevant and partial ones, singles, composites, photos, texts."""
    rng = np.random.default_rng(seed)
    pool = build_pool(digits, "heldout", EVAL_COMPOSITES, seed)
    chosen: dict[str, DocSpec] = {}
    for query in DEMO_QUERIES:
        if query.kind != "photo":
            for doc, _ in select_candidates(query, pool, rng, (2, 2, 0, 0)):
                chosen.setdefault(doc.id, doc)
    images = [d for d in pool.docs if d.sources]
    while sum(1 for d in chosen.values() if d.sources) < 60:
        doc = images[int(rng.integers(len(images)))]
        chosen.setdefault(doc.id, doc)
    docs = [d for d in chosen.values() if d.text is None] + pool.photos
    texts = [d for d in pool.texts]
    docs += [texts[int(i)] for i in np.sort(rng.permutation(len(texts))[:22])]
    return docs


def write_corpus(directory: Path, digits: Digits, seed: int) -> Path:
    """``corpus.jsonl`` ({"id", "image", "text", "caption"} per line), ``images/``, ``queries.txt``."""
    lines = []
    for doc in corpus_documents(digits, seed):
        image = _relative(save_image(doc, digits, directory / "images"))
        lines.append(json.dumps({"id": doc.id, "image": image, "text": doc.text if not doc.has_image else None,
                                 "caption": doc.caption}))
    (directory / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "queries.txt").write_text("\n".join(q.text for q in DEMO_QUERIES) + "\n", encoding="utf-8")
    return directory / "corpus.jsonl"
