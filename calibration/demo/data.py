"""Real-data documents and graded queries for the bundled demo reranker and embedder.

Sources (both ship inside their wheels, so nothing is downloaded):

* ``sklearn.datasets.load_digits``: 1,797 handwritten digits of 8x8 pixels, drawn dark on white and
  upscaled to ``DIGIT_SIDE`` pixels (4 visual tokens each with patch 16, merge 2); composites of two or
  three distinct digits side by side, some with blank margins (8 to 16 visual tokens);
* ``skimage.data`` photographs (:data:`PHOTOS`), each with a hand-written caption and query phrasings;
* short text documents about digits and photos, and some about nothing in the corpus.

The digit *source images* are split once, by a seeded permutation, into train / calib / heldout
(:func:`split_digits`); every single-digit image and every composite of a split is drawn from that split
only, so calibration and held-out documents are never seen in training.

A query is structured (:class:`QuerySpec`) and rendered in one of several phrasings; its relevance to a
document (:func:`relevance`) is graded from the document's structure, never from its pixels:

* ``digit d``          2: the single digit d             1: a composite holding d         0: otherwise
* ``ordered x, y``     2: x somewhere left of y          1: both, y left of x             0: otherwise
* ``pair x, y``        2: both x and y                   1: exactly one of them           0: otherwise
* ``count n, d``       2: n digits, d among them         1: d with another digit count    0: otherwise
* ``photo name``       2: that photograph (or a text describing it)                       0: otherwise

Text documents carry the same structure (``digits`` or ``photo``), so they are graded by the same rules.
Training, the labelled eval files and the demo corpus are all built here (see ``train_demo``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

DIGIT_SIDE = 64           # pixels of one digit cell: 2x2 merged visual tokens
PHOTO_LONG_SIDE = 128     # photographs are stored with this longer side (at most 4x4 merged tokens)
SPLITS = ("train", "calib", "heldout")
SPLIT_SIZES = {"calib": 270, "heldout": 270}  # the rest (1,257 images) is train
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COUNT_WORDS = {2: "two", 3: "three"}

# skimage.data name -> (caption, query phrasings, text-document phrasings)
PHOTOS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "astronaut": ("portrait of an astronaut in a space suit in front of a flag",
                  ("an astronaut", "a woman in a space suit", "portrait of an astronaut"),
                  ("An astronaut poses in her space suit next to a flag.",)),
    "chelsea": ("a tabby cat looking to the side",
                ("a cat", "a tabby cat", "the face of a cat"),
                ("A striped cat with green eyes sits quietly.",)),
    "coffee": ("a cup of coffee on a saucer with a spoon",
               ("a cup of coffee", "coffee", "a coffee cup on a saucer"),
               ("A hot cup of coffee stands on a small saucer.",)),
    "rocket": ("a rocket on the launch pad",
               ("a rocket", "a rocket on the launch pad", "a space launch"),
               ("The rocket waits on the launch pad before lift off.",)),
    "horse": ("black silhouette of a horse",
              ("a horse", "a horse silhouette", "the shape of a horse"),
              ("The black outline of a horse on a white background.",)),
    "camera": ("a man with a camera on a tripod",
               ("a man with a camera", "a photographer", "a camera on a tripod"),
               ("A photographer in a coat looks through his camera.",)),
    "coins": ("old coins on a table",
              ("coins", "old coins", "a collection of coins"),
              ("A dozen old coins are laid out in rows.",)),
    "clock": ("a clock on the wall",
              ("a clock", "a wall clock", "what time is it on the clock"),
              ("An old clock shows the time.",)),
    "moon": ("the surface of the moon",
             ("the moon", "craters on the moon", "the surface of the moon"),
             ("The moon is full of craters.",)),
    "page": ("a scanned page of a book",
             ("a page of text", "a scanned book page", "printed text"),
             ("A scanned page of a book with lines of printed text.",)),
    "immunohistochemistry": ("stained tissue under a microscope",
                             ("tissue under a microscope", "a stained tissue sample", "microscope image"),
                             ("Brown and blue stained cells seen under a microscope.",)),
    "hubble_deep_field": ("galaxies in deep space",
                          ("galaxies", "deep space", "the night sky full of galaxies"),
                          ("Thousands of galaxies in a dark patch of sky.",)),
    "colorwheel": ("a colour wheel",
                   ("a colour wheel", "all the colours of the rainbow", "a colorful circle"),
                   ("A round wheel of every colour.",)),
    "brick": ("a brick wall",
              ("a brick wall", "bricks", "a wall"),
              ("A grey wall made of bricks.",)),
    "grass": ("a patch of grass",
              ("grass", "a lawn", "green grass"),
              ("Close up of grass in a field.",)),
    "retina": ("a retina scan of the back of an eye",
               ("a retina", "an eye scan", "the back of an eye"),
               ("A medical image of the retina of an eye.",)),
    "checkerboard": ("a checkerboard pattern",
                     ("a checkerboard", "a chess board pattern", "black and white squares"),
                     ("A pattern of black and white squares.",)),
}

UNRELATED_TEXTS = (
    "The weather today is cold and rainy, but tomorrow will be warm.",
    "The recipe needs eggs, flour, sugar, milk and a little salt.",
    "Children play football in the park while their parents talk.",
    "The museum opens in the morning and closes in the evening.",
    "Scientists measure the temperature of the ocean with sensors.",
    "The train leaves the station and arrives at the city later.",
    "A small boat floats on a quiet mountain lake.",
    "The report shows that revenue grew in the last quarter.",
    "Please read the question carefully and give a short answer.",
    "A diagram of the human heart with labels for every chamber.",
    "The library lends books, maps and music to its readers.",
    "Fresh bread is sold at the bakery every morning.",
)

DIGIT_QUERIES = ("a handwritten {w}", "the digit {n}", "number {w}", "{n}", "an image of a {n}",
                 "a picture of the number {w}", "handwritten digit {w}", "a {w}")
ORDERED_QUERIES = ("a {wx} to the left of a {wy}", "a {wy} to the right of a {wx}", "{nx} left of {ny}",
                   "a {nx} followed by a {ny}")
PAIR_QUERIES = ("a {nx} and a {ny}", "the digits {wx} and {wy}", "both a {wx} and a {wy}", "{nx} and {ny} together")
COUNT_QUERIES = ("{c} digits including a {w}", "a row of {c} digits with a {n}",
                 "{c} handwritten digits, one of them a {w}")
DIGIT_TEXTS = ("The handwritten digit {w}.", "A scanned {n} from a postal code.",
               "Someone wrote the number {w} on a card.")
PAIR_TEXTS = ("A {wx} written to the left of a {wy}.", "The code reads {nx}{ny}.")
TRIPLE_TEXTS = ("The code reads {n0}{n1}{n2}.", "Three digits: {w0}, {w1} and {w2}.")


# ---------------------------------------------------------------------------------------------------
# documents and queries
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DocSpec:
    """One document, described by its structure; :func:`render` draws it.

    ``sources`` are indices into the sklearn digits (left to right), ``digits`` their labels;
    ``margins`` is the blank width (pixels) before the first cell, between cells and after the last.
    ``photo`` names a photograph; with ``text`` as well, the document is a text describing it.
    """

    id: str
    digits: tuple[int, ...] = ()
    sources: tuple[int, ...] = ()
    margins: tuple[int, ...] = ()
    photo: str | None = None
    text: str | None = None

    @property
    def has_image(self) -> bool:
        """Digits, or a photograph; a text about a photograph carries ``photo`` and ``text`` but no image."""
        return bool(self.sources) or (self.photo is not None and self.text is None)

    @property
    def caption(self) -> str:
        if self.photo is not None:
            return self.text or PHOTOS[self.photo][0]
        if self.text is not None:
            return self.text
        if len(self.digits) == 1:
            return f"a handwritten {NUMBER_WORDS[self.digits[0]]}"
        return "handwritten digits " + " ".join(str(d) for d in self.digits) + " (left to right)"


@dataclass(frozen=True)
class QuerySpec:
    """A structured query: ``kind`` in digit / ordered / pair / count / photo, with its arguments."""

    kind: str
    digits: tuple[int, ...] = ()
    count: int = 0
    photo: str | None = None
    phrasing: int = 0

    @property
    def text(self) -> str:
        if self.kind == "photo":
            options = PHOTOS[self.photo][1]
            return options[self.phrasing % len(options)]
        templates = {"digit": DIGIT_QUERIES, "ordered": ORDERED_QUERIES, "pair": PAIR_QUERIES,
                     "count": COUNT_QUERIES}[self.kind]
        return _articles(templates[self.phrasing % len(templates)].format(**_word_fields(self.digits, self.count)))


def _articles(text: str) -> str:
    """'a eight' -> 'an eight' (and 'a 8' -> 'an 8')."""
    return re.sub(r"\b([Aa]) (?=(eight|8)\b)", r"\1n ", text)


def _word_fields(digits: tuple[int, ...], count: int = 0) -> dict[str, str]:
    fields = {"c": COUNT_WORDS.get(count, "")}
    for key, d in zip(("x", "y"), digits[:2]):
        fields[f"w{key}"], fields[f"n{key}"] = NUMBER_WORDS[d], str(d)
    for i, d in enumerate(digits):
        fields[f"w{i}"], fields[f"n{i}"] = NUMBER_WORDS[d], str(d)
    if digits:
        fields["w"], fields["n"] = NUMBER_WORDS[digits[0]], str(digits[0])
    return fields


def relevance(query: QuerySpec, doc: DocSpec) -> int:
    """The graded relevance (0, 1, 2) of ``doc`` for ``query`` (rules in the module docstring)."""
    if query.kind == "photo":
        return 2 if doc.photo == query.photo else 0
    ds = doc.digits
    if not ds:
        return 0
    if query.kind == "digit":
        d = query.digits[0]
        return 2 if ds == (d,) else int(d in ds)
    x, y = query.digits[0], query.digits[-1]
    if query.kind == "ordered":
        if x in ds and y in ds:
            return 2 if ds.index(x) < ds.index(y) else 1
        return 0
    if query.kind == "pair":
        return 2 if x in ds and y in ds else int(x in ds or y in ds)
    if query.kind == "count":
        return 2 if x in ds and len(ds) == query.count else int(x in ds)
    raise ValueError(f"unknown query kind {query.kind!r}")


# ---------------------------------------------------------------------------------------------------
# sources and splits
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Digits:
    """The sklearn digits (ink 0..16, [N, 8, 8]) and their labels, with the three source splits."""

    images: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    def of(self, split: str) -> np.ndarray:
        return self.splits[split]


@lru_cache(maxsize=2)
def split_digits(seed: int = 0) -> Digits:
    """Load the digits and split the source images by a seeded permutation (disjoint, covering)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    calib, heldout = SPLIT_SIZES["calib"], SPLIT_SIZES["heldout"]
    splits = {"calib": np.sort(order[:calib]), "heldout": np.sort(order[calib: calib + heldout]),
              "train": np.sort(order[calib + heldout:])}
    return Digits(data.images.astype(np.float32), data.target.astype(np.int64), splits)


