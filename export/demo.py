"""The interim demo: the reference pipeline on a built-in checkpoint, exact and approximate side by side.

Until the bundled real-data demo model exists, the built-in checkpoint is a random-weight tiny Qwen3-VL
built in code: its scores show the machinery (caching, early exit, band, pruning) and their agreement
with the exact spec, not relevance. The demo says so in its output.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..runtime.documents import Document, expand_document_args
from ..runtime.spec import RerankSpec
from .reference import ReferencePipeline

DEFAULT_QUERIES = ["a red circle", "a blue square on white", "two green stripes"]


def demo_corpus() -> list[Document]:
    """Eight drawn images (shapes and colours, odd sizes) and two texts."""
    docs = []
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "black": (10, 10, 10)}
    for i, (name, rgb) in enumerate(colours.items()):
        for shape in ("circle", "square"):
            w, h = 64 + 16 * i, 48 + 8 * i
            img = Image.new("RGB", (w, h), "white")
            draw = ImageDraw.Draw(img)
            box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            docs.append(Document(image=img, id=f"{name}-{shape}"))
    docs.append(Document(text="Two green stripes on a white flag.", id="text-flag"))
    docs.append(Document(text="A recipe for tomato soup.", id="text-soup"))
    return docs


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run_demo(output: Path, checkpoint: str | None = None, images: list[str] | None = None,
             queries: list[str] | None = None) -> dict:
    """Index the corpus under the exact and an approximate spec, rerank the queries, print and return."""
    output.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        from .tiny import write_tiny_checkpoint

        checkpoint = str(write_tiny_checkpoint(output / "tiny-checkpoint", "tiny", seed=0))
        print("NOTE: the built-in checkpoint is a random-weight tiny Qwen3-VL built in code (the real-data demo")
        print("      model arrives later); the scores show the pipeline's mechanics, not relevance.\n")
    docs = expand_document_args(images) if images else demo_corpus()
    queries = queries or DEFAULT_QUERIES
    exact = ReferencePipeline(checkpoint, RerankSpec.exact())
    layers = exact.ckpt.config.text.num_layers
    a = max(1, layers // 4)
    approx_spec = RerankSpec(exit_layer=min(layers - 1, a + 1), band=(a, a), keep_ratio=0.5, query_position=256)
    approx = ReferencePipeline(exact.ckpt, approx_spec)
    report: dict = {"checkpoint": str(checkpoint), "specs": {}, "queries": {}}
    for name, pipe in (("exact", exact), ("approx", approx)):
        t0 = time.perf_counter()
        entries = [pipe.index(d) for d in docs]
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = {q: pipe.score(q, entries) for q in queries}
        t_query = (time.perf_counter() - t0) / len(queries)
        kv = sum(e.k.numel() + e.v.numel() for e in entries) * 4
        report["specs"][name] = {"spec": pipe.spec.to_dict(), "index_s_per_doc": t_index / len(docs),
                                 "rerank_s_per_query": t_query, "kv_bytes": kv, "scores": scores}
        print(f"[{name}] E={pipe.spec.exit_layer} band={list(pipe.spec.band)} keep={pipe.spec.keep_ratio}: "
              f"index {1e3 * t_index / len(docs):.1f} ms/doc, rerank {1e3 * t_query:.1f} ms/query "
              f"over {len(docs)} candidates, K/V kept {kv / 1e3:.0f} kB")
    for q in queries:
        ex, ap = report["specs"]["exact"]["scores"][q], report["specs"]["approx"]["scores"][q]
        print(f"\nquery: {q!r}   (rank agreement exact vs approx: Spearman {_spearman(ex, ap):+.2f})")
        for rank, i in enumerate(np.argsort(-ex, kind="stable")[:5], 1):
            print(f"  {rank}. {docs[i].label:<16} exact {ex[i]:+.4f}   approx {ap[i]:+.4f}")
        report["queries"][q] = [docs[i].label for i in np.argsort(-ex, kind="stable")]
    return report
