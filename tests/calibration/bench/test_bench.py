"""`minireranker bench` on the tiny preset, end to end: the JSON's structure and internal consistency.

Never its speed: timings are whatever this machine gives; only relations that hold by construction
(stages within totals, ratios as quotients, bytes as N x per-document bytes, once-per-query) are checked.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from minireranker.calibration.bench.report import render_markdown  # noqa: E402
from minireranker.calibration.bench.flags import ERRORS  # noqa: E402
from minireranker.calibration.bench.harness import (  # noqa: E402
    STAGES, _scaled, best_batch, query_first_prompt, run_bench, warm_rerank_flops,
)
from minireranker.calibration.bench.presets import (  # noqa: E402
    BENCH_PRESETS, DENSE_SYSTEMS, QUERY_WORDS, SYSTEMS, BenchConfig, BenchError, draw_page, draw_query,
)
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.export.tokenizer_factory import build_tokenizer  # noqa: E402
from minireranker.runtime.errors import SpecError  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402
from minireranker.tools.bench_cli import register  # noqa: E402

EPS = 1e-9  # seconds: float summation slack when comparing stage sums with totals


README = Path(__file__).resolve().parents[3] / "README.md"
README_BENCH = next(line.split("#")[0].strip() for line in README.read_text(encoding="utf-8").splitlines()
                    if line.startswith("minireranker bench --preset tiny"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The README's bench line, run once for the suite here (tests/test_readme.py leaves it to this module),
    through the command line in this process: its results.json is what every test below reads."""
    from minireranker.tools.cli import main

    out = tmp_path_factory.mktemp("bench")
    argv = shlex.split(README_BENCH)[1:]
    argv[argv.index("--out") + 1] = str(out)
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_the_readme_line_is_the_tiny_test_configuration():
    """What the README runs is BenchConfig.tiny: the suite's configuration, documented as the README's."""
    from minireranker.tools.bench_cli import config_of

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(shlex.split(README_BENCH)[1:])
    assert config_of(args) == BenchConfig.tiny(Path(args.out))


def test_outputs_are_written_and_the_json_is_the_result(bench):
    out, result = bench  # result: results.json as the command wrote it
    table = (out / "results.md").read_text()
    assert table == render_markdown(result)
    for s in result["systems"].values():
        assert s["label"] in table
    if importlib.util.find_spec("matplotlib") is not None:  # the PNG is optional (the 'plot' extra)
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_system_is_present_with_its_stages(bench):
    _, result = bench
    systems = result["systems"]
    assert list(systems) == list(SYSTEMS) and result["settings"]["systems"] == list(SYSTEMS)
    n, repeats = result["settings"]["candidates"], result["settings"]["repeats"]
    for name, s in systems.items():
        assert len(s["runs"]) == repeats, name
        assert set(s["stages_s"]) == set(STAGES), name
        assert s["measured_pairs"] == n and not s["scaled"], name
        assert s["peak_rss_bytes"]["serve"] > 0, name
    a, a2, b, c, d = (systems[k]["stages_s"] for k in SYSTEMS)
    assert SYSTEMS == ("dense_transformers", "dense_transformers_batched", "dense_onnx", "prefix_reuse", "minireranker")
    assert all(a[k]["median"] > 0 for k in ("preprocess", "vision", "lm"))
    assert all(a2[k]["median"] > 0 for k in ("preprocess", "vision", "lm"))
    assert all(b[k]["median"] > 0 for k in ("preprocess", "vision", "doc_prefix", "band"))
    for warm in (c, d):  # nothing about the documents is recomputed on a warm rerank
        assert all(warm[k]["max"] == 0 for k in ("preprocess", "vision", "doc_prefix", "lm"))
        assert warm["band"]["median"] > 0 and warm["kv_read"]["median"] > 0


def test_stage_times_sum_to_at_most_the_total(bench):
    _, result = bench
    for name, s in result["systems"].items():
        for run in s["runs"]:
            assert sum(run["stages_s"].values()) <= run["total_s"] + EPS, name
            assert run["other_s"] == pytest.approx(run["total_s"] - sum(run["stages_s"].values()), abs=EPS)
        for spread in [s["total_s"], s["other_s"], *s["stages_s"].values()]:
            assert spread["min"] <= spread["median"] <= spread["max"], name