@lru_cache(maxsize=None)
def photo_source(name: str) -> Image.Image:
    """The skimage photograph, RGB, downscaled to ``2 * PHOTO_LONG_SIDE`` (augmented crops come from it)."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype == bool:
        array = np.where(array, 0, 255).astype(np.uint8)  # the horse: a black silhouette on white
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((2 * PHOTO_LONG_SIDE, 2 * PHOTO_LONG_SIDE), Image.Resampling.LANCZOS)
    return image


# ---------------------------------------------------------------------------------------------------
# rendering (``rng`` None: the canonical, unaugmented image)
# ---------------------------------------------------------------------------------------------------
def render_digit_cell(ink: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """One 8x8 digit (ink 0..16) drawn dark on white in a DIGIT_SIDE square: uint8 [S, S]."""
    size, shift = 56, (0, 0)
    contrast = 1.0
    if rng is not None:
        size = int(rng.integers(46, 61))
        shift = tuple(int(v) for v in rng.integers(-3, 4, size=2))
        contrast = float(rng.uniform(0.7, 1.0))
    small = Image.fromarray((255 - ink * (255.0 / 16.0) * contrast).clip(0, 255).astype(np.uint8))
    glyph = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    cell = np.full((DIGIT_SIDE, DIGIT_SIDE), 255, dtype=np.uint8)
    top = (DIGIT_SIDE - size) // 2 + shift[0]
    left = (DIGIT_SIDE - size) // 2 + shift[1]
    top, left = min(max(top, 0), DIGIT_SIDE - size), min(max(left, 0), DIGIT_SIDE - size)
    cell[top: top + size, left: left + size] = glyph
    return cell


def render_photo(name: str, rng: np.random.Generator | None = None) -> Image.Image:
    """The photograph, longer side PHOTO_LONG_SIDE; with ``rng`` a random crop, flip, colour jitter, size."""
    image = photo_source(name)
    if rng is None:
        image = image.copy()
        image.thumbnail((PHOTO_LONG_SIDE, PHOTO_LONG_SIDE), Image.Resampling.LANCZOS)
        return image
    w, h = image.size
    scale = float(rng.uniform(0.6, 1.0))
    cw, ch = max(16, int(w * scale)), max(16, int(h * scale))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.75, 1.25)))
    side = int(rng.integers(80, 161))
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    return image


def render(doc: DocSpec, digits: Digits, rng: np.random.Generator | None = None) -> Image.Image | None:
    """The document's image (None for a text document)."""
    if not doc.has_image:
        return None
    if doc.photo is not None:
        return render_photo(doc.photo, rng)
    parts = []
    for i, source in enumerate(doc.sources):
        parts.append(np.full((DIGIT_SIDE, doc.margins[i]), 255, dtype=np.uint8))
        parts.append(render_digit_cell(digits.images[source], rng))
    parts.append(np.full((DIGIT_SIDE, doc.margins[-1]), 255, dtype=np.uint8))
    return Image.fromarray(np.concatenate(parts, axis=1), mode="L")


