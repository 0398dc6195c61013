"""`minireranker demo`: the bundled real-data reranker, end to end, with dense scoring beside it.

On the embedded default it uses what ships in ``calibration/demo/assets`` (see its DATA_CARD.md):

* ``reranker/``  a small Qwen3-VL-architecture point-wise reranker trained here on real images, with its
  calibrated spec as ``minireranker.json``;
* ``embedder/``  a small Qwen3-VL-Embedding-style embedder: the first stage and the pruning guide;
* ``corpus/``    the demo corpus (``corpus.jsonl``: scikit-image photographs, scikit-learn digits and
  composites of them, texts) and ``queries.txt``.

Steps: build engines for the spec, index the corpus into the K/V store (progress bar), then for each query
retrieve the top candidates with the embedder, rerank them with the torch-free runtime, score the same
candidates densely (the torch reference, exact spec, every pair from scratch, every layer) and print both
with per-stage times, the speedup measured in this run, and a PNG contact sheet of the top results.
"""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...runtime.documents import Document, expand_document_args
from ...runtime.errors import DocumentError
from ...runtime.preprocess import load_image, to_rgb
from ...runtime.spec import RerankSpec, read_spec

if TYPE_CHECKING:  # torch loads in run_demo, so that the command line reads its defaults without it
    from ...export.reference import ReferencePipeline

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_QUERIES = 5    # how many of corpus/queries.txt the default run shows: one of each kind
THUMB = 150            # contact-sheet thumbnail height, pixels (images are scaled up or down to it)
MAX_ASPECT = 2.5       # a wider image is scaled to THUMB * MAX_ASPECT pixels wide instead
TILE_MIN_WIDTH = 130   # pixels: room for the rank, score and probability over a narrow image
HEADER, BORDER, GAP, TITLE = 20, 4, 6, 28   # pixels of a tile's header, its border, between tiles, the query line