def test_ratios_are_the_quotients_of_the_medians(bench):
    _, result = bench
    systems = result["systems"]
    for s in systems.values():
        for ref in ("dense_transformers", "dense_onnx"):
            assert s[f"ratio_to_{ref}"] == s["total_s"]["median"] / systems[ref]["total_s"]["median"]
    assert systems["dense_transformers"]["ratio_to_dense_transformers"] == 1.0
    target = result["targets"][0]
    # issue 12's targets: 0.25% of (a) and 0.5% of the best dense baseline, within 2x of the compute floor
    assert target["system"] == "minireranker" and target["target"] == 0.0025 and target["best_dense_target"] == 0.005
    assert target["compute_floor_target"] == 2.0
    assert target["ratio_to_dense_transformers"] == systems["minireranker"]["ratio_to_dense_transformers"]
    assert target["ratio_to_best_dense"] == systems["minireranker"]["ratio_to_best_dense"]
    assert target["measurement_error"] == systems["minireranker"]["measurement_error"]
    assert (target["met"] is None) == target["measurement_error"]


def test_ratios_against_the_best_dense_baseline_of_the_run(bench):
    _, result = bench
    systems, best = result["systems"], result["best_dense"]
    dense = {k: systems[k]["total_s"]["median"] for k in DENSE_SYSTEMS}
    assert best["system"] == min(dense, key=dense.get) and best["total_s"] == dense[best["system"]]
    for s in systems.values():
        assert s["ratio_to_best_dense"] == s["total_s"]["median"] / best["total_s"]
    assert systems[best["system"]]["ratio_to_best_dense"] == 1.0
    assert all(s["ratio_to_best_dense"] >= s["ratio_to_dense_transformers"] for s in systems.values())  # best <= (a)
    assert "vs best dense" in render_markdown(result)


def test_batched_dense_scores_equal_pair_by_pair_and_every_size_is_recorded(bench):
    _, result = bench
    a2, n = result["systems"]["dense_transformers_batched"], result["settings"]["candidates"]
    assert list(a2["by_batch_size"]) == ["1", "4"]  # (1, 4, 16) capped at the 4 pairs measured
    assert a2["batch_size"] in (1, 4)
    assert a2["total_s"]["median"] == min(t["median"] for t in a2["by_batch_size"].values())
    assert all(len(run["scores"]) == n for run in a2["runs"])
    # the same model in fp32 on the same pairs: masked, padded batches change the scores by rounding only
    assert result["checks"]["dense_scores_max_abs_diff_a_vs_a2"] <= 1e-4
    assert result["checks"]["dense_scores_max_abs_diff_across_batch_sizes"] <= 1e-4
    assert f"padded batches of {a2['batch_size']}" in a2["label"]


def test_flags_are_recorded_for_every_system(bench):
    _, result = bench
    for name, s in result["systems"].items():
        assert all(set(f) == {"flag", "detail"} for f in s["flags"]), name
        assert s["measurement_error"] == any(f["flag"] in ERRORS for f in s["flags"]), name
        bounds = s["bounds"]
        if bounds is not None:  # beating its own floor is exactly what makes a row an error
            beats = s["total_s"]["median"] < max(bounds["compute_floor_s"], bounds["kv_floor_s"])  # either floor
            assert beats == s["measurement_error"], name
        else:
            assert not s["measurement_error"], name
    for b in result["baselines"]:
        assert 1 <= b["quiet"]["gemm"]["attempts"] <= 3 and set(b["quiet"]["memcpy"]) == set(b["memcpy_gib_s"])


def test_the_marginal_cost_goes_through_the_command_line(bench):
    _, result = bench
    m, n = result["marginal"], result["settings"]["candidates"]
    assert m["command"][:2] == ["minireranker", "rerank"] and "--ids" in m["command"]
    assert m["configuration"]["candidates"] == n == 4  # --marginal 40, capped at the 4 candidates
    assert m["configuration"]["warm"] and m["configuration"]["tokens_per_doc"] > 0
    runs = m["runs"]
    assert sorted(r["candidates"] for r in runs) == [1, n] * result["settings"]["repeats"]
    assert m["marginal_per_candidate_s"] == pytest.approx((m["t_n_s"]["median"] - m["t_1_s"]["median"]) / (n - 1),
                                                          rel=1e-12)
    for name, per_pair in m["dense_per_pair_s"].items():
        assert per_pair == pytest.approx(result["systems"][name]["total_s"]["median"] / n, rel=1e-12)
        assert m["ratio_to"][name] == pytest.approx(m["marginal_per_candidate_s"] / per_pair, rel=1e-12)
    assert "Marginal cost per candidate" in render_markdown(result)