# ---------------------------------------------------------------------------------------------------
# pools of documents for one split
# ---------------------------------------------------------------------------------------------------
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
        docs.append(DocSpec("", (d,), text=template.format(**_word_fields((d,)))))
    for _ in range(8):
        pair = tuple(int(d) for d in rng.choice(10, size=2, replace=False))
        docs.append(DocSpec("", pair, text=PAIR_TEXTS[int(rng.integers(2))].format(**_word_fields(pair))))
    for _ in range(4):
        triple = tuple(int(d) for d in rng.choice(10, size=3, replace=False))
        docs.append(DocSpec("", triple, text=TRIPLE_TEXTS[int(rng.integers(2))].format(**_word_fields(triple))))
    for name, (_, _, texts) in PHOTOS.items():
        docs.append(DocSpec("", photo=name, text=texts[0]))
    docs.extend(DocSpec("", text=t) for t in UNRELATED_TEXTS)
    return [DocSpec(f"{prefix}-t{i:03d}", d.digits, photo=d.photo, text=_articles(d.text or ""))
            for i, d in enumerate(docs)]


def photo_documents(prefix: str) -> list[DocSpec]:
    return [DocSpec(f"{prefix}-{name}", photo=name) for name in PHOTOS]


def vocabulary_lines() -> tuple[str, ...]:
    """Every phrase the demo models read, for the tokenizer's training corpus (digit and photo words)."""
    lines = [caption for caption, _, _ in PHOTOS.values()]
    for _, queries, texts in PHOTOS.values():
        lines += list(queries) + list(texts)
    lines += list(UNRELATED_TEXTS)
    for d in range(10):
        fields = _word_fields((d, (d + 3) % 10, (d + 7) % 10), count=2 + d % 2)
        for template in DIGIT_QUERIES + ORDERED_QUERIES + PAIR_QUERIES + COUNT_QUERIES + DIGIT_TEXTS + PAIR_TEXTS:
            lines.append(_articles(template.format(**fields)))
    return tuple(lines * 3)


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


