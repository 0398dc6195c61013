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


def evaluate_reranker(checkpoint: Path, labelled: Path, spec: RerankSpec | None = None,
                      trained_order: bool = False, loaded=None) -> dict:
    """The reranker's metrics on a labelled set (each document indexed once, as the runtime would), overall
    and per query kind; ``trained_order``: dense in the order the checkpoint was trained in instead
    (:func:`~minireranker.calibration.scoring.trained_dense_scores`). ``loaded`` shares one checkpoint's
    weights between calls (a :class:`~minireranker.calibration.scoring.LoadedReranker`)."""
    from ..scoring import LoadedReranker, trained_dense_scores

    loaded = loaded or LoadedReranker(checkpoint)
    rows, scores = load_labelled(labelled), []
    if trained_order:
        teacher = loaded.pipeline(loaded.exact_spec())
        for row in rows:
            scores.append(trained_dense_scores(teacher, row["query"], [c["document"] for c in row["candidates"]]))
        return _summary(rows, scores)
    pipeline = loaded.pipeline(loaded.with_template(spec or RerankSpec.exact()).resolve(loaded.num_layers))
    entries: dict = {}
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


def _summary(rows: list[dict], scores: list[np.ndarray]) -> dict:
    """``minireranker eval``'s metrics (calibration.metrics: Hit@1, MRR, nDCG@5/10, relevant = grade > 0), and
    under ``by_kind`` the same per query kind (``meta.kind`` of the labelled rows) when the rows carry one."""
    grades = [np.array([c["relevance"] for c in row["candidates"]]) for row in rows]
    out = summarize(scores, grades).to_dict()
    kinds = [(row.get("meta") or {}).get("kind") for row in rows]
    if any(kinds):
        out["by_kind"] = {kind: summarize([s for s, k in zip(scores, kinds) if k == kind],
                                          [g for g, k in zip(grades, kinds) if k == kind]).to_dict()
                          for kind in dict.fromkeys(k for k in kinds if k)}
    return out


def reported_specs(embedder: Path, query_position: int) -> dict[str, RerankSpec]:
    """The approximate specs whose metrics go into the model card (8-layer reranker)."""
    guide = f"embedder:{embedder}"
    return {
        "E3 band[1,2] keep0.5 embedder-guided": RerankSpec(3, (1, 2), 0.5, guide, query_position=query_position),
        "E3 band[1,1] keep0.5 self-guided": RerankSpec(3, (1, 1), 0.5, "self", query_position=query_position),
        "E4 band[2,3] keep0.5 embedder-guided": RerankSpec(4, (2, 3), 0.5, guide, query_position=query_position),
    }


DENSE_ROW = "reranker dense (exact spec)"
TRAINED_ROW = "reranker dense, trained order (query-first)"


def evaluate_all(out_dir: Path, cfg: TrainConfig, reranker: str = "reranker") -> dict:
    """Embedder, dense reranker (and, for a query-first reranker, dense in its trained order) and the reported
    specs on the held-out and calibration sets."""
    from ..scoring import LoadedReranker

    loaded = LoadedReranker(out_dir / reranker)
    results: dict = {}
    for split in ("heldout", "calib"):
        labelled = out_dir / "eval" / f"{split}.jsonl"
        results[split] = {"embedder (first stage)": evaluate_embedder(out_dir / "embedder", labelled)}
        if cfg.order == "query-first":
            results[split][TRAINED_ROW] = evaluate_reranker(out_dir / reranker, labelled, trained_order=True,
                                                            loaded=loaded)
        results[split][DENSE_ROW] = evaluate_reranker(out_dir / reranker, labelled, loaded=loaded)
        for name, spec in reported_specs(out_dir / "embedder", cfg.query_position).items():
            results[split][name] = evaluate_reranker(out_dir / reranker, labelled, spec, loaded=loaded)
    return results