def test_kv_bytes_read_are_n_times_the_bytes_of_one_document(bench):
    _, result = bench
    systems, n = result["systems"], result["settings"]["candidates"]
    for name in ("prefix_reuse", "minireranker"):
        s = systems[name]
        per_doc = s["index_one_doc"]["kv_bytes_per_doc"]
        assert per_doc > 0 and s["index_one_doc"]["documents"] == n
        assert all(run["kv_bytes_read"] == n * per_doc for run in s["runs"]), name
        bounds = s["bounds"]
        assert bounds["kv_floor_s"] == pytest.approx(n * per_doc / (bounds["memcpy_gib_s"] * 2**30), rel=1e-9)
        assert bounds["total_over_kv_floor"] == pytest.approx(s["total_s"]["median"] / bounds["kv_floor_s"], rel=1e-9)
    # (b) feeds the band the same K/V as (c), recomputed instead of read; the pruned spec reads less
    assert systems["dense_onnx"]["kv_bytes_read_per_query"] == systems["prefix_reuse"]["kv_bytes_read_per_query"]
    assert systems["minireranker"]["kv_bytes_read_per_query"] < systems["prefix_reuse"]["kv_bytes_read_per_query"]
    assert systems["dense_transformers"]["index_one_doc"] is None and systems["dense_onnx"]["bounds"] is None


def test_query_head_runs_once_per_query_and_exact_systems_agree(bench):
    _, result = bench
    systems = result["systems"]
    assert RerankSpec.from_dict(systems["minireranker"]["spec"]).band[0] > 0  # A > 0: there is a query head
    assert all(run["query_head_runs"] == 1 for run in systems["minireranker"]["runs"])
    assert systems["minireranker"]["query_head_runs_per_query"] == 1
    assert result["targets"][0]["query_head_runs_per_query"] == 1
    assert all(run["query_head_runs"] == 0 for run in systems["prefix_reuse"]["runs"])  # A = 0: none
    assert "(1×)" in render_markdown(result)
    assert result["checks"]["exact_scores_max_abs_diff_b_vs_c"] <= 1e-4  # same graphs, fp32: the build's tolerance


def test_machine_and_settings_are_recorded(bench):
    _, result = bench
    assert result["schema_version"] == 1 and result["kind"] == "minireranker-bench"
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert result["preset"]["name"] == "tiny" and result["preset"]["model"]["num_hidden_layers"] == 4
    assert len(result["queries"]) == result["settings"]["repeats"] == len(result["baselines"])
    assert set(result["bundles"]) == {"exact", "minireranker"}


def test_a_subset_of_pairs_is_scaled_linearly():
    run = {"total_s": 2.0, "stages": {"preprocess": 0.5, "vision": 1.0, "lm": 0.25}, "measured_pairs": 5,
           "query_head_runs": 0, "kv_bytes_read": 0, "repeat": 0, "cpu_s": 2.0, "contention": 0.0}
    scaled = _scaled(run, 100)
    assert scaled["scale"] == 20 and scaled["total_s"] == 40.0 and scaled["measured_total_s"] == 2.0
    assert scaled["stages_s"]["vision"] == 20.0 and scaled["other_s"] == pytest.approx(40.0 - 35.0)


def test_best_batch_is_the_best_median_over_repeats():
    def run(repeat, times):
        return {"repeat": repeat, "total_s": min(times.values()), "stages": {}, "scores": [],
                "by_batch_size": {b: {"total_s": t, "stages": {"lm": t / 2}, "scores": [float(b)]}
                                  for b, t in times.items()}}

    # size 4 wins two repeats of three, but size 1 has the best median
    runs = [run(0, {1: 1.0, 4: 0.9}), run(1, {1: 1.0, 4: 3.0}), run(2, {1: 1.1, 4: 1.05})]
    size, chosen = best_batch(runs)
    assert size == 1 and [r["total_s"] for r in chosen] == [1.0, 1.0, 1.1]
    assert all(r["batch_size"] == 1 and r["scores"] == [1.0] and r["stages"]["lm"] == r["total_s"] / 2 for r in chosen)