def eval_queries(split: str, seed: int) -> list[QuerySpec]:
    """The labelled queries of ``calib`` (30) or ``heldout`` (48): every digit, ordered and pair and count."""
    rng = np.random.default_rng(seed)
    per_kind = {"heldout": {"digit": 20, "ordered": 12, "pair": 8, "count": 8},
                "calib": {"digit": 10, "ordered": 8, "pair": 6, "count": 6}}[split]
    queries: list[QuerySpec] = []
    for kind, count in per_kind.items():
        texts: set[str] = set()
        while sum(1 for q in queries if q.kind == kind) < count:
            q = sample_query(rng, {kind: 1.0})
            if kind == "digit":  # every digit, in two phrasings each
                q = QuerySpec("digit", (len(texts) % 10,), phrasing=q.phrasing)
            if q.text not in texts:
                texts.add(q.text)
                queries.append(q)
    return queries


# ---------------------------------------------------------------------------------------------------
# files: the labelled eval sets and the demo corpus
# ---------------------------------------------------------------------------------------------------
EVAL_COMPOSITES = 300                # composites in the candidate pool of calib / heldout
EVAL_COUNTS = (3, 4, 8, 7)           # candidates per query: grade 2, grade 1, hard grade 0, random grade 0
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


def write_labelled_set(directory: Path, split: str, digits: Digits, seed: int) -> Path:
    """``{split}.jsonl`` in the labelled format, images under ``images/`` (paths relative to the file).

    One JSON object per line: ``{"qid", "query", "candidates": [{"id", "image", "text", "relevance"}]}``.
    Each query has ~24 candidates: 3 fully relevant, up to 4 partial, 8 hard and 7+ random negatives,
    with at least one photograph and one text document among them.
    """
    pool = build_pool(digits, split, EVAL_COMPOSITES, seed)
    rng = np.random.default_rng(seed + 7)
    lines = []
    for i, query in enumerate(eval_queries(split, seed)):
        chosen = select_candidates(query, pool, rng, EVAL_COUNTS)
        for extra in (pool.photos, pool.texts):
            if not any(doc in extra for doc, _ in chosen):
                doc = extra[int(rng.integers(len(extra)))]
                chosen.append((doc, relevance(query, doc)))
        candidates = [{"id": doc.id, "image": _relative(save_image(doc, digits, directory / "images")),
                       "text": doc.text, "relevance": grade} for doc, grade in chosen]
        lines.append(json.dumps({"qid": f"{split}-q{i:03d}", "query": query.text, "candidates": candidates}))
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


