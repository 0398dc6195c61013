"""Checks and times the band-attention Triton kernel (engines/band_attention.py) on a CUDA GPU.

    python benchmarks/gpu_check.py [--time-limit 300] [--repeats 20] [--out FILE]

For a GPU machine with torch (CUDA) and triton, no TensorRT. In order, while ``--time-limit`` seconds last:

(a) checks: the kernel against the float64 numpy reference at fp16 and fp32 over a few configs (GQA 1..8,
    head dims 16..128, S and I 0 or not, ragged doc lens with 0 and T), max |diff| against atol 2e-3 / 1e-4;
(b) timing at Qwen3-VL-2B's band shapes: 16 query heads, 8 K/V heads, head dim 128, 100 candidates, doc lens
    random in 250..1000 (T = their max), S 20, I 12, Q 24, fp16, 4 band layers (one call per layer on that
    layer's slices of [N, 4, Hkv, T, d], as the band graph holds them) against torch's SDPA on the same work:
    per candidate the four segments concatenated, padded to T, a boolean mask, ``enable_gqa`` (timed on
    prebuilt K/V, and with the concatenation inside the timed region), and SDPA on prebuilt K/V repeated per
    query head (no GQA asked of its backends). CUDA events, warm-ups, the median of ``--repeats``; the kernel
    at three tile sizes, the best one compared;
(c) one JSON object on stdout (device, compute capability, versions, each check's max diff, timings in ms,
    speedups), also written to ``--out``.

Past the time limit it stops where it is and still prints what it has (``stopped_early``); it exits 1 when a
check is past its tolerance or a step failed (``error``), 0 otherwise. Without a CUDA
device it prints ``{"skipped": "no CUDA device"}`` and exits 0; nothing else runs. It imports the package
from this checkout when it is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ATOL = {"fp16": 2e-3, "fp32": 1e-4}  # as tests/engines/test_band_kernel.py, which says why
# name: (N, Hkv, G, Q, d, S, T, I)
CHECKS = {
    "tiny-d16": (3, 2, 2, 3, 16, 0, 20, 0),
    "mha-d64-q1": (5, 4, 1, 1, 64, 7, 65, 3),
    "gqa4-d64-q17": (3, 2, 4, 17, 64, 0, 130, 0),
    "qwen3vl-heads": (4, 8, 2, 24, 128, 20, 300, 12),
    "gqa8-d128-q64": (2, 1, 8, 64, 128, 5, 200, 4),
}
QWEN = {"n": 100, "hkv": 8, "group": 2, "q_len": 24, "d": 128, "s_len": 20, "i_len": 12, "layers": 4,
        "doc_lens": (250, 1000)}
TILES = [(None, None), (64, 32), (64, 128)]  # (block_m, block_n): the kernel's default, then two others


class TimeLimit(Exception):
    """The overall time limit passed."""


def import_band_attention() -> types.ModuleType:
    """``minireranker.engines.band_attention``, from this checkout when the package is not installed."""
    try:
        import minireranker.engines.band_attention as module
    except ModuleNotFoundError as error:
        if error.name != "minireranker":
            raise
        package = types.ModuleType("minireranker")
        package.__path__ = [str(ROOT)]  # the repository's top-level folders are its sub-packages
        sys.modules["minireranker"] = package
        import minireranker.engines.band_attention as module
    return module


def band_inputs(torch: Any, n: int, hkv: int, group: int, q_len: int, d: int, s_len: int, t_len: int, i_len: int,
                lens: list[int], dtype: Any, layers: int = 1, seed: int = 0) -> dict[str, Any]:
    """Band inputs on the GPU; K/V laid out [N, layers, Hkv, T, d] like the band graph's, q per layer."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> Any:
        return (torch.randn(shape, generator=gen, device="cuda") * scale).to(dtype)

    return {
        "q": randn(layers, n, hkv * group, q_len, d, scale=0.5),
        "system_k": randn(layers, 1, hkv, s_len, d, scale=0.5), "system_v": randn(layers, 1, hkv, s_len, d),
        "doc_k": randn(n, layers, hkv, t_len, d, scale=0.5), "doc_v": randn(n, layers, hkv, t_len, d),
        "doc_lens": torch.tensor(lens, dtype=torch.int32, device="cuda"),
        "instruction_k": randn(n, layers, hkv, i_len, d, scale=0.5),
        "instruction_v": randn(n, layers, hkv, i_len, d),
        "own_k": randn(layers, n, hkv, q_len, d, scale=0.5), "own_v": randn(layers, n, hkv, q_len, d),
    }


