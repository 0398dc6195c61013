"""``minireranker adapt``: LoRA self-distillation lowers its loss, merges exactly, resumes after a kill,
writes a plain checkpoint that stays exact, and refuses bad input in one line.

The teacher is the tiny Qwen3-VL checkpoint dense in its trained (query-first) order; the student runs the
approximate spec below. Tolerances: merged weights == base + alpha/r * B A within 1e-5; resumed training
== uninterrupted within 1e-6 (float32, one thread: the same operations in the same order); the adapted
checkpoint's exact scores == transformers within 1e-4.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from minireranker.calibration.adapt import STATE_FILE, AdaptConfig, passes_note, run_adapt  # noqa: E402
from minireranker.calibration.errors import CalibrationError, EvalDataError  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

APPROX = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5, query_position=64)


class Killed(Exception):
    """Raised by the test hook where a kill -9 would land."""


def config_for(checkpoint, data, out, **overrides) -> AdaptConfig:
    base = AdaptConfig(str(checkpoint), str(data), str(out), spec=json.dumps(APPROX.to_dict()), steps=12, lr=5e-3,
                       rank=4, alpha=8.0, queries_per_step=2, save_every=4, seed=1, progress=False)
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_checkpoint, labelled_set):
    out = tmp_path_factory.mktemp("adapted")
    report = run_adapt(config_for(tiny_checkpoint, labelled_set, out), log=lambda _: None)
    return report, out


def test_a_short_run_lowers_the_distillation_loss(adapted):
    report, out = adapted
    losses = report["losses"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    card = (out / "README.md").read_text()
    assert "| mean abs score difference to the teacher |" in card and "query-first" in card
    assert "12 steps of 2 queries (4.8 passes over the data)" in card and "label weight 2, LoRA dropout 0" in card


def test_merged_weights_are_base_plus_lora(adapted, tiny_checkpoint):
    import torch
    from safetensors.torch import load_file

    from minireranker.export.checkpoint import load_state_dict, open_checkpoint
    from minireranker.export.modeling import build_model

    _, out = adapted
    ckpt = open_checkpoint(tiny_checkpoint)
    names = build_model(ckpt.config, load_state_dict(ckpt)).transformers_names
    base, merged = load_state_dict(ckpt), load_file(str(out / "model.safetensors"))
    lora = torch.load(out / STATE_FILE, weights_only=False)["lora"]
    targets = sorted({n.split(".lora_")[0] for n in lora})
    assert len(targets) == 3 * 7  # layers 0..E=2, seven projections each
    for module in targets:
        a, b = lora[f"{module}.lora_A.default.weight"], lora[f"{module}.lora_B.default.weight"]
        name = names[f"{module}.weight"]
        expected = base[name] + (8.0 / 4) * (b @ a)
        torch.testing.assert_close(merged[name], expected, atol=1e-5, rtol=0)
    changed = [n for n in merged if not torch.equal(merged[n], base.get(n, merged[n]))]
    assert changed and all(".layers.3." not in n for n in changed)  # nothing past the exit layer moved


def test_resume_after_a_kill_continues_from_the_last_state(adapted, tiny_checkpoint, labelled_set, tmp_path):
    import torch

    config = config_for(tiny_checkpoint, labelled_set, tmp_path)

    def kill_at_six(step):
        if step == 6:
            raise Killed()

    with pytest.raises(Killed):
        run_adapt(config, log=lambda _: None, after_step=kill_at_six)
    assert torch.load(tmp_path / STATE_FILE, weights_only=False)["step"] == 4  # saved at 4, killed at 6
    lines: list[str] = []
    report = run_adapt(config, log=lines.append)
    assert report["resumed_from_step"] == 4 and any("resuming from step 4" in line for line in lines)
    assert any("pass over the 5 queries 4.8 times" in line and "--steps 20" in line for line in lines)
    uninterrupted, _ = adapted
    np.testing.assert_allclose(report["losses"], uninterrupted["losses"], rtol=0, atol=1e-6)
    mine = torch.load(tmp_path / STATE_FILE, weights_only=False)["lora"]
    theirs = torch.load(adapted[1] / STATE_FILE, weights_only=False)["lora"]
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-6, rtol=0)


def test_lora_dropout_trains_otherwise_and_resumes_exactly(adapted, tiny_checkpoint, labelled_set, tmp_path):
    """--lora-dropout draws its masks from torch's generator: the saved state carries it, so a resumed run
    takes the unbroken run's masks (without it, the masks restart from the seed and the losses part)."""
    config = config_for(tiny_checkpoint, labelled_set, tmp_path / "whole", lora_dropout=0.3)
    whole = run_adapt(config, log=lambda _: None)
    assert whole["settings"]["lora_dropout"] == 0.3
    assert np.abs(np.array(whole["losses"][1:]) - np.array(adapted[0]["losses"][1:])).max() > 1e-4

    def kill_at_six(step):
        if step == 6:
            raise Killed()

    broken = dataclasses.replace(config, out=str(tmp_path / "broken"))
    with pytest.raises(Killed):
        run_adapt(broken, log=lambda _: None, after_step=kill_at_six)
    resumed = run_adapt(broken, log=lambda _: None)
    assert resumed["resumed_from_step"] == 4
    np.testing.assert_allclose(resumed["losses"], whole["losses"], rtol=0, atol=1e-6)
    with pytest.raises(CalibrationError, match="another run"):  # the dropout is a setting a resume must share
        run_adapt(dataclasses.replace(broken, lora_dropout=0.1), log=lambda _: None)
    with pytest.raises(CalibrationError, match="lora-dropout"):
        dataclasses.replace(config, lora_dropout=1.0)


