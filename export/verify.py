"""``minireranker verify``: check the torch reference against transformers on *your* checkpoint.

Runs the exact spec (and the given approximate spec, if any) over sample documents and queries through
both the reference pipeline and the transformers oracle (:mod:`minireranker.export.oracle`) and reports
the largest absolute score difference. The tests do the same on tiny checkpoints; this lets a user
check a real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.documents import Document
from ..runtime.spec import RerankSpec
from .demo import demo_corpus
from .oracle import TransformersOracle
from .reference import ReferencePipeline

DEFAULT_QUERIES = ["a red circle", "which document mentions green stripes on a flag?"]
DEFAULT_TOLERANCE = 1e-4


def verify_checkpoint(checkpoint: str | Path, spec: RerankSpec | None = None,
                      documents: list[Document] | None = None, queries: list[str] | None = None,
                      tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Max |reference - transformers| per spec; ``ok`` when every one is within ``tolerance``."""
    documents = documents or demo_corpus()
    queries = queries or DEFAULT_QUERIES
    specs = {"exact": RerankSpec.exact()}
    if spec is not None:
        specs["spec"] = spec
    report: dict = {"checkpoint": str(checkpoint), "tolerance": tolerance, "pairs": len(documents) * len(queries)}
    for name, s in specs.items():
        pipeline = ReferencePipeline(checkpoint, s)
        oracle = TransformersOracle(checkpoint, s)
        entries = [pipeline.index(d) for d in documents]
        worst = 0.0
        for q in queries:
            ours = pipeline.score(q, entries)
            theirs = np.array([oracle.score(q, d, e.kept_visual) for d, e in zip(documents, entries)])
            worst = max(worst, float(np.abs(ours - theirs).max()))
        report[name] = {"spec": pipeline.spec.to_dict(), "max_abs_diff": worst, "ok": worst <= tolerance}
    report["ok"] = all(report[n]["ok"] for n in specs)
    return report
