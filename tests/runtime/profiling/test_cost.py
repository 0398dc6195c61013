"""The one cost model: the estimate, calibration and the bench count the same work for the same bundle and spec.

Each caller builds a Workload from what it has (bundle.json's graph parameters, the checkpoint's config, the
bench's tiny preset) and asks ``runtime/profiling/cost.py``; what differs between them is only which
parameters each counts: bundle.json's graphs hold exactly the layers (norms included) the calibration counts
from the config, and the bench leaves the norms out and applies the yes/no rows to the last token only; the
differences are checked here term by term.
"""

from __future__ import annotations

import json

import pytest

from minireranker.runtime.profiling.cost import (STAGES, Workload, decoder_layer_parameters, rerank_cost,
                                                 warm_flops)
from minireranker.runtime.profiling.estimate import DEVICES, predict, workload_from_bundle

REL = 1e-12  # figures built from the same integers: equal up to float summation order

CANDIDATES, QUERY_TEXT_TOKENS, DOC_TOKENS = 13, 7, 20.5


@pytest.fixture(scope="module")
def loaded(tiny_bundle):
    from minireranker.runtime.bundle import load_bundle

    return load_bundle(tiny_bundle)


def _calibration_and_bench(tiny_checkpoint, w: Workload, spec):
    pytest.importorskip("torch")  # the bench module sits beside the torch-only harness
    from minireranker.calibration.bench.harness import warm_rerank_flops
    from minireranker.calibration.cost import CostInputs, query_cost, spec_workload
    from minireranker.export.config import parse_model_config
    from minireranker.export.tiny import PRESETS

    config = parse_model_config(json.loads((tiny_checkpoint / "config.json").read_text()))
    q = w.query_overhead_tokens + QUERY_TEXT_TOKENS
    assert w.instruction_tokens > 0  # the bundle's instruction segment, cached with each document
    inputs = CostInputs(w.system_tokens, float(q), CANDIDATES, w.precision, w.instruction_tokens)
    calibration = query_cost(config, inputs, spec.exit_layer, spec.band, DOC_TOKENS)
    calibration_stages = warm_flops(spec_workload(config, inputs, spec.exit_layer, spec.band), CANDIDATES, q,
                                    DOC_TOKENS)
    bench = warm_rerank_flops(PRESETS["tiny"], spec, q, w.system_tokens, DOC_TOKENS, CANDIDATES, w.instruction_tokens)
    return config, q, calibration, calibration_stages, bench


def test_estimate_calibration_and_bench_agree_on_the_tiny_bundle(loaded, tiny_checkpoint):
    w, spec = workload_from_bundle(loaded), loaded.spec
    config, q, calibration, calibration_stages, bench = _calibration_and_bench(tiny_checkpoint, w, spec)
    estimate = predict(w, DEVICES["rtx-4090"], CANDIDATES, QUERY_TEXT_TOKENS, (64, 64), doc_tokens=DOC_TOKENS)
    warm = estimate["warm"]["stages"]
    a, b = spec.band
    nb, nt = b - a + 1, spec.exit_layer - b
    # the same K/V bytes per query and the same sum of stages
    assert estimate["query_segment_tokens"] == q
    assert estimate["kv_bytes_per_query"] == calibration["kv_bytes_per_query"] == CANDIDATES * (
        DOC_TOKENS * w.kv_bytes_per_token + w.instruction_kv_bytes)
    assert calibration["flops_per_query"] == pytest.approx(sum(calibration_stages.values()), rel=REL)
    # calibration counts each layer's four norms and the tail's final norm + yes/no rows on every query token;
    # the bench counts linear weights only and the yes/no rows on each candidate's last token
    t = config.text
    layer = decoder_layer_parameters(t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.intermediate_size)
    norms = layer - decoder_layer_parameters(t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim,
                                             t.intermediate_size, norms=False)
    assert norms == 2 * t.head_dim + 2 * t.hidden_size
    d, n = t.hidden_size, CANDIDATES
    assert calibration_stages["query_head"] - bench["query_head"] == pytest.approx(2 * a * norms * q, rel=REL)
    assert calibration_stages["band"] - bench["band"] == pytest.approx(2 * nb * norms * n * q, rel=REL)
    # (and the exit layer's rows it skips, all but the last row's, hold the norms in one count only)
    assert nt > 0
    assert calibration_stages["tail"] - bench["tail"] == pytest.approx(
        2 * (nt * norms + 3 * d) * n * q - n * 4 * d - 2 * n * norms * (q - 1), rel=REL)
    # the estimate reads each graph's parameters from bundle.json: the very layers the calibration counts
    assert {k: w.params[k] for k in ("query_head", "band", "tail")} == {
        "query_head": a * layer, "band": nb * layer, "tail": nt * layer + 3 * d}
    for stage in ("query_head", "band", "tail"):
        assert warm[stage]["flops"] == pytest.approx(calibration_stages[stage], rel=REL), stage


