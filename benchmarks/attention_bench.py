"""Times the band and tail engines of one bench preset under each attention form, side by side.

    python benchmarks/attention_bench.py --out DIR [--preset small] [--attention portable,fused]
                                         [--batch 32] [--doc-len 253] [--query-len 25] [--repeats 15]

It writes the preset's checkpoint (random weights, seeded), builds one bundle per attention form with the
preset's spec (``--no-validate`` skips the build's checks against the torch reference), then feeds the
band and tail graphs the shapes of one warm rerank batch: ``--batch`` candidates, ``--doc-len`` document
tokens (the last quarter of the candidates padded by ~10%), a query segment of ``--query-len`` tokens, the
bundle's system and instruction segments. Each form is timed in turn, interleaved, for ``--repeats`` rounds;
the median per call is reported. The graphs run in the runtime's own runner (``engines/onnxrt.py``,
whose sessions do not spin-wait between calls). The outputs of every form are compared with the first form's (same
weights, same inputs; float32 atol 1e-4).

Writes ``DIR/attention.json`` and ``DIR/attention.md``. Measure on a quiet machine: nothing else heavy
running, the same thread count for every form (ONNX Runtime's default).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _feeds(meta: dict, arrays: dict[str, np.ndarray], batch: int, doc_len: int, query_len: int,
           seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    spec = meta["spec"]
    a, b = spec["band"]
    e = spec["exit_layer"]
    sk, sv = arrays["system_k"], arrays["system_v"]          # [layers, 1, Hkv, S, d]
    hkv, d = sk.shape[2], sk.shape[4]
    i_len = arrays["instruction_k"].shape[3]
    hidden_size = arrays["instruction_hidden"].shape[2]
    lb, lt = b - a + 1, e - b

    def kv(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    mask = np.ones((batch, doc_len), dtype=bool)
    mask[3 * batch // 4:, doc_len - doc_len // 10:] = False  # a quarter of the batch padded
    start = 256 + i_len
    positions = np.broadcast_to(np.arange(start, start + query_len, dtype=np.int64), (3, batch, query_len)).copy()
    band = {"hidden": kv(1, query_len, hidden_size), "positions": positions,
            "doc_k": kv(batch, lb, hkv, doc_len, d), "doc_v": kv(batch, lb, hkv, doc_len, d), "doc_mask": mask,
            "instruction_k": kv(batch, lb, hkv, i_len, d), "instruction_v": kv(batch, lb, hkv, i_len, d),
            "system_k": np.ascontiguousarray(sk[a: b + 1]), "system_v": np.ascontiguousarray(sv[a: b + 1])}
    tail = {"hidden": kv(batch, query_len, hidden_size), "positions": positions,
            "instruction_k": kv(batch, lt, hkv, i_len, d), "instruction_v": kv(batch, lt, hkv, i_len, d),
            "system_k": np.ascontiguousarray(sk[b + 1: e + 1]), "system_v": np.ascontiguousarray(sv[b + 1: e + 1])}
    return {"band": band, "tail": tail}


def _session(name: str, path: Path):
    from minireranker.engines.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(name, path, ["CPUExecutionProvider"])  # the runtime's own runner and options


def _run(runner, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = runner.input_metadata()
    return next(iter(runner.infer({k: v for k, v in feeds.items() if k in names}).values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--attention", default="portable,fused", help="comma-separated forms (BuildConfig.attention)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--doc-len", type=int, default=253)
    parser.add_argument("--query-len", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="checkpoint and bundles (default: OUT/work)")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from minireranker.calibration.bench.presets import BENCH_PRESETS
    from minireranker.export.onnx_export import BuildConfig, build_bundle
    from minireranker.export.tiny import write_tiny_checkpoint

    preset = BENCH_PRESETS[args.preset]
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"checkpoint-{args.preset}"
    if not (ckpt / "config.json").exists():
        write_tiny_checkpoint(ckpt, preset.model, seed=0)
    forms = [f for f in args.attention.split(",") if f]
    sessions, feeds = {}, None
    for form in forms:
        bundle = work / f"bundle-{args.preset}-{form}"
        if not (bundle / "bundle.json").exists():
            build_bundle(ckpt, bundle, preset.spec, BuildConfig(attention=form, validate=not args.no_validate),
                         log=lambda m: print(m, file=sys.stderr))
        meta = json.loads((bundle / "bundle.json").read_text())
        if feeds is None:
            arrays = {n: np.load(bundle / f"{n}.npy") for n in ("system_k", "system_v", "instruction_k",
                                                                 "instruction_hidden")}
            feeds = _feeds(meta, arrays, args.batch, args.doc_len, args.query_len, seed=0)
        sessions[form] = {g: _session(g, bundle / meta["graphs"][g]["file"]) for g in ("band", "tail")}

    assert feeds is not None
    times: dict[str, dict[str, list[float]]] = {f: {"band": [], "tail": []} for f in forms}
    outputs: dict[str, dict[str, np.ndarray]] = {f: {} for f in forms}
    for form in forms:  # warm-up, and the outputs compared below
        for g in ("band", "tail"):
            outputs[form][g] = _run(sessions[form][g], feeds[g])
    for _ in range(args.repeats):
        for form in forms:
            for g in ("band", "tail"):
                t0 = time.perf_counter()
                _run(sessions[form][g], feeds[g])
                times[form][g].append(time.perf_counter() - t0)
    first = forms[0]
    rows = []
    for form in forms:
        row = {"attention": form}
        for g in ("band", "tail"):
            row[f"{g}_ms"] = 1000 * statistics.median(times[form][g])
            row[f"{g}_max_abs_diff_vs_{first}"] = float(np.abs(outputs[form][g] - outputs[first][g]).max())
        row["ratio_vs_first"] = (row["band_ms"] + row["tail_ms"]) / (rows[0]["band_ms"] + rows[0]["tail_ms"]
                                                                     if rows else row["band_ms"] + row["tail_ms"])
        rows.append(row)
    result = {"preset": args.preset, "batch": args.batch, "doc_len": args.doc_len, "query_len": args.query_len,
              "repeats": args.repeats, "onnxruntime": ort.__version__, "machine": platform.machine(),
              "processor": platform.processor(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"band and tail, `{args.preset}`, batch {args.batch}, doc_len {args.doc_len}, query_len "
             f"{args.query_len}, median of {args.repeats} (ONNX Runtime {ort.__version__})", "",
             f"| attention | band ms | tail ms | (band + tail) / {first} | max abs diff vs {first} (band, tail) |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['attention']} | {r['band_ms']:.1f} | {r['tail_ms']:.1f} | {r['ratio_vs_first']:.2f} | "
                     f"{r[f'band_max_abs_diff_vs_{first}']:.1e}, {r[f'tail_max_abs_diff_vs_{first}']:.1e} |")
    (args.out / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r["attention"] for r in rows for g in ("band", "tail") if r[f"{g}_max_abs_diff_vs_{first}"] > 1e-4]
    if bad:
        print(f"outputs differ from {first} by more than 1e-4: {sorted(set(bad))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