def layer_inputs(inputs: dict[str, Any], layer: int) -> dict[str, Any]:
    """One layer's views of :func:`band_inputs` (no copies), in band_attention's layout."""
    out = {name: inputs[name][layer] for name in ("q", "own_k", "own_v")}
    out.update({name: inputs[name][layer, 0] for name in ("system_k", "system_v")})
    out.update({name: inputs[name][:, layer] for name in ("doc_k", "doc_v", "instruction_k", "instruction_v")})
    return {**out, "doc_lens": inputs["doc_lens"]}


def run_checks(torch: Any, band: types.ModuleType, deadline: float, results: list[dict[str, Any]]) -> None:
    """(a): every config at fp16 and fp32 against the float64 reference, appended to ``results`` as it goes."""
    rng = np.random.default_rng(0)
    for name, (n, hkv, group, q_len, d, s_len, t_len, i_len) in CHECKS.items():
        lens = [0, t_len] + rng.integers(0, t_len + 1, n - 2).tolist()
        for dtype_name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
            check_time(deadline)
            inputs = layer_inputs(band_inputs(torch, n, hkv, group, q_len, d, s_len, t_len, i_len, lens[:n], dtype), 0)
            out = band.band_attention(**inputs).float().cpu().numpy()
            expected = band.band_attention_reference(**{k: v.cpu().float().numpy() for k, v in inputs.items()})
            diff = float(np.abs(out - expected).max())
            results.append({"config": name, "dtype": dtype_name, "max_abs_diff": diff, "atol": ATOL[dtype_name],
                            "ok": diff <= ATOL[dtype_name]})


def median_ms(torch: Any, fn: Callable[[], Any], repeats: int, deadline: float, warmup: int = 3) -> float:
    """Median of ``repeats`` timings of ``fn`` by CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        check_time(deadline)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_operands(torch: Any, x: dict[str, Any], t_len: int) -> tuple[Any, Any, Any]:
    """One layer's K/V concatenated per candidate (system, doc padded to T, instruction, own) and its mask."""
    n, hkv, q_len, _ = x["own_k"].shape
    s_len, i_len = x["system_k"].shape[1], x["instruction_k"].shape[2]
    k = torch.cat([x["system_k"].expand(n, -1, -1, -1), x["doc_k"], x["instruction_k"], x["own_k"]], dim=2)
    v = torch.cat([x["system_v"].expand(n, -1, -1, -1), x["doc_v"], x["instruction_v"], x["own_v"]], dim=2)
    dev = x["q"].device
    doc = torch.arange(t_len, device=dev)[None, :] < x["doc_lens"][:, None]  # [N, T]
    mask = torch.cat([torch.ones(n, s_len, dtype=torch.bool, device=dev), doc,
                      torch.ones(n, i_len, dtype=torch.bool, device=dev)], dim=1)
    mask = torch.cat([mask[:, None, :].expand(n, q_len, -1),
                      torch.ones(q_len, q_len, dtype=torch.bool, device=dev).tril().expand(n, -1, -1)], dim=2)
    return k, v, mask[:, None]  # [N, Hkv, P, d] x2, [N, 1, Q, P]


def run_timing(torch: Any, band: types.ModuleType, repeats: int, deadline: float, result: dict[str, Any]) -> None:
    """(b): the Qwen3-VL-2B band, 4 layers, fp16; fills ``result`` as it goes (so a stop keeps the rest)."""
    c = QWEN
    rng = np.random.default_rng(1)
    lens = rng.integers(c["doc_lens"][0], c["doc_lens"][1] + 1, c["n"]).tolist()
    t_len = max(lens)  # the band pads every candidate's doc K/V to the batch's longest
    inputs = band_inputs(torch, c["n"], c["hkv"], c["group"], c["q_len"], c["d"], c["s_len"], t_len, c["i_len"],
                         lens, torch.float16, layers=c["layers"])
    layers = [layer_inputs(inputs, j) for j in range(c["layers"])]
    result["shape"] = {**{k: v for k, v in c.items() if k != "doc_lens"}, "hq": c["hkv"] * c["group"],
                       "doc_lens_range": list(c["doc_lens"]), "doc_lens_min_max": [min(lens), t_len], "T": t_len}
    time_triton(torch, band, layers, repeats, deadline, result)
    # the K/V bytes the kernel must read (visible keys only), fp16, every layer
    kv_bytes = 2 * 2 * c["hkv"] * c["d"] * (c["n"] * (c["s_len"] + c["i_len"] + c["q_len"]) + sum(lens))
    result["triton_visible_kv_gb_per_s"] = c["layers"] * kv_bytes / (result["triton_best_ms"] * 1e-3) / 1e9
    time_sdpa(torch, band, layers, t_len, repeats, deadline, result)


