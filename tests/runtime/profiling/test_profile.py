"""``minireranker profile``: the profiler end to end on the tiny bundle, telemetry parsers on recorded
tegrastats output, NVML through a fake module, the estimate for every device, and the command line.

Structure and internal consistency only: no assertion here depends on how fast this machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from minireranker.runtime.profiling.estimate import (DEVICE_NAMES, DEVICES, STAGES, EstimateError, estimate, get_device,
                                           qwen3_vl_2b_workload)
from minireranker.runtime.profiling.profile import (COLD_MODES, ProfileConfig, ProfileError, latency_stats, run_profile,
                                          synthetic_query)
from minireranker.runtime.profiling.telemetry import (NvmlSampler, TegrastatsSampler, evict_page_cache, open_samplers,
                                            parse_tegrastats, parse_tegrastats_line, summarize)
from minireranker.tools.profile_cli import register

DATA = Path(__file__).parent / "data"
ORDER_EPS = 1e-9  # ms; percentiles of a stage vs the total are compared exactly, up to float rounding


def check_stats(stats: dict, n: int) -> None:
    assert stats["n"] == n
    assert 0 <= stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"] + ORDER_EPS
    assert stats["min"] <= stats["mean"] <= stats["max"] + ORDER_EPS


def check_run(run: dict, repeats: int) -> None:
    check_stats(run["total"], repeats)
    check_stats(run["other"], repeats)
    assert set(run["stages"]) == set(STAGES)
    for name, stage in run["stages"].items():
        check_stats(stage, repeats)
        for p in ("p50", "p95", "p99", "max"):  # each sample's stage <= its total, so every order statistic is too
            assert stage[p] <= run["total"][p] + ORDER_EPS, (name, p)
    assert run["query_segment_tokens"] > run["query_tokens"]  # the template wraps the query


@pytest.fixture(scope="module")
def profiled(tiny_bundle, tmp_path_factory):
    cache, out = tmp_path_factory.mktemp("profile-cache"), tmp_path_factory.mktemp("profile-out")
    config = ProfileConfig.tiny(query_tokens=(4, 9))
    report = run_profile(tiny_bundle, cache, config, out_dir=out, progress=False)
    return report, config, cache, out


def test_profile_json_structure_and_consistency(profiled):
    report, config, _, _ = profiled
    data = report.data
    assert data["kind"] == "minireranker-profile" and data["time_unit"] == "ms"
    assert set(data["cold_definition"]) == set(COLD_MODES)
    assert data["documents"]["source"] == "synthetic" and data["documents"]["image_tokens"] > 0
    (chain,) = data["providers"]
    assert chain["providers"] and "CPUExecutionProvider" in chain["session_providers"]
    check_stats(chain["index_per_document"], max(config.candidates))  # a fresh cache: every pool document indexed
    runs = chain["runs"]
    warm = [r for r in runs if r["cache"] == "warm"]
    assert [(r["query_tokens"], r["candidates"]) for r in warm] == [(q, n) for q in (4, 9) for n in (2, 5)]
    for mode in ("cold-unindexed", "cold-page-cache"):
        cold = [r for r in runs if r["cache"] == mode]
        assert [r["candidates"] for r in cold] == [2, 5] and {r["query_tokens"] for r in cold} == {9}
        for r in cold:
            check_run(r, config.cold_repeats)
    for r in warm:
        check_run(r, config.repeats)
        assert r["stages"]["index"]["max"] == 0.0  # warm: nothing indexed inside the rerank
        assert r["first_call_ms"] > 0
    for r in runs:
        assert r["stages"]["band"]["p50"] > 0 and r["stages"]["tail"]["p50"] > 0
        assert r["stages"]["query_head"]["p50"] > 0  # the tiny bundle's band starts at A=1: a query head runs
    for r in runs:
        if r["cache"] == "cold-unindexed":
            assert r["stages"]["index"]["min"] > 0
        for name, part in r["parts"].items():  # finer timings the runtime may report, e.g. inside index
            check_stats(part, r["repeats"])
            assert part["max"] <= r["total"]["max"] + ORDER_EPS, name
    # Synthetic documents all have the same size, so the K/V read per query is proportional to N.
    by_n = {r["candidates"]: r["kv_bytes_read_per_query"] for r in warm if r["query_tokens"] == 4}
    assert by_n[5] * 2 == pytest.approx(by_n[2] * 5, rel=0)
    assert by_n[2] % (2 * data["documents"]["kv_bytes_per_token"]) == 0


def test_profile_writes_json_table_and_png(profiled):
    report, _, _, out = profiled
    assert [f.name for f in report.files] == ["profile.json", "profile.txt", "profile.png"]
    assert json.loads((out / "profile.json").read_text()) == json.loads(json.dumps(report.data))
    table = (out / "profile.txt").read_text()
    assert "total p50" in table and "cold-unindexed" in table and "cold-page-cache" in table
    assert len([ln for ln in table.splitlines() if ln.startswith("warm ")]) == 4
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_profile_on_the_same_cache_starts_warm(profiled, tiny_bundle):
    _, config, cache, _ = profiled
    again = run_profile(tiny_bundle, cache, ProfileConfig.tiny(repeats=1, cold=()), progress=False)
    (chain,) = again.data["providers"]
    assert chain["index_per_document"]["n"] == 0  # the pool is already indexed under its profile ids
    assert {r["cache"] for r in chain["runs"]} == {"warm"} and again.files == []


def test_synthetic_queries_have_the_asked_token_count(tiny_bundle):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    for n in (1, 4, 16, 64, 200):
        text, count = synthetic_query(tokenizer, n)
        assert count == n == len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_profile_config_rejects_bad_values():
    with pytest.raises(ProfileError, match="candidates"):
        ProfileConfig(candidates=(0, 10))
    with pytest.raises(ProfileError, match="cold mode"):
        ProfileConfig(cold=("lukewarm",))
    with pytest.raises(ProfileError, match="512"):
        ProfileConfig(query_tokens=(1000,))
    assert ProfileConfig(candidates=(100, 10, 10)).candidates == (10, 100)


def test_latency_stats_orders_percentiles():
    stats = latency_stats([0.003, 0.001, 0.002, 0.010])
    check_stats(stats, 4)
    assert stats["p50"] == pytest.approx(2.5) and stats["max"] == pytest.approx(10.0)
    assert latency_stats([]) == {"n": 0}


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux/Unix only")
def test_page_cache_eviction_advises_every_file(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.kv", "y.kv"):
        (tmp_path / name).write_bytes(b"0" * 8192)
    assert evict_page_cache(tmp_path) == 2


# -- estimate ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICE_NAMES)
def test_estimate_for_every_device(device, tiny_bundle):
    report = estimate(device, tiny_bundle, candidates=(2, 100), query_tokens=(4, 16), image_size=(64, 64))
    assert report["device"]["source"] and report["device"]["bandwidth_gbs"] > 0
    assert len(report["points"]) == 4
    for point in report["points"]:
        for cache in ("warm", "cold"):
            stages = point[cache]["stages"]
            assert set(stages) == set(STAGES)
            assert all(s["seconds"] >= 0 and s["bound"] for s in stages.values())
            assert point[cache]["total_s"] == pytest.approx(sum(s["seconds"] for s in stages.values()))
        assert point["warm"]["stages"]["index"]["seconds"] == 0
        assert point["cold"]["stages"]["index"]["seconds"] == pytest.approx(
            point["candidates"] * point["index_per_document"]["seconds"])
    small, large = (p for p in report["points"] if p["query_tokens"] == 16)
    assert large["warm"]["stages"]["band"]["flops"] > small["warm"]["stages"]["band"]["flops"] > 0
    assert large["kv_bytes_per_query"] * 2 == small["kv_bytes_per_query"] * 100


def test_estimate_without_a_bundle_uses_qwen3_vl_2b_shapes():
    w = qwen3_vl_2b_workload()
    assert w.kv_bytes_per_token == 28 * 2 * 8 * 128 * 2  # exact spec, fp16: every layer's K and V
    assert w.image_tokens(1024, 1024) == 1024
    report = estimate("agx-orin", None, candidates=(100,), query_tokens=(16,))
    band = report["points"][0]["warm"]["stages"]["band"]
    orin = DEVICES["agx-orin-64gb"]
    # The roofline's compute term uses the bundle precision's peak (fp16 tensor cores here).
    assert band["terms_s"]["compute"] == pytest.approx(band["flops"] / (orin.peak_tflops["fp16"] * 1e12 * 0.4))
    assert orin.bandwidth_gbs == 204.8 and "204.8 GB/s" in orin.source


def test_unknown_device_names_the_known_ones():
    with pytest.raises(EstimateError, match="agx-orin-64gb"):
        get_device("pdp-11")
    assert get_device("Orin Nano").name == "orin-nano-8gb" and get_device("H100").name == "h100-sxm"


def test_this_cpu_estimate_is_compared_with_the_measurement(tiny_bundle, tmp_path):
    report = run_profile(tiny_bundle, None, ProfileConfig.tiny(cold=("unindexed",)), estimate_device="this-cpu",
                         out_dir=tmp_path, progress=False)
    data = report.data
    assert data["estimate"]["device"]["name"] == "this-cpu"
    assert data["estimate"]["device"]["measured"]["matmul_gflops"] > 0
    assert data["providers"][0]["providers"] == ["CPUExecutionProvider"]
    rows = data["comparison"]
    assert {(r["cache"], r["candidates"]) for r in rows} == {(c, n) for c in ("warm", "cold-unindexed") for n in (2, 5)}
    for row in rows:
        for stage in ("query_head", "kv_lookup", "kv_read", "band", "tail", "total"):
            cell = row["stages"][stage]
            assert cell["measured_p50_ms"] > 0 and cell["predicted_ms"] > 0
            assert cell["ratio"] == pytest.approx(cell["measured_p50_ms"] / cell["predicted_ms"])
    assert "measured p50 vs predicted" in report.table
    assert json.loads((tmp_path / "profile.json").read_text())["comparison"] == json.loads(json.dumps(rows))


# -- telemetry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, lines", [("agx_orin_jp6", 3), ("orin_nano_jp6", 3), ("xavier_jp5", 2),
                                         ("nano_jp4", 2), ("thor_style", 2)])
def test_tegrastats_recordings_parse(name, lines):
    samples = parse_tegrastats((DATA / f"tegrastats_{name}.txt").read_text().splitlines())
    assert len(samples) == lines
    for s in samples:
        assert s["ram_total_mb"] >= s["ram_used_mb"] > 0 and 0 <= s["gpu_load_pct"] <= 100
        assert s["cpu_online_cores"] >= 4 and any(k.startswith("power_") for k in s)
        assert any(k.startswith("temp_") for k in s)


def test_tegrastats_fields_per_format():
    orin = parse_tegrastats((DATA / "tegrastats_agx_orin_jp6.txt").read_text().splitlines())
    assert orin[0]["gpu_load_pct"] == 97 and orin[0]["gpu_freq_mhz"] == 1300 and orin[2]["gpu_freq_mhz"] == 305
    assert orin[0]["power_vdd_gpu_soc_mw"] == 14712 and orin[0]["power_vdd_gpu_soc_avg_mw"] == 9876
    assert orin[0]["power_vin_sys_5v0_mw"] == 6132 and orin[0]["cpu_online_cores"] == 12
    assert orin[0]["emc_load_pct"] == 31 and orin[0]["emc_freq_mhz"] == 3199 and orin[0]["temp_tj_c"] == 55.562
    nano = parse_tegrastats((DATA / "tegrastats_orin_nano_jp6.txt").read_text().splitlines())
    assert nano[2]["power_vdd_in_mw"] == 5139 and nano[2]["power_vdd_in_avg_mw"] == 7580
    assert nano[0]["cpu_online_cores"] == 4 and nano[0]["swap_used_mb"] == 120  # two cores 'off'
    xavier = parse_tegrastats_line((DATA / "tegrastats_xavier_jp5.txt").read_text().splitlines()[0])
    assert xavier["gpu_freq_mhz"] == 1377 and xavier["power_gpu_mw"] == 9124 and xavier["temp_gpu_c"] == 47.5
    legacy = parse_tegrastats_line((DATA / "tegrastats_nano_jp4.txt").read_text().splitlines()[0])
    assert legacy["power_pom_5v_gpu_mw"] == 1811 and legacy["power_pom_5v_in_avg_mw"] == 4210
    thor = parse_tegrastats_line((DATA / "tegrastats_thor_style.txt").read_text().splitlines()[0])
    assert thor["gpu_load_pct"] == 45 and "gpu_freq_mhz" not in thor and thor["emc_load_pct"] == 17
    assert parse_tegrastats_line("tegrastats: unknown option --foo") == {}
    assert "temp_gpu_c" not in parse_tegrastats_line("RAM 1/2MB GPU@-256C")  # an absent sensor


def test_summarize_mean_and_max_within_a_window():
    orin = parse_tegrastats((DATA / "tegrastats_agx_orin_jp6.txt").read_text().splitlines())
    summary = summarize(orin)
    assert summary["gpu_load_pct"] == {"mean": pytest.approx((97 + 99 + 0) / 3), "max": 99, "min": 0, "n": 3}
    timed = [(1.0, {"x": 1.0}), (2.0, {"x": 5.0}), (3.0, {"x": 9.0})]
    assert summarize(timed, 1.5, 3.0)["x"] == {"mean": 7.0, "max": 9.0, "min": 5.0, "n": 2}


def test_tegrastats_sampler_reads_a_subprocess(tmp_path):
    """The sampler's subprocess plumbing, with a stand-in that prints recorded lines (no Jetson here)."""
    fake = tmp_path / "tegrastats"
    recording = str(DATA / "tegrastats_orin_nano_jp6.txt")
    fake.write_text(f"#!{sys.executable}\nimport sys, time\nlines = open({recording!r}).read().split(chr(10))\n"
                    "assert sys.argv[1:] == ['--interval', '20']\n"
                    "while True:\n    for line in lines:\n        print(line, flush=True)\n        time.sleep(0.02)\n")
    fake.chmod(0o755)
    with TegrastatsSampler(20, str(fake)) as sampler:
        deadline = time.time() + 120  # a bound that only fails loudly: the loop ends at 3 samples
        while len(sampler.samples) < 3 and time.time() < deadline:
            time.sleep(0.02)
    assert len(sampler.samples) >= 3
    assert sampler.samples[0][1]["gpu_freq_mhz"] == 624
    assert [t for t, _ in sampler.samples] == sorted(t for t, _ in sampler.samples)


