"""The commands on each new architecture and head: eval, calibrate, serve, and the CLI's index/rerank/verify.

The parity itself is tested per preset elsewhere (tests/export: modeling, reference exact/approx, score
heads; tests/runtime: bundles). Here each command runs on ``qwen2_5_vl_tiny`` (window attention, biases)
and ``jina_m0_tiny`` (JinaVLForRanking: its format, no system segment, the classifier head), and a result
that carries a score is checked against the torch reference (fp32, 1e-4).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from cli_helpers import run_cli

pytest.importorskip("torch")

from minireranker.calibration.calibrate import CalibrationConfig, run_calibration  # noqa: E402
from minireranker.calibration.evaluate import EvalConfig, run_eval  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESETS = ("qwen2_5_vl_tiny", "jina_m0_tiny")
TOLERANCE = 1e-4
APPROX = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5, query_position=64)


@pytest.mark.parametrize("preset", PRESETS)
def test_eval_exact_equals_dense(preset, checkpoint_factory, labelled_set, tmp_path):
    spec_file = tmp_path / "approx.json"
    APPROX.save(spec_file)
    config = EvalConfig(str(checkpoint_factory(preset)), str(labelled_set), specs=(str(spec_file),),
                        out=str(tmp_path / "out"), progress=False)
    result = run_eval(config, log=lambda _: None)
    systems = {s["name"]: s for s in result["systems"]}
    worst = max(np.max(np.abs(np.subtract(a, b))) for a, b in zip(systems["exact"]["scores"],
                                                                    systems["dense"]["scores"]))
    assert worst <= TOLERANCE
    assert "| E2 [1,2] keep 0.5 self P64 |" in (tmp_path / "out" / "eval.md").read_text()


@pytest.mark.parametrize("preset", PRESETS)
def test_calibrate_writes_a_spec_that_loads(preset, checkpoint_factory, labelled_set, tmp_path):
    # jina_m0_tiny has 3 layers, qwen2_5_vl_tiny 4: a grid that fits both
    config = dataclasses.replace(CalibrationConfig.tiny(str(checkpoint_factory(preset)), str(labelled_set),
                                                        str(tmp_path)), target=0.5, exit_layers=(1, 2),
                                 bands=((0, 2), (1, 1), (1, 2)))
    run_calibration(config, log=lambda _: None)
    spec = RerankSpec.from_file(tmp_path / "minireranker.json")
    resolved = ReferencePipeline(checkpoint_factory(preset), spec).spec
    if preset == "jina_m0_tiny":  # the checkpoint's own format and head survive the calibrated spec
        assert resolved.template == "jina-reranker-m0" and resolved.head.kind == "classifier"


@pytest.fixture(scope="module")
def jina_bundle(bundle_factory):
    return bundle_factory("jina_m0_tiny", APPROX)


def test_cli_index_rerank_verify(jina_bundle, checkpoint_factory, images, tmp_path):
    photo = tmp_path / "cat.png"
    images["chelsea_128x100"].save(photo)
    cache = tmp_path / "cache"
    assert run_cli("index", str(jina_bundle), "--cache", str(cache), str(photo)).returncode == 0
    done = run_cli("rerank", str(jina_bundle), "--cache", str(cache), "--query", "a cat", "--json",
                   str(photo), "text:a cup of coffee")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    docs = [Document(image=str(photo)), Document(text="a cup of coffee")]
    reference = ReferencePipeline(checkpoint_factory("jina_m0_tiny"), APPROX)
    assert len(results) == 2
    for r in results:
        expected = float(reference.rerank("a cat", [docs[r["index"]]])[0])
        assert abs(r["score"] - expected) <= TOLERANCE
        assert r["probability"] == pytest.approx(1 / (1 + math.exp(-(r["score"] - 2.65))), abs=1e-9)
    verify = run_cli("verify", str(checkpoint_factory("jina_m0_tiny")))
    assert verify.returncode == 0, verify.stderr


def test_serve_scores_with_the_classifier_head(jina_bundle, checkpoint_factory, tmp_path):
    from serve_helpers import start_server, wait_ready

    live = start_server(jina_bundle, tmp_path / "cache")
    try:
        wait_ready(live)
        status, body = live.call("POST", "/v1/rerank", {"query": "a cat", "documents": ["a cat on a mat", "seven"]})
    finally:
        live.server.shutdown()
    assert status == 200, body
    reference = ReferencePipeline(checkpoint_factory("jina_m0_tiny"), APPROX)
    expected = reference.rerank("a cat", [Document(text="a cat on a mat"), Document(text="seven")])
    for item in body["results"]:
        assert abs(item["score"] - expected[item["index"]]) <= TOLERANCE
        assert item["relevance_score"] == pytest.approx(1 / (1 + math.exp(-(item["score"] - 2.65))), abs=1e-9)
