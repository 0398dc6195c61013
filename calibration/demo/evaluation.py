"""The demo models on the labelled sets (dense reranker and the reported specs through ReferencePipeline,
the embedder as first stage), with ``minireranker eval``'s metrics: what the model cards report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics import summarize
from ...runtime.documents import Document
from ...runtime.spec import RerankSpec
from .embedder_stage import DemoEmbedder
from .train_config import TrainConfig


def load_labelled(path: Path) -> list[dict]:
    """The rows of a labelled JSONL file, each candidate with a ``document`` (image paths resolved)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        for c in row["candidates"]:
            image = path.parent / c["image"] if c["image"] else None
            c["document"] = Document(image=image, text=c["text"], id=c["id"])
    return rows


def evaluate_reranker(checkpoint: Path, labelled: Path, spec: RerankSpec | None = None) -> dict[str, float]:
    """The reranker's metrics on a labelled set; each document is indexed once, as the runtime would."""
    from ...export.reference import ReferencePipeline

    pipeline = ReferencePipeline(checkpoint, spec or RerankSpec.exact())
    entries: dict = {}
    rows, scores = load_labelled(labelled), []
    for row in rows:
        for c in row["candidates"]:
            if c["id"] not in entries:
                entries[c["id"]] = pipeline.index(c["document"])
        scores.append(pipeline.score(row["query"], [entries[c["id"]] for c in row["candidates"]]))
    return _summary(rows, scores)


def evaluate_embedder(checkpoint: Path, labelled: Path) -> dict[str, float]:
    """The embedder as first stage: candidates ranked by cosine similarity to the query."""
    embedder = DemoEmbedder(checkpoint)
    rows = load_labelled(labelled)
    unique = {c["id"]: c["document"] for row in rows for c in row["candidates"]}
    ids = list(unique)
    docs = dict(zip(ids, embedder.embed_documents([unique[i] for i in ids])))
    queries = embedder.embed_queries([row["query"] for row in rows])
    scores = [np.array([docs[c["id"]] @ q for c in row["candidates"]]) for row, q in zip(rows, queries)]
    return _summary(rows, scores)


def _summary(rows: list[dict], scores: list[np.ndarray]) -> dict[str, float]:
    """``minireranker eval``'s metrics (calibration.metrics: Hit@1, MRR, nDCG@5/10, relevant = grade > 0)."""
    grades = [np.array([c["relevance"] for c in row["candidates"]]) for row in rows]
    return summarize(scores, grades).to_dict()


def reported_specs(embedder: Path, query_position: int) -> dict[str, RerankSpec]:
    """The approximate specs whose metrics go into the model card (8-layer reranker)."""
    guide = f"embedder:{embedder}"
    return {
        "E3 band[1,2] keep0.5 embedder-guided": RerankSpec(3, (1, 2), 0.5, guide, query_position=query_position),
        "E3 band[1,1] keep0.5 self-guided": RerankSpec(3, (1, 1), 0.5, "self", query_position=query_position),
        "E4 band[2,3] keep0.5 embedder-guided": RerankSpec(4, (2, 3), 0.5, guide, query_position=query_position),
    }


def evaluate_all(out_dir: Path, cfg: TrainConfig) -> dict:
    """Embedder, dense reranker and the reported specs on the held-out and calibration sets."""
    results: dict = {}
    for split in ("heldout", "calib"):
        labelled = out_dir / "eval" / f"{split}.jsonl"
        results[split] = {"embedder (first stage)": evaluate_embedder(out_dir / "embedder", labelled),
                          "reranker dense (exact spec)": evaluate_reranker(out_dir / "reranker", labelled)}
        for name, spec in reported_specs(out_dir / "embedder", cfg.query_position).items():
            results[split][name] = evaluate_reranker(out_dir / "reranker", labelled, spec)
    return results