class FakeNvml:
    """Just enough of pynvml: one device, temperature unsupported (as on some boards)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError_NotSupported(Exception):
        pass

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def _log(self, name: str) -> None:
        with self.lock:
            self.calls.append(name)

    def nvmlInit(self):
        self._log("init")

    def nvmlShutdown(self):
        self._log("shutdown")

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=87, memory=41)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=6 * 2**30, total=24 * 2**30, free=18 * 2**30)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return {self.NVML_CLOCK_SM: 2520, self.NVML_CLOCK_MEM: 10501}[clock]

    def nvmlDeviceGetPowerUsage(self, handle):
        return 312_456  # mW

    def nvmlDeviceGetTemperature(self, handle, sensor):
        raise self.NVMLError_NotSupported()


def test_nvml_sampler_with_a_fake_module():
    nvml = FakeNvml()
    with NvmlSampler(0.005, nvml=nvml) as sampler:
        deadline = time.time() + 120  # a bound that only fails loudly: the loop ends at 3 samples
        while len(sampler.samples) < 3 and time.time() < deadline:
            time.sleep(0.01)
    sample = sampler.samples[0][1]
    assert sample == {"gpu_load_pct": 87, "mem_load_pct": 41, "mem_used_mb": 6144, "mem_total_mb": 24576,
                      "gpu_freq_mhz": 2520, "mem_freq_mhz": 10501, "power_mw": 312_456}  # no temperature
    assert nvml.calls[0] == "init" and nvml.calls[-1] == "shutdown"


def test_open_samplers_finds_only_what_is_present(monkeypatch):
    monkeypatch.setattr("minireranker.runtime.profiling.telemetry.shutil.which", lambda *args, **kwargs: None)  # no tegrastats
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert open_samplers("auto") == [] and open_samplers("off") == []
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    (sampler,) = open_samplers("auto", 0.01)
    assert isinstance(sampler, NvmlSampler)


def test_profile_reports_nvml_telemetry_beside_latencies(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    config = ProfileConfig.tiny(telemetry="nvml", telemetry_interval_s=0.002, cold=())
    report = run_profile(tiny_bundle, tmp_path / "cache", config, progress=False)
    telemetry = report.data["providers"][0]["telemetry"]
    assert telemetry["sources"] == ["nvml"]
    assert telemetry["summary"]["gpu_load_pct"]["mean"] == 87 and telemetry["summary"]["power_mw"]["max"] == 312_456
    assert "telemetry (nvml)" in report.table and "power_mw" in report.table


# -- command line -------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minireranker")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_profile_json(tiny_bundle, tmp_path, capsys):
    args = parser().parse_args(["profile", str(tiny_bundle), "--cache", str(tmp_path / "kv"), "--candidates", "2,3",
                                "--query-tokens", "5", "--repeats", "2", "--cold", "unindexed", "--cold-repeats", "1",
                                "--image-size", "64x64", "--telemetry", "off", "--out", str(tmp_path / "out"),
                                "--quiet", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    runs = data["providers"][0]["runs"]
    assert [(r["cache"], r["candidates"]) for r in runs] == [("warm", 2), ("warm", 3), ("cold-unindexed", 2),
                                                             ("cold-unindexed", 3)]
    assert data["config"]["image_size"] == [64, 64] and (tmp_path / "out" / "profile.png").is_file()


def test_cli_estimate_without_a_bundle(tmp_path, capsys):
    args = parser().parse_args(["profile", "--estimate", "orin-nano", "--candidates", "10,100", "--out",
                                str(tmp_path), "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Jetson Orin Nano 8GB" in out and "68 GB/s" in out and "bound" in out
    assert json.loads((tmp_path / "profile.json").read_text())["kind"] == "minireranker-estimate"


def test_cli_profile_needs_a_bundle_and_a_cache(tiny_bundle, tmp_path):
    args = parser().parse_args(["profile", "--quiet", "--out", str(tmp_path)])
    with pytest.raises(ProfileError, match="BUNDLE"):
        args.func(args)
    args = parser().parse_args(["profile", str(tiny_bundle), "--quiet", "--out", str(tmp_path)])
    with pytest.raises(ProfileError, match="--cache"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser().parse_args(["profile", str(tiny_bundle), "--image-size", "big"])


def test_cli_help_states_cold_and_the_model(capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["profile", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for needle in ("cold means", "unindexed", "page-cache", "roofline", "FLOPs / (peak x compute_eff)",
                   "this-cpu", "agx-orin-64gb", "orin-nano-8gb", "agx-thor", "rtx-4090", "h100-sxm", "--query-tokens"):
        assert needle in text, needle