def test_workload_reads_the_shapes_bundle_json_records(loaded):
    w, model = workload_from_bundle(loaded), loaded.model
    assert (w.vision_width, w.vision_depth) == (model["vision"]["hidden_size"], model["vision"]["depth"])
    assert w.attention_width == model["num_attention_heads"] * model["head_dim"]


def test_rerank_cost_is_device_free_but_for_where_memory_sits():
    w = Workload("w", "fp16", 64, 64, 2, 32, (1, 2), 3, 1.0, None, 5, 3, 1, {"query_head": 10, "band": 20, "tail": 30},
                 32, 2, 2, 32, 1024, 16384)
    cpu, gpu, jetson = (rerank_cost(w, 40, 4, doc_tokens=9.0, memory=m) for m in ("cpu", "gpu", "jetson"))
    assert list(cpu.stages) == list(STAGES) and cpu.query_tokens == 7  # 4 of the user's + 3 of the template
    assert cpu.kv_bytes == 40 * 9.0 * w.kv_bytes_per_token
    for stage in STAGES:
        assert cpu.stages[stage].flops == gpu.stages[stage].flops == jetson.stages[stage].flops
    assert gpu.stages["band"].link_bytes == cpu.kv_bytes and cpu.stages["band"].link_bytes == 0
    assert jetson.stages["band"].device_bytes == cpu.stages["band"].device_bytes + 2 * cpu.kv_bytes
    assert cpu.flops_per_query == sum(cpu.stages[s].flops for s in ("query_head", "band", "tail"))


def test_the_instruction_segment_adds_keys_and_entry_bytes_and_the_exit_layer_one_row():
    """Every query row also attends to the instruction's I keys (A..E), each entry carries its K/V, and the
    exit layer projects K and V for every row but runs the rest for the last row only, term by term."""
    from dataclasses import replace

    layer = decoder_layer_parameters(64, 2, 2, 32, 128, norms=False)
    params = {"query_head": 2 * layer, "band": 2 * layer, "tail": 3 * layer}
    w0 = Workload("w", "fp32", 64, 64, 2, 32, (2, 3), 6, 1.0, None, 5, 3, 1, params, 32, 2, 2, 32, 1024, 16384)
    w = replace(w0, instruction_tokens=4)
    n, q, t, i, s, aw = 10, 9, 20.0, 4, 5, 64
    f0, f = warm_flops(w0, n, q, t), warm_flops(w, n, q, t)
    assert f["query_head"] - f0["query_head"] == pytest.approx(4 * q * i * aw * 2, rel=REL)
    assert f["band"] - f0["band"] == pytest.approx(4 * n * q * i * aw * 2, rel=REL)
    assert f["tail"] - f0["tail"] == pytest.approx(4 * n * i * aw * (2 * q + 1), rel=REL)  # 3 tail layers
    kv_proj = 2 * 64 * 2 * 32
    assert f["tail"] == pytest.approx(2 * n * (2 * layer * q + kv_proj * q + (layer - kv_proj))
                                      + 4 * n * aw * (2 * q * (s + i + q / 2) + s + i + q), rel=REL)
    assert w.instruction_kv_bytes == (6 - 2 + 1) * 2 * 2 * 32 * 4 * i
    assert rerank_cost(w, n, 6, doc_tokens=t).kv_bytes == n * (t * w.kv_bytes_per_token + w.instruction_kv_bytes)
