"""The documents of one split (digit singles and composites, photographs, texts), the pool candidates
are drawn from, random queries, graded candidate selection, and the labelled sets' queries."""

from __future__ import annotations

import numpy as np

from .data import (DIGIT_SIDE, DIGIT_TEXTS, PAIR_TEXTS, PHOTOS, TRIPLE_TEXTS, UNRELATED_TEXTS, DocSpec, QuerySpec,
                   fix_articles, relevance, word_fields)
from .images import Digits


def _margins(rng: np.random.Generator, cells: int) -> tuple[int, ...]:
    """Blank widths around the cells: total 0, 32 or 64 pixels (the image stays within 4 cells)."""
    total = int(rng.choice([0, 32, 64])) if cells < 4 else 0
    total = min(total, (4 - cells) * DIGIT_SIDE)
    slots = np.zeros(cells + 1, dtype=int)
    for _ in range(total // 32):
        slots[rng.integers(0, cells + 1)] += 32
    return tuple(int(s) for s in slots)


def digit_documents(digits: Digits, split: str, composites: int, seed: int) -> list[DocSpec]:
    """Every single digit of the split, and ``composites`` composites of 2 or 3 distinct digits."""
    rng = np.random.default_rng(seed)
    sources = digits.of(split)
    docs = [DocSpec(f"{split}-d{int(s):04d}", (int(digits.labels[s]),), (int(s),), (0, 0)) for s in sources]
    by_label = {d: sources[digits.labels[sources] == d] for d in range(10)}
    for i in range(composites):
        n = 2 if rng.random() < 0.55 else 3
        labels = tuple(int(d) for d in rng.choice(10, size=n, replace=False))
        picked = tuple(int(rng.choice(by_label[d])) for d in labels)
        docs.append(DocSpec(f"{split}-c{i:04d}", labels, picked, _margins(rng, n)))
    return docs


def text_documents(seed: int, prefix: str) -> list[DocSpec]:
    """Text documents about digits, digit pairs and triples, photographs, and unrelated things."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(10):
        template = DIGIT_TEXTS[int(rng.integers(len(DIGIT_TEXTS)))]
        docs.append(DocSpec("", (d,), text=template.format(**word_fields((d,)))))
    for _ in range(8):
        pair = tuple(int(d) for d in rng.choice(10, size=2, replace=False))
        docs.append(DocSpec("", pair, text=PAIR_TEXTS[int(rng.integers(2))].format(**word_fields(pair))))
    for _ in range(4):
        triple = tuple(int(d) for d in rng.choice(10, size=3, replace=False))
        docs.append(DocSpec("", triple, text=TRIPLE_TEXTS[int(rng.integers(2))].format(**word_fields(triple))))
    for name, (_, _, texts) in PHOTOS.items():
        docs.append(DocSpec("", photo=name, text=texts[0]))
    docs.extend(DocSpec("", text=t) for t in UNRELATED_TEXTS)
    return [DocSpec(f"{prefix}-t{i:03d}", d.digits, photo=d.photo, text=fix_articles(d.text or ""))
            for i, d in enumerate(docs)]


def photo_documents(prefix: str) -> list[DocSpec]:
    return [DocSpec(f"{prefix}-{name}", photo=name) for name in PHOTOS]


class DocPool:
    """The documents a split draws candidates from, indexed by the digits they hold."""

    def __init__(self, docs: list[DocSpec]) -> None:
        self.docs = docs
        self.by_digit = {d: [doc for doc in docs if d in doc.digits] for d in range(10)}
        self.about_photos = [doc for doc in docs if doc.photo is not None]  # photographs and texts about them
        self.photos = [doc for doc in self.about_photos if doc.has_image]
        self.texts = [doc for doc in docs if doc.text is not None]
        self.singles = [doc for doc in docs if len(doc.digits) == 1]

    def related(self, query: QuerySpec) -> list[DocSpec]:
        """Documents that can be graded above 0 or are hard negatives (they share a digit or are photos)."""
        if query.kind == "photo":
            return self.about_photos
        seen: dict[str, DocSpec] = {}
        for d in query.digits:
            seen.update((doc.id, doc) for doc in self.by_digit[d])
        return list(seen.values())


def build_pool(digits: Digits, split: str, composites: int, seed: int) -> DocPool:
    """Digit singles and composites of ``split``, every photograph and the text documents."""
    docs = digit_documents(digits, split, composites, seed)
    return DocPool(docs + photo_documents(f"{split}-photo") + text_documents(seed + 1, f"{split}"))


def sample_query(rng: np.random.Generator, kinds: dict[str, float]) -> QuerySpec:
    """A random query of one of ``kinds`` (kind -> weight), in a random phrasing."""
    names = list(kinds)
    kind = names[int(rng.choice(len(names), p=np.array([kinds[k] for k in names]) / sum(kinds.values())))]
    phrasing = int(rng.integers(0, 12))
    if kind == "photo":
        return QuerySpec("photo", photo=str(rng.choice(list(PHOTOS))), phrasing=phrasing)
    if kind == "digit":
        return QuerySpec("digit", (int(rng.integers(10)),), phrasing=phrasing)
    if kind == "count":
        return QuerySpec("count", (int(rng.integers(10)),), count=int(rng.choice([2, 3])), phrasing=phrasing)
    pair = tuple(int(d) for d in rng.choice(10, size=2, replace=False))
    return QuerySpec(kind, pair, phrasing=phrasing)


def select_candidates(query: QuerySpec, pool: DocPool, rng: np.random.Generator,
                      counts: tuple[int, int, int, int], hard_singles: bool = False) -> list[tuple[DocSpec, int]]:
    """Up to ``counts`` = (grade 2, grade 1, hard grade 0, random grade 0) candidates, shuffled.

    Hard negatives are grade-0 documents sharing a digit with the query (or other photographs);
    random negatives come from the whole pool. No document appears twice. A single-digit query has no
    document that shares its digit and is graded 0; with ``hard_singles`` (training) its hard negatives are
    single digits of other labels, so "a single digit" alone never wins.
    """
    graded: dict[int, list[DocSpec]] = {0: [], 1: [], 2: []}
    for doc in pool.related(query):
        graded[relevance(query, doc)].append(doc)
    if hard_singles and query.kind == "digit":
        graded[0] = [doc for doc in pool.singles if doc.digits != query.digits]
    chosen: list[tuple[DocSpec, int]] = []
    for grade, docs, count in ((2, graded[2], counts[0]), (1, graded[1], counts[1]), (0, graded[0], counts[2])):
        for i in rng.permutation(len(docs))[:count]:
            chosen.append((docs[int(i)], grade))
    taken = {doc.id for doc, _ in chosen}
    while sum(1 for _, g in chosen if g == 0) < counts[2] + counts[3] and len(taken) < len(pool.docs):
        doc = pool.docs[int(rng.integers(len(pool.docs)))]
        if doc.id not in taken and relevance(query, doc) == 0:
            taken.add(doc.id)
            chosen.append((doc, 0))
    return [chosen[int(i)] for i in rng.permutation(len(chosen))]


EVAL_QUERY_KINDS = {
    # held-out: at least 200 queries (a 2% nDCG difference needs them), every kind the demo serves
    "heldout": {"digit": 60, "ordered": 50, "pair": 40, "count": 40, "photo": 34},
    "calib": {"digit": 10, "ordered": 8, "pair": 6, "count": 6},
    # adapt: unlabelled-style pairs for `minireranker adapt`, from the training split (benchmarks/format_table.py)
    "train": {"digit": 40, "ordered": 30, "pair": 20, "count": 20, "photo": 20},
}


def eval_queries(split: str, seed: int, kinds: dict[str, int] | None = None) -> list[QuerySpec]:
    """The labelled queries of a split, ``kinds`` (default :data:`EVAL_QUERY_KINDS`) of each kind, distinct
    texts (at most 80 digit, 60 count and 51 photo texts exist); digit queries cycle through every digit."""
    rng = np.random.default_rng(seed)
    per_kind = kinds or EVAL_QUERY_KINDS[split]
    queries: list[QuerySpec] = []
    for kind, count in per_kind.items():
        texts: set[str] = set()
        while sum(1 for q in queries if q.kind == kind) < count:
            q = sample_query(rng, {kind: 1.0})
            if kind == "digit":  # every digit, in several phrasings each
                q = QuerySpec("digit", (len(texts) % 10,), phrasing=q.phrasing)
            if q.text not in texts:
                texts.add(q.text)
                queries.append(q)
    return queries
