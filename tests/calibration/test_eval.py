"""``minireranker eval`` end to end on a tiny checkpoint and a tiny set of real photographs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from minireranker.calibration.evaluate import EvalConfig, run_eval  # noqa: E402
from minireranker.calibration.metrics import METRICS, per_query, summarize  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCORE_ATOL = 1e-4        # exact (cached K/V) vs dense (one full forward): fp32 summation order only
FRACTION_ATOL = 1e-6
TRAINED = "dense, trained format"   # the tiny checkpoint is trained query-first (the default): its reference
APPROX = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5, query_position=64)


@pytest.fixture(scope="module")
def embedder(checkpoint_factory):
    return checkpoint_factory("tiny", seed=7)  # same family as the reranker, other weights


@pytest.fixture(scope="module")
def result(tmp_path_factory, tiny_checkpoint, labelled_set, embedder):
    out = tmp_path_factory.mktemp("eval-out")
    spec_file = out / "approx.json"
    APPROX.save(spec_file)
    inline = json.dumps({"exit_layer": 3, "band": [0, 3], "keep_ratio": 0.5, "guide": f"embedder:{embedder}"})
    lines: list[str] = []
    config = EvalConfig(str(tiny_checkpoint), str(labelled_set), embedder=str(embedder),
                        specs=(str(spec_file), inline), out=str(out), progress=False)
    return run_eval(config, log=lines.append), out, "\n".join(lines)


def _system(result, name):
    return next(s for s in result["systems"] if s["name"] == name)


def test_outputs_written(result):
    res, out, printed = result
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk["schema_version"] == 2
    assert (on_disk["reference"], on_disk["trained"], on_disk["reference_system"]) == ("trained", "query-first", TRAINED)
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "eval.md").read_text()
    assert table in printed
    for name in ("first stage", "dense", TRAINED, "exact", "E2 [1,2] keep 0.5 self P64", "E3 [0,3] keep 0.5 embedder"):
        assert f"| {name} |" in table, name
    assert "1 excluded (no relevant candidate)" in table  # the q-none query


def test_exact_equals_dense(result):
    res, _, _ = result
    dense, exact = _system(res, "dense"), _system(res, "exact")
    worst = max(np.max(np.abs(np.subtract(a, b))) for a, b in zip(exact["scores"], dense["scores"]))
    assert worst <= SCORE_ATOL
    assert res["consistency"]["max_abs_exact_minus_dense"] == pytest.approx(worst, abs=1e-12)
    for m in METRICS:  # exact ranks as vision-first dense does, whichever dense system is the reference
        assert exact["fraction_of_dense"][m] == pytest.approx(dense["fraction_of_dense"][m], abs=FRACTION_ATOL)
    assert exact["spec"]["band"] == [0, 3] and exact["spec"]["keep_ratio"] == 1.0


def test_fractions_recomputed_from_scores(result):
    res, _, _ = result
    grades = [np.array(q["grades"]) for q in res["queries"]]
    dense = summarize([np.array(s) for s in _system(res, TRAINED)["scores"]], grades).means  # the reference
    for system in res["systems"]:
        mine = summarize([np.array(s) for s in system["scores"]], grades)
        assert (mine.queries, mine.excluded) == (4, 1)
        for m in METRICS:
            assert system["metrics"][m] == pytest.approx(mine.means[m], abs=1e-12)
            assert system["fraction_of_dense"][m] == pytest.approx(mine.means[m] / dense[m], abs=1e-12)


def test_difference_from_dense_is_paired_over_the_same_queries(result):
    res, out, _ = result
    grades = [np.array(q["grades"]) for q in res["queries"]]
    dense = per_query([np.array(s) for s in _system(res, TRAINED)["scores"]], grades, "ndcg@10")
    assert _system(res, TRAINED)["vs_dense"] is None  # the reference itself
    for system in [s for s in res["systems"] if s["name"] != TRAINED]:  # vision-first dense too
        mine = per_query([np.array(s) for s in system["scores"]], grades, "ndcg@10")
        v = system["vs_dense"]
        assert v["queries"] == 4 and v["delta"] == pytest.approx(float(np.mean(mine - dense)), abs=1e-12)
        assert v["ci95"][0] <= v["delta"] <= v["ci95"][1]
        assert (v["wins"], v["losses"]) == (int(np.sum(mine > dense)), int(np.sum(mine < dense)))
        assert f"| {system['name']} | {v['delta']:+.3f} |" in (out / "eval.md").read_text()


def test_spec_scores_equal_a_fresh_reference(result, tiny_checkpoint, labelled_set):
    """The shared-weights pipeline scores exactly like ReferencePipeline built from the checkpoint."""
    from minireranker.calibration.data import load_labelled_set
    from minireranker.export.reference import ReferencePipeline

    res, _, _ = result
    data = load_labelled_set(labelled_set)
    mine = _system(res, "E2 [1,2] keep 0.5 self P64")["scores"]
    pipeline = ReferencePipeline(tiny_checkpoint, APPROX)
    for q, scores in list(zip(data.queries, mine))[:2]:
        np.testing.assert_allclose(pipeline.rerank(q.query, q.candidates), scores, atol=1e-6, rtol=0)
    assert not np.allclose(mine[0], _system(res, "dense")["scores"][0], atol=1e-3)  # the spec does differ


def test_first_stage_is_the_embedder_cosine(result, embedder, labelled_set):
    from minireranker.calibration.data import load_labelled_set
    from minireranker.calibration.embedder import Embedder

    res, _, _ = result
    scores = _system(res, "first stage")["scores"]
    assert all(-1 - 1e-9 <= s <= 1 + 1e-9 for row in scores for s in row)
    q = load_labelled_set(labelled_set).queries[1]
    e = Embedder(embedder)
    expected = [float(e.embed_text(q.query) @ e.embed_document(d)) for d in q.candidates]
    np.testing.assert_allclose(scores[1], expected, atol=1e-9, rtol=0)


def test_embedder_document_sequence_is_the_guides(embedder, tiny_checkpoint):
    """The embedder that retrieves sees the same document tokens as the embedder that guides pruning."""
    from minireranker.calibration.embedder import Embedder
    from minireranker.export.checkpoint import open_checkpoint
    from minireranker.export.pruning import EmbedderGuide

    guide = EmbedderGuide(str(embedder), open_checkpoint(tiny_checkpoint), None)
    head, doc = Embedder(embedder).image_ids((2, 3), "a caption")
    assert head == guide.system_ids
    assert doc.ids == guide.document((2, 3), "a caption").ids


def test_bad_spec_argument_is_a_clear_error(tiny_checkpoint, labelled_set, tmp_path):
    from minireranker.runtime.errors import SpecError

    for bad, part in (("{not json", "not valid JSON"), (str(tmp_path / "absent.json"), "no such file"),
                      ('{"band": [2, 1]}', "A <= B")):
        with pytest.raises(SpecError, match=part):
            run_eval(EvalConfig(str(tiny_checkpoint), str(labelled_set), specs=(bad,), out=str(tmp_path),
                                progress=False), log=lambda _: None)


def test_bundle_system_matches_the_reference(tmp_path, tiny_checkpoint, tiny_bundle, labelled_set):
    """--bundle of an approximate bundle: one more system, scored by ONNX Runtime like the torch reference."""
    spec = json.dumps({"exit_layer": 3, "band": [1, 2], "keep_ratio": 0.5, "query_position": 64})
    res = run_eval(EvalConfig(str(tiny_checkpoint), str(labelled_set), specs=(spec,), bundle=str(tiny_bundle),
                              out=str(tmp_path), progress=False), log=lambda _: None)
    onnx = next(s for s in res["systems"] if s["kind"] == "bundle")
    torch_ref = next(s for s in res["systems"] if s["kind"] == "spec")
    assert onnx["spec"] == torch_ref["spec"]
    for a, b in zip(onnx["scores"], torch_ref["scores"]):
        np.testing.assert_allclose(a, b, atol=SCORE_ATOL, rtol=0)
    assert _system(res, "exact")["fraction_of_dense"]["ndcg@10"] == pytest.approx(
        _system(res, "dense")["fraction_of_dense"]["ndcg@10"], abs=FRACTION_ATOL)


def test_a_spec_file_with_a_relative_embedder_reads_it_beside_the_file(tmp_path):
    from minireranker.calibration.evaluate import read_spec_arg

    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "ckpt" / "minireranker.json"
    path.write_text('{"keep_ratio": 0.5, "guide": "embedder:../embedder"}')
    spec, given, source = read_spec_arg(str(path))
    assert spec.guide == "embedder:" + str((tmp_path / "embedder").resolve())
    assert given == {"keep_ratio", "guide"} and source == str(path)