def test_too_few_passes_over_the_data_get_a_note():
    assert passes_note(400, 2, 130) is None  # the demo's default: 6.2 passes
    assert passes_note(1600, 2, 410) is None  # the proof's run: 7.8 passes
    assert passes_note(0, 2, 410) is None  # the exit head alone trains nothing
    note = passes_note(400, 2, 410)
    assert note is not None and "2.0 times" in note and "--steps 1640" in note


def test_the_adapted_checkpoint_is_plain_and_exact(adapted, images):
    from minireranker.export.oracle import TransformersOracle
    from minireranker.export.reference import ReferencePipeline
    from minireranker.runtime.documents import Document

    _, out = adapted
    spec = RerankSpec.from_file(out / "minireranker.json")
    assert spec.trained == "vision-first" and spec.exit_layer == 2 and spec.keep_ratio == 0.5
    docs = [Document(image=images["chelsea_128x100"], text="a cat"), Document(text="seven")]
    ours = ReferencePipeline(out, RerankSpec.exact()).rerank("a cat", docs)
    oracle = TransformersOracle(out, RerankSpec.exact())
    assert np.abs(ours - np.array([oracle.score("a cat", d) for d in docs])).max() <= 1e-4


def test_bad_input_is_one_clear_error(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"qid": "q", "query": "x", "candidates": [{"id": "a", "image": "missing.png"}]}) + "\n")
    with pytest.raises(EvalDataError, match="missing.png"):
        run_adapt(config_for(tiny_checkpoint, bad, tmp_path / "o"), log=lambda _: None)
    with pytest.raises(CalibrationError, match="steps"):
        config_for(tiny_checkpoint, bad, tmp_path / "o", steps=0)
    exact = json.dumps({"trained": "vision-first"})
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"qid": "q", "query": "x", "candidates": [{"id": "a", "text": "y"}]}) + "\n")
    with pytest.raises(CalibrationError, match="nothing to adapt"):
        run_adapt(config_for(tiny_checkpoint, good, tmp_path / "o", spec=exact), log=lambda _: None)