def test_padded_batches_score_like_pair_by_pair(tmp_path):
    """(a2) against (a) in-process on pages of different sizes, so rows really are padded."""
    from minireranker.calibration.bench.systems import _DenseTransformers, _DenseTransformersBatched
    from minireranker.export.tiny import write_tiny_checkpoint

    checkpoint = str(write_tiny_checkpoint(tmp_path / "checkpoint", PRESETS["tiny"], seed=0))
    pages = []
    for i, size in enumerate([(96, 128), (64, 64), (128, 96), (200, 64)]):
        draw_page(size, i).save(tmp_path / f"page-{i}.png")
        pages.append(str(tmp_path / f"page-{i}.png"))
    pair = _DenseTransformers(checkpoint, pages, len(pages), "warm up")
    batched = _DenseTransformersBatched(checkpoint, pages, len(pages), "warm up", (1, 3, 4))
    query = "find the red fox in the report"
    expected = [pair._score(query, page, {}) for page in pages]
    result = batched.run(query)
    assert sorted(result["by_batch_size"]) == [1, 3, 4] and result["measured_pairs"] == len(pages)
    for size, by in result["by_batch_size"].items():  # fp32: rounding only
        assert by["scores"] == pytest.approx(expected, abs=1e-4), size
    from PIL import Image

    grids = batched.processor(images=[Image.open(p).convert("RGB") for p in pages], return_tensors="pt")
    assert len(set(grids["image_grid_thw"].prod(-1).tolist())) > 1  # the rows' lengths differ: padding is exercised


def test_warm_rerank_flops_follow_the_spec():
    model = PRESETS["tiny"]
    exact = RerankSpec.exact().resolve(model.num_hidden_layers)
    flops = warm_rerank_flops(model, exact, query_tokens=10, system_tokens=5, doc_tokens=20, candidates=3)
    assert flops["query_head"] == 0 and flops["tail"] == 3 * 4 * model.hidden_size  # no layer after B = L-1
    one = warm_rerank_flops(model, exact, 10, 5, 20, 1)
    assert flops["band"] == pytest.approx(3 * one["band"])


def test_query_first_prompt_is_qwen3_vl_rerankers_format():
    spec = RerankSpec.exact()
    prompt = query_first_prompt(spec, "red car", 2, "caption")
    assert prompt == (f"<|im_start|>system\n{spec.system}<|im_end|>\n<|im_start|>user\n<Instruct>: {spec.instruction}\n"
                      "<Query>: red car\n<Document>: <|vision_start|><|image_pad|><|image_pad|><|vision_end|>caption"
                      "<|im_end|>\n<|im_start|>assistant\n")


def test_presets_and_queries():
    assert {"tiny", "small", "wide", "2b"} <= set(BENCH_PRESETS)
    small, wide, big = BENCH_PRESETS["small"].model, BENCH_PRESETS["wide"].model, BENCH_PRESETS["2b"].model
    for p in (small, wide, big):
        assert p not in PRESETS.values()  # the suite builds every entry of PRESETS
        assert sum(p.mrope_section) == p.head_dim // 2
    assert (wide.hidden_size, wide.intermediate_size) == (4 * small.hidden_size, 4 * small.intermediate_size)
    for p in (small, wide, big):
        assert p.num_hidden_layers == 28 and p.num_attention_heads == 2 * p.num_key_value_heads
        assert len(p.deepstack_visual_indexes) == 3  # into decoder layers 0-2
    assert (big.hidden_size, big.head_dim, big.intermediate_size, big.vocab_size) == (2048, 128, 6144, 151936)
    assert all(5 <= len(draw_query(seed).split()) <= 20 for seed in range(50))
    tokenizer = build_tokenizer()  # Qwen-like query lengths: one token per query word
    assert all(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) == 1 for w in QUERY_WORDS)


@pytest.mark.parametrize("change, error", [
    ({"candidates": 0}, BenchError), ({"repeats": 0}, BenchError), ({"preset": "huge"}, BenchError),
    ({"systems": ("dense_onnx", "nope")}, BenchError), ({"dense_pairs": 5, "candidates": 4}, BenchError),
    ({"precision": "int4"}, BenchError), ({"marginal": 1}, BenchError), ({"marginal": -2}, BenchError),
    ({"dense_batch_sizes": (0, 4)}, BenchError), ({"dense_batch_sizes": ()}, BenchError),
])
def test_bad_settings_are_refused(tmp_path, change, error):
    with pytest.raises(error, match="invalid bench settings"):
        BenchConfig(out=tmp_path, **change)