_LICENCES = {
    "astronaut": "public domain (NASA)", "chelsea": "CC0 (Stefan van der Walt)", "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)", "horse": "CC0 (Andreas Preuss)", "camera": "CC0 (Lav Varshney)",
    "coins": "no known copyright restrictions", "clock": "public domain (Stefan van der Walt)",
    "immunohistochemistry": "no known copyright restrictions", "hubble_deep_field": "public domain (NASA)",
    "brick": "CC0 (CC0Textures)", "grass": "CC0 (CC0Textures)", "retina": "CC0 1.0",
}


def write_data_card(path: Path, digits: Digits, seed: int) -> None:
    """DATA_CARD.md: sources, licences, splits, sizes, seeds, how queries and grades are made."""
    unstated = "no statement in its docstring; shipped in scikit-image (BSD-3-Clause)"
    photos = "\n".join(f"| `{name}` | {caption} | {_LICENCES.get(name, unstated)} |"
                       for name, (caption, _, _) in PHOTOS.items())
    sizes = {s: len(digits.of(s)) for s in SPLITS}
    path.write_text(f"""# Data card: the miniReranker demo data

Everything here is regenerated by `python -m minireranker.calibration.demo.train calibration/demo/assets --seed {seed}`
(`calibration/demo/data.py` builds the data; nothing is downloaded).

## Sources

- **Handwritten digits**: `sklearn.datasets.load_digits` (1,797 images of 8x8 pixels, ink 0..16, ten classes), a
  copy of the test set of the UCI "Optical Recognition of Handwritten Digits" data set (E. Alpaydin, C. Kaynak,
  1998), shipped inside scikit-learn (BSD-3-Clause); UCI publishes the data set under CC BY 4.0.
  Each digit is drawn dark on white, upscaled (bicubic) into a {DIGIT_SIDE}x{DIGIT_SIDE} cell (4 visual tokens with
  patch 16 and merge 2). Composites put 2 or 3 distinct digits side by side, with 0, 32 or 64 blank pixels
  spread over the margins (128..256 pixels wide: 8 to 16 visual tokens).
- **Photographs**: `skimage.data` (scikit-image {_skimage_version()}), licences as the package's docstrings state them:

| image | caption | licence |
|---|---|---|
{photos}

  Stored with the longer side {PHOTO_LONG_SIDE} pixels (JPEG). In training they are augmented: random crops
  (60-100 % of each side), horizontal flips, brightness / contrast / saturation jitter (x0.75-1.25) and resizing
  (longer side 80-160 pixels). Digits are augmented by size (46-60 pixels), shift (+-3 pixels) and ink contrast.
- **Texts**: short sentences written for this demo: digits ("The handwritten digit seven."), pairs and triples
  ("The code reads 35."), one per photograph, and {len(UNRELATED_TEXTS)} about nothing in the corpus.

## Splits (seed {seed})

The digit *source images* are split by one seeded permutation: train {sizes['train']}, calibration
{sizes['calib']}, held-out {sizes['heldout']} images, disjoint. Every single-digit document and every composite
of a split is built from that split's images only, so calibration and held-out images are never seen in training.
Photographs and text templates are shared by all splits (they are distractors in the labelled sets, and the demo
corpus's photo queries are seen in training, augmented).

## Queries and grades

Queries are structured and phrased in several ways ("a handwritten seven", "the digit 7", "number seven", "7",
...; "a three to the left of a five", "3 left of 5", ...; "a 3 and a 5"; "three digits including a nine";
photograph phrasings such as "a cat"). Grades come from the document's structure, never from its pixels:

| query | 2 | 1 | 0 |
|---|---|---|---|
| digit d | the single digit d | a composite holding d | otherwise |
| x left of y | x somewhere left of y | both, in the other order | otherwise |
| x and y | both | exactly one | otherwise |
| n digits including d | n digits, d among them | d, another digit count | otherwise |
| a photograph | that photograph, or a text describing it | - | otherwise |

Text documents carry the same structure and are graded by the same rules.

## Files

- `eval/heldout.jsonl` ({len(eval_queries('heldout', seed + 1))} queries) and `eval/calib.jsonl`
  ({len(eval_queries('calib', seed + 2))} queries): one JSON object per line,
  `{{"qid", "query", "candidates": [{{"id", "image", "text", "relevance"}}]}}`, image paths relative to the file.
  Each query has ~24 candidates from a pool of the split's singles, {EVAL_COMPOSITES} composites, the photographs
  and the texts: 3 of grade 2, up to 4 of grade 1, 8 hard negatives (sharing a digit with the query) and random
  ones, with at least one photograph and one text.
- `corpus/corpus.jsonl` (`{{"id", "image", "text", "caption"}}` per line, held-out digits, every photograph, texts)
  and `corpus/queries.txt` (the demo's queries, each with relevant documents in the corpus).
""", encoding="utf-8")


def _skimage_version() -> str:
    import skimage

    return skimage.__version__
