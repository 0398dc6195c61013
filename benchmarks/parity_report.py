"""Parity of the runtime (ONNX Runtime + K/V store) with the torch reference, per tiny preset and precision.

    python benchmarks/parity_report.py --out bench-out/parity [--presets NAME ...]

Builds a bundle for every tiny preset x {exact, approximate} x {fp32, fp16} (+ int8 K/V on fp32), scores
real photographs and texts with both, and writes results.json and results.md (max |score difference|,
kept-token agreement, K/V bytes per document). Each (preset, spec) also has the torch reference against
transformers' own model (the oracle, export/oracle.py: the masked model for the approximate spec, given
the reference's kept tokens) on the same pairs; each preset names its architecture, format and head.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from minireranker.export.onnx_export import BuildConfig, build_bundle
from minireranker.export.validation import compare_runtime
from minireranker.export.reference import ReferencePipeline
from minireranker.export.tiny import PRESETS, write_tiny_checkpoint
from minireranker.runtime.documents import Document
from minireranker.runtime.reranker import Reranker
from minireranker.runtime.spec import RerankSpec

QUERIES = ["a rocket on the launch pad", "is there a cat?", "7"]


def documents() -> list[Document]:
    from skimage import data

    photos = {"rocket": data.rocket(), "cat": data.chelsea(), "coffee": data.coffee(), "camera": data.camera(),
              "astronaut": data.astronaut()}
    sizes = [(128, 128), (128, 100), (33, 100), (90, 120), (70, 45)]
    docs = [Document(image=Image.fromarray(img).resize(size), id=name) for (name, img), size in zip(photos.items(), sizes)]
    docs.append(Document(image=Image.fromarray(data.coffee()).resize((64, 64)), text="a cup of coffee", id="coffee+text"))
    docs += [Document(text="A rocket on the launch pad.", id="t1"), Document(text="seven", id="t2")]
    return docs


def specs(num_layers: int) -> dict[str, RerankSpec]:
    last = num_layers - 1
    return {"exact": RerankSpec.exact(),
            "approx": RerankSpec(exit_layer=last, band=(1, min(2, last)) if last >= 1 else (0, 0), keep_ratio=0.5,
                                 query_position=64)}


def oracle_diff(reference: ReferencePipeline, ckpt: Path, docs: list[Document]) -> float:
    """max |reference - transformers| over the pairs (the oracle gets the reference's kept tokens)."""
    from minireranker.export.oracle import TransformersOracle

    oracle = TransformersOracle(ckpt, reference.spec)
    entries = [reference.index(d) for d in docs]
    worst = 0.0
    for query in QUERIES:
        ours = reference.score(query, entries)
        theirs = [oracle.score(query, d, e.kept_visual) for d, e in zip(docs, entries)]
        worst = max(worst, float(np.max(np.abs(ours - np.asarray(theirs)))))
    return worst


def run(out: Path, presets: list[str] | None = None) -> list[dict]:
    rows = []
    docs = documents()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset in presets or sorted(PRESETS):
            ckpt = write_tiny_checkpoint(tmp / preset, preset)
            layers = ReferencePipeline(ckpt).ckpt.config.text.num_layers
            for spec_name, spec in specs(layers).items():
                reference = ReferencePipeline(ckpt, spec)
                vs_hf = oracle_diff(reference, ckpt, docs)
                form = {"architecture": reference.ckpt.config.model_type, "format": reference.spec.template,
                        "head": reference.spec.head.kind, "vs_transformers": vs_hf}
                for precision, int8 in (("fp32", False), ("fp32", True), ("fp16", False)):
                    path = tmp / f"{preset}-{spec_name}-{precision}"
                    if not path.exists():
                        build_bundle(ckpt, path, spec, BuildConfig(precision=precision), log=lambda m: None)
                    with Reranker(path, tmp / f"cache-{path.name}-{int8}", int8_cache=int8) as runtime:
                        report = compare_runtime(reference, runtime, docs, QUERIES)
                        sizes = [runtime.store.get(runtime.key(d)).nbytes for d in docs]
                    rows.append({"preset": preset, **form, "spec": spec_name,
                                 "precision": precision + ("+int8 K/V" if int8 else ""),
                                 **report, "kv_bytes_per_doc_mean": float(np.mean(sizes)),
                                 "kv_bytes_per_doc_max": int(max(sizes))})
                    print(rows[-1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = ["| preset | architecture, format, head | spec | reference vs transformers (fp32) | precision | "
             "max abs score diff (runtime vs reference) | kept identical | K/V bytes/doc (mean, max) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = "-" if r["kept_identical"] is None else f"{r['kept_identical']:.2f}"
        lines.append(f"| {r['preset']} | {r['architecture']}, {r['format']}, {r['head']} | {r['spec']} | "
                     f"{r['vs_transformers']:.2e} | {r['precision']} | {r['max_abs_diff']:.2e} | {kept} | "
                     f"{r['kv_bytes_per_doc_mean']:,.0f}, {r['kv_bytes_per_doc_max']:,} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/parity", help="output folder for results.json / results.md")
    parser.add_argument("--presets", nargs="*", default=None, help="tiny presets to run (default: all)")
    args = parser.parse_args()
    run(Path(args.out), args.presets)


if __name__ == "__main__":
    main()