def load_corpus(path: Path) -> list[Document]:
    """Documents of a ``corpus.jsonl`` (``id``, ``image`` relative to the file or null, ``text`` or null)."""
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = row.get("image")
            docs.append(Document(image=str(path.parent / image) if image else None, text=row.get("text"),
                                 id=str(row["id"])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DocumentError(f"{path}:{number}: not a corpus line ({exc}); expected a JSON object with "
                                "'id' and an 'image' path and/or a 'text'") from None
    return docs


def default_queries(count: int = DEFAULT_QUERIES) -> list[str]:
    lines = (ASSETS / "corpus" / "queries.txt").read_text(encoding="utf-8").splitlines()
    return [q.strip() for q in lines if q.strip()][:count]


def demo_spec(checkpoint: str, spec_file: str | None) -> tuple[RerankSpec, str]:
    """The spec to build: ``--spec``, else the checkpoint's calibrated ``minireranker.json``, else a rule of thumb."""
    if spec_file:  # a file, inline JSON or 'exact', read as by every command
        given = read_spec(spec_file)
        return given.spec, given.source
    own = Path(checkpoint) / "minireranker.json"
    if own.is_file():
        return RerankSpec.from_file(own), f"{own} (calibrated)"
    layers = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    layers = (layers.get("text_config") or layers)["num_hidden_layers"]
    a = max(1, layers // 4)
    spec = RerankSpec(exit_layer=min(layers - 1, a + 1), band=(a, a), keep_ratio=0.5, query_position=256)
    return spec, "rule of thumb (the checkpoint has no minireranker.json; run `minireranker calibrate`)"


def _short(doc: Document) -> str:
    """A document's name for a narrow column: its id, else the file name, else its text."""
    if doc.id is not None:
        return str(doc.id)
    if isinstance(doc.image, (str, Path)):
        return Path(doc.image).name + (" +text" if doc.text else "")
    return doc.label


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 1.0
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class SheetTile:
    """One result on a contact sheet: the document, its rank (from 1), its score (a logit), a short name, and
    its relevance grade where labels are known (None: unknown, and no relevance mark is drawn)."""

    doc: Document
    rank: int
    score: float
    name: str
    grade: int | None = None


def relevance_mark(grade: int | None) -> tuple[tuple[int, int, int], str] | None:
    """A result's border colour and tag for its grade (relevant = grade > 0, as in eval); None without a label."""
    if grade is None:
        return None
    if grade > 0:
        return ((0, 140, 60) if grade >= 2 else (110, 180, 50)), f"relevant, grade {grade}"
    return (190, 50, 50), f"not relevant, grade {grade}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` cut (with an ellipsis) to at most ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _thumbnail(doc: Document) -> Image.Image:
    """The document as the tile shows it: its image scaled (up or down) to THUMB pixels high, at most
    MAX_ASPECT times as wide; its text under the image (two lines) or, without an image, as the thumbnail,
    only as tall as its lines."""
    img = None
    if doc.image is not None:  # any image source a Document takes, transparency on white
        img = Image.fromarray(to_rgb(load_image(doc.image)))
        scale = min(THUMB / img.height, MAX_ASPECT * THUMB / img.width)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
        if not doc.text:
            return img
    width = img.width if img is not None else THUMB
    lines = textwrap.wrap(doc.text or "", max(8, width // 6))[: (11 if img is None else 2)]
    top = img.height + 4 if img is not None else 4
    out = Image.new("RGB", (width, top + 13 * len(lines) + 2), "white")  # the text's own height: no blank box
    if img is not None:
        out.paste(img, (0, 0))
    ImageDraw.Draw(out).multiline_text((4, top), "\n".join(lines), fill=(40, 40, 40), font=_font(11), spacing=2)
    return out


def _tile(tile: SheetTile) -> Image.Image:
    """Rank, score and probability over the thumbnail, the name (and relevance tag) under it; a coloured border
    when the grade is known."""
    thumb, mark = _thumbnail(tile.doc), relevance_mark(tile.grade)
    width = max(thumb.width, TILE_MIN_WIDTH)
    lines = 2 if mark else 1
    out = Image.new("RGB", (width + 2 * BORDER, thumb.height + HEADER + 15 * lines + 2 * BORDER + 2),
                    mark[0] if mark else (200, 200, 200))
    out.paste(Image.new("RGB", (width, out.height - 2 * BORDER), "white"), (BORDER, BORDER))
    out.paste(thumb, (BORDER + (width - thumb.width) // 2, BORDER + HEADER))
    draw, bold, small = ImageDraw.Draw(out), _font(13), _font(11)
    prob = 1.0 / (1.0 + np.exp(-tile.score))
    draw.text((BORDER + 3, BORDER + 2), f"#{tile.rank}  {tile.score:+.2f}  p={prob:.2f}", fill=(0, 0, 0), font=bold)
    below = BORDER + HEADER + thumb.height + 2
    draw.text((BORDER + 3, below), _fit(draw, tile.name, width - 6, small), fill=(60, 60, 60), font=small)
    if mark:
        draw.text((BORDER + 3, below + 15), mark[1], fill=mark[0], font=small)
    return out


def contact_sheet(query: str, tiles: list[SheetTile], path: Path) -> Path:
    """One row of results, best first, each sized to its image; the query across the top. Tiles whose grade is
    known get a relevance border and tag (green: relevant, red: not); others get neither."""
    images = [_tile(t) for t in tiles]
    height = max((im.height for im in images), default=0)
    width = sum(im.width + GAP for im in images) + GAP
    title = f"query: {query}" + ("" if all(t.grade is None for t in tiles) else "   (border: green relevant, red not)")
    font = _font(14)
    width = max(width, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 16)
    sheet = Image.new("RGB", (width, height + TITLE + GAP), (235, 235, 235))
    ImageDraw.Draw(sheet).text((8, 6), title, fill=(0, 0, 0), font=font)
    x = GAP
    for im in images:
        sheet.paste(im, (x, TITLE))
        x += im.width + GAP
    sheet.save(path)
    return path


def run_demo(output: Path, checkpoint: str | None = None, embedder: str | None = None,
             images: list[str] | None = None, queries: list[str] | None = None, spec_file: str | None = None,
             candidates: int = 20, show: int = 5) -> dict:
    """Build, index, retrieve, rerank, compare with dense; returns the report also written as ``demo.json``."""
    from ...runtime.reranker import Reranker
    from ...export.onnx_export import build_bundle
    from ...export.reference import ReferencePipeline

    output.mkdir(parents=True, exist_ok=True)
    bundled = checkpoint is None
    checkpoint = str(ASSETS / "reranker") if bundled else checkpoint
    if bundled and embedder is None:
        embedder = str(ASSETS / "embedder")
    docs = expand_document_args(images) if images else load_corpus(ASSETS / "corpus" / "corpus.jsonl")
    queries = queries or default_queries()
    spec, spec_source = demo_spec(checkpoint, spec_file)
    print(f"reranker: {checkpoint}\nembedder: {embedder or '(none: every document is a candidate)'}")
    print(f"spec: {spec_source}\n      exit layer {spec.exit_layer}, band {list(spec.band or [])}, "
          f"keep {spec.keep_ratio}, guide {spec.guide.split('/')[-1] if '/' in spec.guide else spec.guide}")

    t0 = time.perf_counter()
    bundle = build_bundle(checkpoint, output / "bundle", spec, log=lambda m: None)
    print(f"built engines in {time.perf_counter() - t0:.1f} s -> {bundle.path}")
    dense = ReferencePipeline(checkpoint, RerankSpec.exact())
    threads = _fastest_torch_threads(dense, docs[:2], queries[0])
    first = matrix = None
    if embedder:
        from ..embedder import Embedder

        first = Embedder(embedder)
    report: dict = {"checkpoint": checkpoint, "embedder": embedder, "bundle": str(bundle.path),
                    "spec": bundle.data["spec"], "documents": len(docs), "queries": []}
    with Reranker(bundle, output / "cache") as runtime:
        t0 = time.perf_counter()
        indexed = runtime.index(docs, progress=True)
        report["index_s"] = time.perf_counter() - t0
        print(f"indexed {indexed.indexed} documents ({indexed.skipped} already cached) in {report['index_s']:.1f} s")
        if first is not None:
            t0 = time.perf_counter()
            matrix = np.stack([first.embed_document(d) for d in docs])  # index time too: once per document
            report["embed_corpus_s"] = time.perf_counter() - t0
        for qi, query in enumerate(queries):
            row = _one_query(query, docs, runtime, dense, first, matrix, candidates, show)
            sheet = contact_sheet(query, [SheetTile(docs[i], rank, score, _short(docs[i]))
                                          for i, rank, score in row.pop("tiles")], output / f"contact-{qi + 1}.png")
            row["contact_sheet"] = str(sheet)
            print(f"  contact sheet: {sheet}")
            report["queries"].append(row)
    report["dense_torch_threads"] = threads
    _summary(report)
    (output / "demo.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _fastest_torch_threads(dense: ReferencePipeline, docs: list[Document], query: str) -> int:
    """Dense gets torch's faster thread count on this machine (1 or all), tried on two pairs.

    Why: on small models, OpenMP threads spin-wait at every op, and when another process holds a core a
    second thread can make torch many times slower, not faster. Dense must not lose by a bad setting.
    """
    import torch

    best, default = None, torch.get_num_threads()
    for count in sorted({1, default}):
        torch.set_num_threads(count)
        t0 = time.perf_counter()
        dense.rerank(query, docs)
        took = time.perf_counter() - t0
        if best is None or took < best[1]:
            best = (count, took)
    torch.set_num_threads(best[0])
    print(f"dense torch reference: {best[0]} thread(s), the faster here")
    return best[0]


def _one_query(query: str, docs: list[Document], runtime, dense: ReferencePipeline, first, matrix,
               candidates: int, show: int) -> dict:
    t0 = time.perf_counter()
    if first is not None:
        sims = matrix @ first.embed_text(query)
        pool = [int(i) for i in np.argsort(-sims, kind="stable")[:candidates]]
    else:
        sims, pool = None, list(range(len(docs)))
    t_first = time.perf_counter() - t0
    cands = [docs[i] for i in pool]
    t0 = time.perf_counter()
    out = runtime.rerank(query, cands)
    t_mini = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = dense.rerank(query, cands)  # dense: every pair from scratch, no cache, every layer
    t_dense = time.perf_counter() - t0
    mini = np.array([r.score for r in sorted(out.results, key=lambda r: r.index)])
    dense_order = [pool[i] for i in np.argsort(-exact, kind="stable")]
    print(f"\nquery: {query!r}  ({len(cands)} candidates"
          f"{' from the embedder' if first is not None else ''})")
    print("  stages (ms): " + "  ".join(f"{k} {1e3 * v:.1f}" for k, v in out.timings.items() if v > 0))
    print(f"  miniReranker {1e3 * t_mini:.1f} ms   dense {1e3 * t_dense:.1f} ms   "
          f"({t_dense / t_mini:.1f}x)   rank agreement with dense: Spearman {_spearman(exact, mini):+.2f}")
    print(f"  {'rank':>4}  {'document':<22} {'score':>7} {'prob':>5}  {'dense':>7}  {'dense rank':>10}"
          f"{'  first-stage rank' if first is not None else ''}")
    tiles = []
    for rank, r in enumerate(out.results[:show], 1):
        doc_index = pool[r.index]
        prob = 1.0 / (1.0 + np.exp(-r.score))
        extra = f"  {r.index + 1:>16}" if first is not None else ""
        print(f"  {rank:>4}  {_short(docs[doc_index])[:22]:<22} {r.score:+7.3f} {prob:5.2f}  {exact[r.index]:+7.3f}  "
              f"{dense_order.index(doc_index) + 1:>10}{extra}")
        tiles.append((doc_index, rank, float(r.score)))
    return {"query": query, "candidates": [docs[i].label for i in pool],
            "ranking": [r.document for r in out.results], "scores": [r.score for r in out.results],
            "dense_ranking": [docs[i].label for i in dense_order],
            "first_stage_s": t_first, "minireranker_s": t_mini, "dense_s": t_dense, "timings": out.timings,
            "spearman_vs_dense": _spearman(exact, mini), "top1_agrees": dense_order[0] == pool[out.results[0].index],
            "tiles": tiles}


def _summary(report: dict) -> None:
    rows = report["queries"]
    mini = sum(r["minireranker_s"] for r in rows) / len(rows)
    dense = sum(r["dense_s"] for r in rows) / len(rows)
    report.update(minireranker_s_per_query=mini, dense_s_per_query=dense, speedup=dense / mini,
                  top1_agreement=sum(r["top1_agrees"] for r in rows) / len(rows))
    print(f"\nper query: dense {1e3 * dense:.1f} ms, miniReranker {1e3 * mini:.1f} ms "
          f"({dense / mini:.1f}x faster, same run); top-1 equals dense's on "
          f"{sum(r['top1_agrees'] for r in rows)}/{len(rows)} queries")
