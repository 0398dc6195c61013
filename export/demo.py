"""The interim demo: engines built from a checkpoint, the runtime reranking a corpus, dense torch beside it.

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
    """Build engines for an approximate spec, index the corpus, rerank the queries with the runtime, and
    compare with the dense torch reference (exact spec, every pair from scratch) measured in the same run."""
    from ..runtime.reranker import Reranker
    from .onnx_export import build_bundle

    output.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        from .tiny import write_tiny_checkpoint

        checkpoint = str(write_tiny_checkpoint(output / "tiny-checkpoint", "tiny", seed=0))
        print("NOTE: the built-in checkpoint is a random-weight tiny Qwen3-VL built in code (the real-data demo")
        print("      model arrives later); the scores show the pipeline's mechanics, not relevance.\n")
    docs = expand_document_args(images) if images else demo_corpus()
    queries = queries or DEFAULT_QUERIES
    dense = ReferencePipeline(checkpoint, RerankSpec.exact())
    layers = dense.ckpt.config.text.num_layers
    a = max(1, layers // 4)
    spec = RerankSpec(exit_layer=min(layers - 1, a + 1), band=(a, a), keep_ratio=0.5, query_position=256)
    print(f"building engines: exit layer {spec.exit_layer}, band [{a}, {a}], keep 0.5 (of {layers} layers)")
    bundle = build_bundle(checkpoint, output / "bundle", spec, log=lambda m: None)
    report: dict = {"checkpoint": str(checkpoint), "bundle": str(bundle.path), "spec": bundle.data["spec"],
                    "queries": {}}
    with Reranker(bundle, output / "cache") as runtime:
        t0 = time.perf_counter()
        indexed = runtime.index(docs, progress=True)
        t_index = time.perf_counter() - t0
        print(f"indexed {indexed.indexed} documents ({indexed.skipped} already cached) in {t_index:.2f} s")
        t_dense = t_mini = 0.0
        for q in queries:
            t0 = time.perf_counter()
            exact = dense.rerank(q, docs)  # dense: every pair from scratch, no cache, every layer
            t_dense += time.perf_counter() - t0
            t0 = time.perf_counter()
            out = runtime.rerank(q, docs)
            t_mini += time.perf_counter() - t0
            mini = np.array([r.score for r in sorted(out.results, key=lambda r: r.index)])
            stages = "  ".join(f"{k} {1e3 * v:.1f}" for k, v in out.timings.items() if v > 0)
            print(f"\nquery: {q!r}   (rank agreement with dense: Spearman {_spearman(exact, mini):+.2f})")
            print(f"  stages (ms): {stages}")
            for rank, r in enumerate(out.results[:5], 1):
                print(f"  {rank}. {r.document:<16} score {r.score:+.4f}   dense {exact[r.index]:+.4f}")
            report["queries"][q] = {"ranking": [r.document for r in out.results], "timings": out.timings}
    report["dense_s_per_query"] = t_dense / len(queries)
    report["minireranker_s_per_query"] = t_mini / len(queries)
    print(f"\nper query over {len(docs)} candidates: dense torch {1e3 * report['dense_s_per_query']:.1f} ms, "
          f"miniReranker {1e3 * report['minireranker_s_per_query']:.1f} ms "
          f"({report['dense_s_per_query'] / report['minireranker_s_per_query']:.1f}x faster, same run)")
    return report