def time_triton(torch: Any, band: types.ModuleType, layers: list[dict[str, Any]], repeats: int, deadline: float,
                result: dict[str, Any]) -> None:
    """One band pass (a call per layer) for each tile size in ``TILES``; the best in ``triton_best_ms``."""
    result["triton_ms"] = {}
    for block_m, block_n in TILES:
        check_time(deadline)
        tile = f"block_m={block_m or 'default'},block_n={block_n or 'default'}"
        try:
            result["triton_ms"][tile] = median_ms(torch, lambda: [
                band.band_attention(**x, block_m=block_m, block_n=block_n) for x in layers], repeats, deadline)
        except TimeLimit:
            raise
        except Exception as error:  # a tile this GPU cannot hold (shared memory): the others still run
            result["triton_ms"][tile] = f"{type(error).__name__}: {error}"
    result["triton_best_ms"] = min(ms for ms in result["triton_ms"].values() if isinstance(ms, float))


def time_sdpa(torch: Any, band: types.ModuleType, layers: list[dict[str, Any]], t_len: int, repeats: int,
              deadline: float, result: dict[str, Any]) -> None:
    """SDPA on the same pass: prebuilt concatenated K/V with enable_gqa, the same with the concatenation
    timed, and prebuilt K/V repeated per query head; each also as the kernel's best speedup over it."""
    import torch.nn.functional as F

    best = result["triton_best_ms"]
    gqa = {"scale": 1 / math.sqrt(layers[0]["q"].shape[-1]), "enable_gqa": True}
    operands = [sdpa_operands(torch, x, t_len) for x in layers]
    out_sdpa = F.scaled_dot_product_attention(layers[0]["q"], *operands[0][:2], attn_mask=operands[0][2], **gqa)
    out_triton = band.band_attention(**layers[0])
    result["triton_vs_sdpa_max_abs_diff"] = float((out_triton.float() - out_sdpa.float()).abs().max())

    def concat_then_sdpa(x: dict[str, Any]) -> Any:
        k, v, mask = sdpa_operands(torch, x, t_len)
        return F.scaled_dot_product_attention(x["q"], k, v, attn_mask=mask, **gqa)

    group = layers[0]["q"].shape[1] // layers[0]["own_k"].shape[1]
    repeated = [(k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), m) for k, v, m in operands]
    runs = {
        "sdpa_gqa": lambda: [F.scaled_dot_product_attention(x["q"], k, v, attn_mask=m, **gqa)
                             for x, (k, v, m) in zip(layers, operands)],
        "sdpa_gqa_with_concat": lambda: [concat_then_sdpa(x) for x in layers],
        "sdpa_repeated_kv": lambda: [F.scaled_dot_product_attention(x["q"], k, v, attn_mask=m, scale=gqa["scale"])
                                     for x, (k, v, m) in zip(layers, repeated)],
    }
    for name, run in runs.items():
        check_time(deadline)
        result[f"{name}_ms"] = median_ms(torch, run, repeats, deadline)
        result[f"speedup_vs_{name}"] = result[f"{name}_ms"] / best


def check_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeLimit()


def report(torch: Any, time_limit: float, repeats: int) -> dict[str, Any]:
    """Run (a) then (b) within ``time_limit`` seconds; the JSON object of (c)."""
    import triton

    started = time.monotonic()
    deadline = started + time_limit
    band = import_band_attention()
    props = torch.cuda.get_device_properties(0)
    result: dict[str, Any] = {
        "device": props.name, "compute_capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
        "cuda": torch.version.cuda, "triton": triton.__version__, "time_limit_s": time_limit,
        "checks": [], "timing": {}, "stopped_early": None, "error": None}

    def on_alarm(signum: int, frame: Any) -> None:  # a step stuck past the limit (a long compile, a hang)
        raise TimeLimit()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(time_limit) + 5))
    try:
        run_checks(torch, band, deadline, result["checks"])
        run_timing(torch, band, repeats, deadline, result["timing"])
    except TimeLimit:
        result["stopped_early"] = f"time limit of {time_limit:.0f} s reached"
    except Exception as error:  # still print what we have: the JSON is the point of the run
        result["error"] = result["stopped_early"] = f"{type(error).__name__}: {error}"
    finally:
        signal.alarm(0)
    result["all_checks_ok"] = all(c["ok"] for c in result["checks"])  # of those that ran
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole run (default 300)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--out", type=Path, help="also write the JSON object here")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    try:
        import triton  # noqa: F401
    except ImportError as error:
        print(json.dumps({"error": f"triton is not importable: {error}"}))
        return 1
    result = report(torch, args.time_limit, args.repeats)
    text = json.dumps(result, indent=None)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    # a time-limit stop is not a failure; an error or a check past its tolerance is
    return 1 if result["error"] or not result["all_checks_ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
