"""Which dense system eval's fractions and calibrate's fidelity are of: ``--reference trained|vision-first``.

The tiny checkpoint has no ``trained`` in its spec, so it is trained query-first (Qwen3-VL-Reranker's order)
and runs vision-first: eval reports both dense systems. A copy whose minireranker.json says
``"trained": "vision-first"`` was trained as it runs, and has one dense system.

Tolerances (fp32): the same computation in another process or on a fresh load, 1e-6 on scores; ratios of
the same means, 1e-9.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_helpers import run_cli

pytest.importorskip("torch")

from minireranker.calibration.calibrate import CalibrationConfig, run_calibration  # noqa: E402
from minireranker.calibration.errors import CalibrationError  # noqa: E402
from minireranker.calibration.evaluate import EvalConfig, run_eval  # noqa: E402
from minireranker.calibration.metrics import METRICS, summarize  # noqa: E402
from minireranker.runtime.errors import SpecError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCORE_ATOL = 1e-6
RATIO_ATOL = 1e-9
TRAINED = "dense, trained format"
GRID = ("--exit-layers", "2,3", "--bands", "0:3,1:1,1:2", "--keep-ratios", "0.5,1")


def _system(result: dict, name: str) -> dict:
    return next(s for s in result["systems"] if s["name"] == name)


@pytest.fixture(scope="module")
def both(tmp_path_factory, tiny_checkpoint, labelled_set):
    """The same set evaluated against each reference: in process with the default, by the CLI with the other."""
    out = tmp_path_factory.mktemp("eval-reference")
    trained = run_eval(EvalConfig(str(tiny_checkpoint), str(labelled_set), out=str(out / "trained"),
                                  progress=False), log=lambda _: None)
    proc = run_cli("eval", tiny_checkpoint, "--data", labelled_set, "--reference", "vision-first",
                   "--out", out / "vision-first", "--quiet")
    assert proc.returncode == 0, proc.stderr
    vision_first = json.loads((out / "vision-first" / "eval.json").read_text())
    return trained, vision_first, out


def test_eval_reports_both_dense_systems_and_they_differ(both):
    trained, vision_first, _ = both
    for res in (trained, vision_first):
        assert [s["kind"] for s in res["systems"]] == ["dense", "dense_trained", "exact"]
        assert res["trained"] == "query-first"
    a, b = _system(trained, "dense")["scores"], _system(trained, TRAINED)["scores"]
    assert max(np.max(np.abs(np.subtract(x, y))) for x, y in zip(a, b)) > 1e-3  # the order change is visible
    for name in ("dense", TRAINED):  # each reference changes the fractions, not the scores
        for x, y in zip(_system(trained, name)["scores"], _system(vision_first, name)["scores"]):
            np.testing.assert_allclose(x, y, atol=SCORE_ATOL, rtol=0)


def test_trained_format_scores_are_trained_dense_scores(both, tiny_checkpoint, labelled_set):
    """The row is trained_dense_scores (test_trained_format.py checks those against transformers)."""
    from minireranker.calibration.data import load_labelled_set
    from minireranker.calibration.scoring import LoadedReranker, trained_dense_scores

    trained, _, _ = both
    loaded = LoadedReranker(tiny_checkpoint)
    pipeline = loaded.pipeline(loaded.exact_spec())
    for q, row in list(zip(load_labelled_set(labelled_set).queries, _system(trained, TRAINED)["scores"]))[:2]:
        np.testing.assert_allclose(trained_dense_scores(pipeline, q.query, q.candidates), row, atol=SCORE_ATOL, rtol=0)


def test_fractions_and_differences_follow_the_reference(both):
    trained, vision_first, out = both
    assert (trained["reference"], trained["reference_system"]) == ("trained", TRAINED)
    assert (vision_first["reference"], vision_first["reference_system"]) == ("vision-first", "dense")
    grades = [np.array(q["grades"]) for q in trained["queries"]]
    for res in (trained, vision_first):
        ref = summarize([np.array(s) for s in _system(res, res["reference_system"])["scores"]], grades).means
        assert _system(res, res["reference_system"])["vs_dense"] is None
        for s in res["systems"]:
            for m in METRICS:
                assert s["fraction_of_dense"][m] == pytest.approx(s["metrics"][m] / ref[m], abs=RATIO_ATOL)
    # the two dense systems rank this set differently, so the fractions differ, reciprocally
    assert _system(trained, "dense")["fraction_of_dense"] != _system(vision_first, "dense")["fraction_of_dense"]
    for m in METRICS:
        assert _system(vision_first, "dense")["fraction_of_dense"][m] == pytest.approx(1.0, abs=RATIO_ATOL)
        assert _system(trained, "dense")["fraction_of_dense"][m] * \
            _system(vision_first, TRAINED)["fraction_of_dense"][m] == pytest.approx(1.0, abs=RATIO_ATOL)
    # the consistency check is exact against vision-first dense under either reference
    for res in (trained, vision_first):
        exact, dense = _system(res, "exact")["scores"], _system(res, "dense")["scores"]
        worst = max(np.max(np.abs(np.subtract(a, b))) for a, b in zip(exact, dense))
        assert res["consistency"]["max_abs_exact_minus_dense"] == pytest.approx(worst, abs=1e-12) and worst <= 1e-4
    assert "Fraction of the reference, `dense, trained format`" in (out / "trained" / "eval.md").read_text()
    assert "Fraction of the reference, `dense`" in (out / "vision-first" / "eval.md").read_text()


def test_a_checkpoint_trained_as_it_runs_has_one_dense_system(tmp_path, tiny_checkpoint, labelled_set, both):
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "minireranker.json").write_text(json.dumps({"trained": "vision-first"}), encoding="utf-8")
    res = run_eval(EvalConfig(str(ckpt), str(labelled_set), out=str(tmp_path / "out"), progress=False),
                   log=lambda _: None)
    assert [s["kind"] for s in res["systems"]] == ["dense", "exact"]
    assert (res["reference"], res["trained"], res["reference_system"]) == ("trained", "vision-first", "dense")
    assert all(v == pytest.approx(1.0, abs=RATIO_ATOL) for v in _system(res, "dense")["fraction_of_dense"].values())
    assert "trained in the order it runs (vision-first)" in (tmp_path / "out" / "eval.md").read_text()
    for x, y in zip(_system(res, "dense")["scores"], _system(both[0], "dense")["scores"]):  # the same weights
        np.testing.assert_allclose(x, y, atol=SCORE_ATOL, rtol=0)


def test_calibrate_meets_the_target_against_the_chosen_reference(tmp_path, tiny_checkpoint, labelled_set):
    """--reference vision-first: the chosen spec keeps the target of vision-first dense, recomputed here with a
    fresh ReferencePipeline; the exact spec is then 1 and the trained format is the format change."""
    from minireranker.calibration.data import load_labelled_set
    from minireranker.calibration.scoring import LoadedReranker, dense_scores
    from minireranker.export.reference import ReferencePipeline
    from minireranker.runtime.spec import RerankSpec

    proc = run_cli("calibrate", tiny_checkpoint, "--data", labelled_set, "--reference", "vision-first",
                   "--target", "0.9", *GRID, "--out", tmp_path, "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "calibration.json").read_text())
    assert (result["reference"], result["reference_system"]) == ("vision-first", "dense")
    assert result["format_change"]["system"] == TRAINED
    exact = next(p for p in result["points"] if (p["exit_layer"], p["band"], p["keep_ratio"]) == (3, [0, 3], 1.0))
    assert exact["fidelity"] == pytest.approx(1.0, abs=1e-6)  # exact == vision-first dense up to fp32 rounding
    chosen = result["points"][result["chosen"]]
    assert chosen["fidelity"] >= 0.9
    data = load_labelled_set(labelled_set)
    loaded = LoadedReranker(tiny_checkpoint)
    base = loaded.pipeline(loaded.exact_spec())
    pipeline = ReferencePipeline(tiny_checkpoint, RerankSpec.from_file(tmp_path / "minireranker.json"))
    grades = [q.grades for q in data.queries]
    mine = summarize([pipeline.rerank(q.query, q.candidates) for q in data.queries], grades).means["ndcg@10"]
    ref = summarize([dense_scores(base, q.query, q.candidates) for q in data.queries], grades).means["ndcg@10"]
    assert mine / ref == pytest.approx(chosen["fidelity"], abs=RATIO_ATOL) and mine / ref >= 0.9
    assert "Reference: `dense` (--reference vision-first)" in (tmp_path / "report.md").read_text()


def test_calibrate_fidelity_changes_with_the_reference(tmp_path, tiny_checkpoint, labelled_set):
    """The same sweep against each reference: every point's fidelity is its metric over another denominator."""
    results = {}
    for ref in ("trained", "vision-first"):
        config = CalibrationConfig(str(tiny_checkpoint), str(labelled_set), exit_layers=(2, 3), bands=((0, 3), (1, 1)),
                                   keep_ratios=(1.0,), reference=ref, out=str(tmp_path / ref), progress=False)
        results[ref] = run_calibration(config, log=lambda _: None)
    t, v = results["trained"], results["vision-first"]
    assert t["format_change"]["fidelity"] * v["format_change"]["fidelity"] == pytest.approx(1.0, abs=RATIO_ATOL)
    for p, q in zip(t["points"], v["points"]):
        assert p["label"] == q["label"] and p["metrics"] == q["metrics"]
        # p = m / trained, q = m / vision-first, and t's format change = vision-first / trained
        assert p["fidelity"] == pytest.approx(q["fidelity"] * t["format_change"]["fidelity"], abs=RATIO_ATOL)