def test_batch_sizes_and_marginal_are_capped(tmp_path):
    config = BenchConfig(out=tmp_path, candidates=10, dense_pairs=6)
    assert config.dense_batches == (1, 4, 6) and config.marginal_candidates == 10
    assert BenchConfig(out=tmp_path, marginal=0).marginal_candidates == 0
    assert BenchConfig(out=tmp_path, candidates=1).marginal_candidates == 0
    assert BenchConfig(out=tmp_path, systems=("dense_onnx",)).marginal_candidates == 0  # it times (d)'s bundle
    assert BenchConfig(out=tmp_path).marginal_candidates == 40


def test_a_bad_spec_file_is_named(tmp_path):
    bad = tmp_path / "late.json"
    bad.write_text(json.dumps({"exit_layer": 9, "band": [1, 2], "query_position": 64}))
    with pytest.raises(SpecError, match="late"):
        BenchConfig(out=tmp_path, spec_files=(bad,))


def test_cli_help_and_flags(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="minireranker")
    register(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["bench", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--preset", "--candidates", "--repeats", "--spec", "--out", "--dense-pairs", "--systems"):
        assert flag in help_text
    assert f"default {BenchConfig.__dataclass_fields__['repeats'].default}" in help_text
    args = parser.parse_args(["bench", "--out", str(tmp_path), "--preset", "small", "-n", "7", "--spec", "a.json",
                              "--spec", "b.json", "--systems", "dense_onnx,minireranker"])
    assert (args.preset, args.candidates, args.spec_files, args.systems) == (
        "small", 7, ["a.json", "b.json"], ("dense_onnx", "minireranker"))
    for flag in ("--marginal", "--dense-batch-sizes"):
        assert flag in help_text
    args = parser.parse_args(["bench", "--out", str(tmp_path), "--marginal", "12", "--dense-batch-sizes", "2,8"])
    assert (args.marginal, args.dense_batch_sizes) == (12, (2, 8))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--out", str(tmp_path), "--preset", "huge"])


def test_qwen2_presets_have_the_published_shapes():
    """qwen2-vl-2b and qwen2.5-vl-3b as their config.json files give them (Qwen/Qwen2-VL-2B-Instruct,
    Qwen/Qwen2.5-VL-3B-Instruct), parsed by their adapters, with the parameter counts the Hub reports."""
    from minireranker.export.config import parse_model_config
    from minireranker.export.tiny import build_config, parameter_specs, _SHAPE_ONLY_IDS

    expected = {  # layers, hidden, MLP, heads, KV heads, vision depth/width, billions of parameters (tied)
        "qwen2-vl-2b": ("qwen2_vl", 28, 1536, 8960, 12, 2, 32, 1280, 2.21),
        "qwen2.5-vl-3b": ("qwen2_5_vl", 36, 2048, 11008, 16, 2, 32, 1280, 3.75),
    }
    for name, (model_type, layers, hidden, mlp, heads, kv, depth, width, billions) in expected.items():
        p = BENCH_PRESETS[name].model
        assert p not in PRESETS.values()
        config = parse_model_config(build_config(p, _SHAPE_ONLY_IDS, 151936))
        t, v = config.text, config.vision
        assert (config.model_type, t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads) \
            == (model_type, layers, hidden, mlp, heads, kv)
        assert (v.depth, v.hidden_size, v.out_hidden_size, config.tie_word_embeddings) == (depth, width, hidden, True)
        count = sum(int(np.prod(shape)) for shape, _ in parameter_specs(p, 151936).values())
        assert round(count / 1e9, 2) == billions
        BENCH_PRESETS[name].spec.resolve(layers)  # the preset's spec fits the model


def test_bench_runs_on_qwen2_5_vl(tmp_path):
    """The tiny Qwen2.5-VL model: the dense baselines use its own transformers class, (d) its bundle."""
    systems = ("dense_transformers", "dense_transformers_batched", "minireranker")  # the class-dependent ones
    result = run_bench(BenchConfig(out=tmp_path, preset="tiny-qwen2.5-vl", candidates=3, repeats=1, marginal=0,
                                   systems=systems), log=lambda _: None)
    assert result["preset"]["name"] == "tiny-qwen2.5-vl"
    for name, s in result["systems"].items():
        assert s["total_s"]["median"] > 0, name