def test_exit_head_is_fitted_stored_and_carried_by_the_engines(tiny_checkpoint, labelled_set, tmp_path, images):
    from minireranker.export.onnx_export import BuildConfig, build_bundle
    from minireranker.export.oracle import TransformersOracle
    from minireranker.export.reference import ReferencePipeline
    from minireranker.runtime.documents import Document

    out = tmp_path / "adapted"
    report = run_adapt(config_for(tiny_checkpoint, labelled_set, out, steps=4, exit_head=True), log=lambda _: None)
    spec = RerankSpec.from_file(out / "minireranker.json")
    assert spec.head.kind == "linear" and spec.head.linear1 == "minireranker.exit_head"
    # the head is bound to its exit layer: named elsewhere it is refused, inherited elsewhere it is not taken
    from minireranker.calibration.scoring import LoadedReranker
    from minireranker.export.checkpoint import inherit_format
    from minireranker.runtime.spec import SpecError

    assert spec.head.layer == APPROX.exit_layer
    with pytest.raises(SpecError, match="fitted at layer 2"):
        dataclasses.replace(spec, exit_layer=3).resolve(4)
    assert LoadedReranker(out).exact_spec().head.kind == "yes_no"
    assert inherit_format(RerankSpec.exact(), spec).resolve(4).head.kind == "yes_no"
    assert inherit_format(RerankSpec(exit_layer=2), spec).resolve(4).head == spec.head
    # least squares on these very pairs: never worse than the yes/no rows of the same body (RMSE)
    assert report["after"]["rmse"] <= report["after_yes_no"]["rmse"] * (1 + 1e-3)
    docs = [Document(image=images["chelsea_128x100"], text="a cat"), Document(text="seven")]
    pipeline = ReferencePipeline(out)
    entries = [pipeline.index(d) for d in docs]
    ours = pipeline.score("a cat", entries)
    oracle = TransformersOracle(out)
    theirs = np.array([oracle.score("a cat", d, e.kept_visual) for d, e in zip(docs, entries)])
    assert np.abs(ours - theirs).max() <= 1e-4
    meta = build_bundle(out, tmp_path / "bundle", None, BuildConfig(), log=lambda _: None).data
    assert meta["spec"]["head"]["kind"] == "linear"
    assert meta["validation"]["end_to_end"]["scores"]["max_abs_diff"] <= 1e-4


def test_exit_head_alone_keeps_the_body_and_the_trained_order(tiny_checkpoint, labelled_set, tmp_path):
    """``steps=0`` with the exit head (``calibrate --exit-head``): the base's tensors bit for bit plus the head,
    the trained order unchanged (the body did not learn the new format), and the head at least as close to the
    teacher on its own fitting data as the yes/no rows (least squares; 1e-3 for the ridge)."""
    from safetensors.torch import load_file

    from minireranker.calibration.adapt import EXIT_HEAD

    out = tmp_path / "head"
    report = run_adapt(config_for(tiny_checkpoint, labelled_set, out, steps=0, exit_head=True), log=lambda _: None)
    base, mine = load_file(tiny_checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(mine) - set(base) == {f"{EXIT_HEAD}.weight", f"{EXIT_HEAD}.bias"}
    assert all(torch_equal(mine[name], base[name]) for name in base if name in mine)
    spec = RerankSpec.from_file(out / "minireranker.json")
    assert spec.trained == "query-first" and spec.head.kind == "linear"
    assert report["losses"] == [] and not (out / STATE_FILE).exists()
    assert report["after"]["rmse"] <= report["before"]["rmse"] * (1 + 1e-3)


def test_teacher_scores_given_by_the_caller_are_used_not_recomputed(tiny_checkpoint, labelled_set, tmp_path,
                                                                     monkeypatch):
    """``run_adapt(teacher=...)`` (``calibrate --exit-head`` hands over its dense pass): those scores are the
    targets, written to teacher.json as given, the teacher is not run; a shape that is not the data's is refused."""
    from minireranker.calibration import scoring
    from minireranker.calibration.adapt import TEACHER_FILE
    from minireranker.calibration.data import load_labelled_set

    shapes = [len(q.candidates) for q in load_labelled_set(labelled_set, require_labels=False).queries]
    given = [np.linspace(-1.0, 1.0, n) + i for i, n in enumerate(shapes)]

    def not_called(*_):
        raise AssertionError("the teacher ran although its scores were given")

    monkeypatch.setattr(scoring, "trained_dense_scores", not_called)
    out = tmp_path / "given"
    config = config_for(tiny_checkpoint, labelled_set, out, steps=0, exit_head=True)
    run_adapt(config, log=lambda _: None, teacher=given)
    saved = json.loads((out / TEACHER_FILE).read_text())["scores"]
    assert [np.asarray(s).tolist() for s in given] == saved
    with pytest.raises(CalibrationError, match="teacher scores given hold"):
        run_adapt(dataclasses.replace(config, out=str(tmp_path / "bad")), log=lambda _: None, teacher=given[1:])


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


def test_device_is_checked_in_one_line(tiny_checkpoint, labelled_set, tmp_path):
    import torch

    with pytest.raises(CalibrationError, match="not a torch device"):
        run_adapt(config_for(tiny_checkpoint, labelled_set, tmp_path / "o", device="gpu0"), log=lambda _: None)
    if not torch.cuda.is_available():
        with pytest.raises(CalibrationError, match="no CUDA device"):
            run_adapt(config_for(tiny_checkpoint, labelled_set, tmp_path / "o", device="cuda"), log=lambda _: None)