def test_one_dense_system_in_calibrate_for_a_checkpoint_trained_as_it_runs(tmp_path, tiny_checkpoint, labelled_set):
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "minireranker.json").write_text(json.dumps({"trained": "vision-first"}), encoding="utf-8")
    config = CalibrationConfig(str(ckpt), str(labelled_set), exit_layers=(3,), bands=((0, 3),), keep_ratios=(1.0,),
                               out=str(tmp_path / "out"), progress=False)
    result = run_calibration(config, log=lambda _: None)
    assert result["format_change"] is None and result["reference_system"] == "dense"
    assert result["points"][0]["fidelity"] == pytest.approx(1.0, abs=1e-6)  # the exact spec against itself


def test_reference_option_help_and_validation():
    import argparse

    from minireranker.tools.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("eval", "calibrate"):
        text = " ".join(commands[command].format_help().split())
        assert "--reference {trained,vision-first}" in text and "(default trained)" in text, command
        assert "order the checkpoint was trained in" in text and "order miniReranker runs" in text, command
    assert EvalConfig("c", "d").reference == CalibrationConfig("c", "d").reference == "trained"
    with pytest.raises(SpecError, match="--reference must be one of trained, vision-first"):
        EvalConfig("c", "d", reference="query-first")
    with pytest.raises(CalibrationError, match="--reference must be one of trained, vision-first"):
        CalibrationConfig("c", "d", reference="dense")
