"""``minireranker calibrate`` end to end: the written spec loads, is on the frontier and meets its target."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from cli_helpers import run_cli

pytest.importorskip("torch")

from minireranker.calibration.calibrate import CalibrationConfig, default_grid, run_calibration  # noqa: E402
from minireranker.calibration.metrics import spearman, summarize  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = 0.9


@pytest.fixture(scope="module")
def graded(tmp_path_factory, tiny_checkpoint, labelled_set):
    out = tmp_path_factory.mktemp("calib-graded")
    config = dataclasses.replace(CalibrationConfig.tiny(str(tiny_checkpoint), str(labelled_set), str(out)),
                                 target=TARGET)
    return run_calibration(config, log=lambda _: None), out


def _dominated(p: dict, points: list[dict]) -> bool:
    keys = ("flops_per_query", "kv_bytes_per_query")
    return any(all(q[k] <= p[k] for k in keys) and q["fidelity"] >= p["fidelity"]
               and (any(q[k] < p[k] for k in keys) or q["fidelity"] > p["fidelity"]) for q in points)


def test_written_spec_loads_meets_target_and_is_on_frontier(graded):
    result, out = graded
    on_disk = json.loads((out / "calibration.json").read_text())
    points, chosen = on_disk["points"], on_disk["chosen"]
    assert on_disk["schema_version"] == 2 and chosen is not None
    assert (on_disk["reference"], on_disk["reference_system"]) == ("trained", "dense, trained format")
    spec = RerankSpec.from_file(out / "minireranker.json")
    assert spec.to_dict() == points[chosen]["spec"]
    p = points[chosen]
    assert p["fidelity"] >= TARGET and p["meets_target"]
    assert not _dominated(p, points) and p["on_frontier"]
    # cheapest: no point meeting the target has fewer FLOPs
    assert all(q["flops_per_query"] >= p["flops_per_query"] for q in points if q["fidelity"] >= TARGET)
    # every flag agrees with an independent frontier computation
    assert [q["on_frontier"] for q in points] == [not _dominated(q, points) for q in points]
    assert on_disk["chosen_check_max_abs_diff"] <= 1e-5  # the sweep agrees with ReferencePipeline
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "**Chosen**" in (out / "report.md").read_text()


def test_grid_covers_exact_and_band_rules(graded):
    result, _ = graded
    bands = {(p["exit_layer"], tuple(p["band"]), p["keep_ratio"]) for p in result["points"]}
    assert all(b <= e for e, (a, b), _ in bands)
    assert (3, (0, 3), 1.0) in bands and (2, (1, 1), 0.5) in bands
    exact = next(p for p in result["points"] if p["exit_layer"] == 3 and p["band"] == [0, 3] and p["keep_ratio"] == 1)
    # the exact spec is vision-first dense up to fp32 rounding: its fidelity against the trained format (the
    # default reference) is the order change's own
    assert result["format_change"]["system"] == "dense"
    assert exact["fidelity"] == pytest.approx(result["format_change"]["fidelity"], abs=1e-6)
    assert exact["flops_per_query"] == pytest.approx(result["exact_cost"]["flops_per_query"], rel=1e-12)
    with_a = [p for p in result["points"] if p["band"][0] > 0]
    assert with_a and all(p["spec"]["query_position"] == result["query_position"] for p in with_a)
    assert all(p["spec"]["query_position"] is None for p in result["points"] if p["band"][0] == 0)


def test_chosen_fidelity_recomputed_with_a_fresh_reference(graded, tiny_checkpoint, labelled_set):
    from minireranker.calibration.data import load_labelled_set
    from minireranker.calibration.scoring import LoadedReranker, trained_dense_scores
    from minireranker.export.reference import ReferencePipeline

    result, out = graded
    data = load_labelled_set(labelled_set)
    spec = RerankSpec.from_file(out / "minireranker.json")
    pipeline = ReferencePipeline(tiny_checkpoint, spec)
    loaded = LoadedReranker(tiny_checkpoint)
    base = loaded.pipeline(loaded.exact_spec())
    grades = [q.grades for q in data.queries]
    mine = summarize([pipeline.rerank(q.query, q.candidates) for q in data.queries], grades).means["ndcg@10"]
    dense = summarize([trained_dense_scores(base, q.query, q.candidates) for q in data.queries],
                      grades).means["ndcg@10"]  # the default reference: the format the checkpoint was trained in
    assert mine / dense == pytest.approx(result["points"][result["chosen"]]["fidelity"], abs=1e-9)


def test_cost_grows_with_layers_and_kept_tokens(graded):
    pts = {(p["exit_layer"], tuple(p["band"]), p["keep_ratio"]): p for p in graded[0]["points"]}
    assert pts[(3, (0, 3), 1.0)]["flops_per_query"] > pts[(2, (0, 2), 1.0)]["flops_per_query"]
    assert pts[(2, (1, 1), 1.0)]["flops_per_query"] < pts[(2, (0, 2), 1.0)]["flops_per_query"]
    assert pts[(2, (1, 1), 0.5)]["kv_bytes_per_query"] < pts[(2, (1, 1), 1.0)]["kv_bytes_per_query"]
    # the document's K/V grows with the band's layers; each entry's instruction K/V (layers A..E = 1..2 in
    # both specs) is the same: kv(1..2) = 2 doc + instruction, kv(1..1) = doc + instruction
    from minireranker.export.tiny import PRESETS

    cost, tiny = graded[0]["cost"], PRESETS["tiny"]
    assert cost["instruction_tokens"] > 0
    value_bytes = 2 if cost["precision"] == "fp16" else 4
    instruction = cost["candidates"] * cost["instruction_tokens"] * 2 * 2 * tiny.num_key_value_heads * \
        tiny.head_dim * value_bytes
    one, two = pts[(2, (1, 1), 1.0)]["kv_bytes_per_query"], pts[(2, (1, 2), 1.0)]["kv_bytes_per_query"]
    assert two - one == pytest.approx(one - instruction, rel=1e-12)


def test_label_free_calibration_uses_rank_agreement(tmp_path, tiny_checkpoint, unlabelled_set, checkpoint_factory):
    embedder = checkpoint_factory("tiny", seed=7)
    config = CalibrationConfig(str(tiny_checkpoint), str(unlabelled_set), embedder=str(embedder), target=0.5,
                               exit_layers=(2, 3), bands=((0, 3), (1, 2)), keep_ratios=(0.5, 1.0),
                               out=str(tmp_path), progress=False)
    result = run_calibration(config, log=lambda _: None)
    assert result["fidelity"]["kind"] == "rank_agreement" and result["dense_metrics"] is None
    for p in result["points"]:
        assert p["metrics"] is None and p["fidelity"] == p["agreement_spearman"]
    pruned = [p for p in result["points"] if p["keep_ratio"] < 1]
    assert pruned and all(p["guide"] == f"embedder:{embedder}" for p in pruned)
    exact = next(p for p in result["points"] if p["band"] == [0, 3] and p["keep_ratio"] == 1 and p["exit_layer"] == 3)
    change = result["format_change"]  # vision-first dense against the trained format, the default reference
    assert change["metrics"] is None and change["fidelity"] == change["agreement_spearman"]
    assert exact["fidelity"] == pytest.approx(change["fidelity"], abs=1e-9)
    assert result["chosen"] is not None and result["chosen_check_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("keep, start, ends, exits, guided", [(0.5, 1, [1, 2], [2, 3], True),
                                                              (0.5, 1, [1, 3], [1, 3], False),
                                                              (1.0, 0, [0, 1, 2], [1, 2, 3], False)])
def test_sweep_equals_reference_pipeline(tiny_checkpoint, labelled_set, checkpoint_factory, keep, start, ends,
                                         exits, guided):
    """One K/V run per variant and one band walk per start give each spec's own ReferencePipeline scores."""
    from minireranker.calibration.data import load_labelled_set
    from minireranker.calibration.scoring import LoadedReranker
    from minireranker.calibration.sweep import SpecSweep, Variant
    from minireranker.export.reference import ReferencePipeline

    guide = f"embedder:{checkpoint_factory('tiny', seed=7)}" if guided else "self"
    loaded = LoadedReranker(tiny_checkpoint)
    sweep = SpecSweep(loaded.pipeline(loaded.exact_spec()), query_position=96)
    variant = Variant(keep, guide, start if keep < 1 and not guided else None)
    q = load_labelled_set(labelled_set).queries[2]
    entries = [sweep.document_kv(d, variant, 3) for d in q.candidates]
    got = sweep.score(q.query, entries, start, ends, exits)
    assert set(got) == {(b, e) for b in ends for e in exits if e >= b}
    for b, e in got:
        spec = RerankSpec(exit_layer=e, band=(start, b), keep_ratio=keep, guide=guide if keep < 1 else "self",
                          query_position=96 if start > 0 else None)
        ref = ReferencePipeline(tiny_checkpoint, spec).rerank(q.query, q.candidates)
        np.testing.assert_allclose(got[(b, e)], ref, atol=1e-6, rtol=0)


