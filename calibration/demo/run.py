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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from ...runtime.documents import Document, expand_document_args
from ...runtime.errors import DocumentError
from ...runtime.spec import RerankSpec, read_spec

if TYPE_CHECKING:  # torch loads in run_demo, so that the command line reads its defaults without it
    from ...export.reference import ReferencePipeline

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_QUERIES = 5    # how many of corpus/queries.txt the default run shows: one of each kind
TILE = 150             # contact-sheet thumbnail side, pixels


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


def _tile(doc: Document, caption: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + 34), "white")
    draw = ImageDraw.Draw(tile)
    if doc.image is not None:
        img = Image.open(doc.image) if isinstance(doc.image, (str, Path)) else doc.image
        img = img.convert("RGB")
        img.thumbnail((TILE - 8, TILE - 8 - (24 if doc.text else 0)))
        tile.paste(img, ((TILE - img.width) // 2, 4))
    if doc.text:
        top = 4 if doc.image is None else TILE - 28
        lines = textwrap.wrap(doc.text, 24)[: (10 if doc.image is None else 2)]
        draw.multiline_text((6, top), "\n".join(lines), fill=(40, 40, 40), spacing=2)
    draw.multiline_text((4, TILE + 2), caption, fill=(0, 0, 0), spacing=1)
    return tile


def contact_sheet(query: str, ranked: list[tuple[Document, str]], path: Path) -> Path:
    """One row of thumbnails, best first, each captioned; the query across the top."""
    sheet = Image.new("RGB", (max(1, len(ranked)) * (TILE + 6) + 6, TILE + 34 + 30), (235, 235, 235))
    ImageDraw.Draw(sheet).text((8, 8), f"query: {query}", fill=(0, 0, 0))
    for i, (doc, caption) in enumerate(ranked):
        sheet.paste(_tile(doc, caption), (6 + i * (TILE + 6), 26))
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
            sheet = contact_sheet(query, [(docs[i], cap) for i, cap in row.pop("tiles")],
                                  output / f"contact-{qi + 1}.png")
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
        tiles.append((doc_index, f"#{rank} {_short(docs[doc_index])[:20]}\n{r.score:+.2f}  p={prob:.2f}"))
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
