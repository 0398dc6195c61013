"""Real-data documents and graded queries for the bundled demo reranker and embedder.

Sources (both ship inside their wheels, so nothing is downloaded):

* ``sklearn.datasets.load_digits``: 1,797 handwritten digits of 8x8 pixels, drawn dark on white and
  upscaled to ``DIGIT_SIDE`` pixels (4 visual tokens each with patch 16, merge 2); composites of two or
  three distinct digits side by side, some with blank margins (8 to 16 visual tokens);
* ``skimage.data`` photographs (:data:`PHOTOS`), each with a hand-written caption and query phrasings;
* short text documents about digits and photos, and some about nothing in the corpus.

The digit *source images* are split once, by a seeded permutation, into train / calib / heldout
(:func:`.images.split_digits`); every single-digit image and every composite of a split is drawn from that split
only, so calibration and held-out documents are never seen in training.

A query is structured (:class:`QuerySpec`) and rendered in one of several phrasings; its relevance to a
document (:func:`relevance`) is graded from the document's structure, never from its pixels:

* ``digit d``          2: the single digit d             1: a composite holding d         0: otherwise
* ``ordered x, y``     2: x somewhere left of y          1: both, y left of x             0: otherwise
* ``pair x, y``        2: both x and y                   1: exactly one of them           0: otherwise
* ``count n, d``       2: n digits, d among them         1: d with another digit count    0: otherwise
* ``photo name``       2: that photograph (or a text describing it)                       0: otherwise

Text documents carry the same structure (``digits`` or ``photo``), so they are graded by the same rules.
This module says what the data is (phrasings, the two specs, the grades); beside it ``images`` (the
sources, their seeded split, rendering), ``pools`` (a split's documents, random queries, candidate
selection), ``data_files`` (the labelled eval sets and the demo corpus) and ``data_card`` (DATA_CARD.md).
``train`` writes them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIGIT_SIDE = 64           # pixels of one digit cell: 2x2 merged visual tokens
PHOTO_LONG_SIDE = 128     # photographs are stored with this longer side (at most 4x4 merged tokens)
SPLITS = ("train", "calib", "heldout")
SPLIT_SIZES = {"calib": 270, "heldout": 270}  # the rest (1,257 images) is train
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COUNT_WORDS = {2: "two", 3: "three"}
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
        return fix_articles(templates[self.phrasing % len(templates)].format(**word_fields(self.digits, self.count)))


def fix_articles(text: str) -> str:
    """'a eight' -> 'an eight' (and 'a 8' -> 'an 8')."""
    return re.sub(r"\b([Aa]) (?=(eight|8)\b)", r"\1n ", text)


def word_fields(digits: tuple[int, ...], count: int = 0) -> dict[str, str]:
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


def vocabulary_lines() -> tuple[str, ...]:
    """Every phrase the demo models read, for the tokenizer's training corpus (digit and photo words)."""
    lines = [caption for caption, _, _ in PHOTOS.values()]
    for _, queries, texts in PHOTOS.values():
        lines += list(queries) + list(texts)
    lines += list(UNRELATED_TEXTS)
    for d in range(10):
        fields = word_fields((d, (d + 3) % 10, (d + 7) % 10), count=2 + d % 2)
        for template in DIGIT_QUERIES + ORDERED_QUERIES + PAIR_QUERIES + COUNT_QUERIES + DIGIT_TEXTS + PAIR_TEXTS:
            lines.append(fix_articles(template.format(**fields)))
    return tuple(lines * 3)