def test_rank_agreement_is_spearman_of_scores():
    assert spearman(np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0])) == 1.0


def test_unreachable_target_exits_nonzero_and_still_reports(tmp_path, tiny_checkpoint, labelled_set):
    proc = run_cli("calibrate", tiny_checkpoint, "--data", labelled_set, "--target", "1.9", "--exit-layers", "2,3",
                   "--bands", "0:3,1:1", "--keep-ratios", "1", "--out", tmp_path, "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: no swept spec reaches the target 1.9" in proc.stderr and "lower --target" in proc.stderr
    assert not (tmp_path / "minireranker.json").exists()
    assert json.loads((tmp_path / "calibration.json").read_text())["chosen"] is None
    assert "No swept spec meets the target" in (tmp_path / "report.md").read_text()


def test_default_grid_fits_any_depth():
    for layers in (2, 4, 8, 28, 36):
        exits, bands = default_grid(layers)
        assert exits[-1] == layers - 1 and all(0 <= e < layers for e in exits)
        assert all(0 <= a <= b <= exits[-1] for a, b in bands) and (0, layers - 1) in bands
        assert len(bands) <= 45


def test_exit_head_option_writes_a_checkpoint_with_the_head(tmp_path, tiny_checkpoint, labelled_set, monkeypatch):
    """``calibrate --exit-head``: the chosen spec's head, fitted without training the body, in OUT/checkpoint/,
    reported in calibration.json and report.md (one swept spec, so that the test stays short); the pairs are
    labelled by the trained-order dense model once, the sweep's reference pass also being the head's teacher."""
    pytest.importorskip("peft")
    from minireranker.calibration import scoring
    from minireranker.calibration.data import load_labelled_set

    calls, trained_dense = [], scoring.trained_dense_scores

    def counted(*args):
        calls.append(1)
        return trained_dense(*args)

    monkeypatch.setattr(scoring, "trained_dense_scores", counted)
    config = dataclasses.replace(CalibrationConfig.tiny(str(tiny_checkpoint), str(labelled_set), str(tmp_path)),
                                 exit_layers=(2,), bands=((1, 2),), keep_ratios=(1.0,), target=0.01,
                                 exit_head=True)
    result = run_calibration(config, log=lambda _: None)
    head = json.loads((tmp_path / "calibration.json").read_text())["exit_head"]
    assert result["exit_head"]["checkpoint"] == head["checkpoint"] == str(tmp_path / "checkpoint")
    spec = RerankSpec.from_file(tmp_path / "checkpoint" / "minireranker.json")
    assert spec.head.kind == "linear" and spec.exit_layer == 2 and spec.band == (1, 2)
    assert head["exit_head"]["rmse"] <= head["yes_no_rows"]["rmse"] * (1 + 1e-3)
    assert "**Exit head**" in (tmp_path / "report.md").read_text()
    assert len(calls) == len(load_labelled_set(labelled_set).queries)
