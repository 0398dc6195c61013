"""``minireranker quantize`` (calibration/qdq.py): Q/DQ band and tail graphs calibrated on a JSONL set, in a
new bundle that loads, shares the float bundle's K/V entries, and scores close to it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run_cli
from minireranker.calibration.qdq import QDQConfig, QuantizeError, quantize_bundle
from minireranker.engines.trt_onnx_ops import op_census, unsupported_ops
from minireranker.runtime.bundle import load_bundle
from minireranker.runtime.reranker import Reranker
from minireranker.calibration.data import load_labelled_set

QUERIES = ["which picture shows a person?", "a cat", "a cup of coffee", "a rocket on its pad", "grey photo"]
# Symmetric per-tensor int8 activations on the tiny model's random weights: about 1% of each activation's
# range per projection, carried through 3 layers to a logit difference of O(1-10) (the int8 end-to-end
# tolerance of export/onnx_export.py, 0.5, bounds the same arithmetic for dynamic int8).
SCORE_TOLERANCE = 0.5


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("qdq-data")
    names = sorted(images)
    for name in names:
        images[name].convert("RGB").save(folder / f"{name}.png")
    with open(folder / "set.jsonl", "w") as f:
        for i, query in enumerate(QUERIES):
            cands = [{"id": names[(i + j) % len(names)], "image": f"{names[(i + j) % len(names)]}.png"}
                     for j in range(3)] + [{"id": f"t{i}", "text": f"a text about {query}"}]
            f.write(json.dumps({"qid": f"q{i}", "query": query, "candidates": cands}) + "\n")
    return folder / "set.jsonl"


@pytest.fixture(scope="module")
def qdq_bundle(tiny_bundle, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq") / "bundle"
    quantize_bundle(QDQConfig(str(tiny_bundle), str(data_file), str(out), queries=3, check_queries=2),
                    log=lambda _: None)
    return out


def test_the_qdq_bundle_loads_and_shares_the_float_entries(tiny_bundle, qdq_bundle):
    src, qdq = load_bundle(tiny_bundle), load_bundle(qdq_bundle)  # the integrity checks pass
    assert qdq.data["weights"] == "int8-qdq" and qdq.data["quantization"]["calibration_queries"] == 3
    assert qdq.namespace == src.namespace  # only per-query graphs changed: the K/V entries are the same
    for name, g in src.graphs.items():
        same = src.data["sha256"][g["file"]] == qdq.data["sha256"][g["file"]]
        assert same == (name not in ("band", "tail")), name
    for name in ("band", "tail"):
        census = op_census(__import__("onnx").load(str(qdq.graph_path(qdq.graphs[name]))))
        assert census["QuantizeLinear"] > 0 and census["DequantizeLinear"] > 0
        assert qdq.data["quantization"]["graphs"][name] == census["QuantizeLinear"]
        assert not unsupported_ops(qdq.graph_path(qdq.graphs[name]), "10.3")  # Q/DQ parse on JetPack 6's TensorRT
    check = qdq.data["validation"]["end_to_end"]["scores"]
    assert check["queries"] == 2 and 0 < check["max_abs_diff_vs_float"] <= SCORE_TOLERANCE


def test_qdq_scores_stay_close_to_float(tiny_bundle, qdq_bundle, data_file, tmp_path):
    data = load_labelled_set(data_file, require_labels=False)
    with Reranker(tiny_bundle, tmp_path / "a") as f, Reranker(qdq_bundle, tmp_path / "b") as q:
        for query in data.queries:
            want = {r.index: r.score for r in f.rerank(query.query, query.candidates).results}
            got = {r.index: r.score for r in q.rerank(query.query, query.candidates).results}
            np.testing.assert_allclose([got[i] for i in sorted(want)], [want[i] for i in sorted(want)],
                                       atol=SCORE_TOLERANCE)


def test_bad_requests_are_refused(bundle_factory, tiny_bundle, data_file, qdq_bundle, tmp_path):
    with pytest.raises(QuantizeError, match="--method must be one of"):
        QDQConfig(str(tiny_bundle), str(data_file), str(tmp_path / "x"), method="kl")
    with pytest.raises(QuantizeError, match="quantize an fp32 bundle with float weights"):
        quantize_bundle(QDQConfig(str(qdq_bundle), str(data_file), str(tmp_path / "x")), log=lambda _: None)
    out = run_cli("quantize", str(tiny_bundle), "--data", str(data_file), "-o", str(qdq_bundle))
    assert out.returncode == 2 and "exists; choose another -o" in out.stderr and "Traceback" not in out.stderr
