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
from .demo.run import ASSETS, load_corpus

DEFAULT_QUERIES = ["a handwritten seven", "which document mentions a cat?"]
DEFAULT_TOLERANCE = 1e-4
SAMPLE_IDS = ["heldout-photo-chelsea", "heldout-photo-rocket", "heldout-photo-coffee"]


def sample_documents() -> list[Document]:
    """Ten real documents from the bundled demo corpus: photographs, digits, digit composites, an image
    followed by a text, and a text (images of several sizes and token counts)."""
    corpus = load_corpus(ASSETS / "corpus" / "corpus.jsonl")
    by_id = {d.id: d for d in corpus}
    photos = [by_id[i] for i in SAMPLE_IDS]
    digits = [d for d in corpus if d.id.startswith("heldout-d")][:3]
    composites = [d for d in corpus if d.id.startswith("heldout-c")][:2]
    texts = [d for d in corpus if d.image is None][:1]
    captioned = Document(image=photos[0].image, text="A cat looks at the camera.", id="chelsea+caption")
    return photos + digits + composites + [captioned] + texts


def verify_checkpoint(checkpoint: str | Path, spec: RerankSpec | None = None,
                      documents: list[Document] | None = None, queries: list[str] | None = None,
                      tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Max |reference - transformers| per spec; ``ok`` when every one is within ``tolerance``."""
    # torch and transformers load here, not at import: the command line reads DEFAULT_TOLERANCE without them
    from ..export.oracle import TransformersOracle
    from ..export.reference import ReferencePipeline

    documents = documents or sample_documents()
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
