"""Qwen3-VL-2B's real shapes end to end on this machine: build, index, rerank, dense, with each stage's
peak memory (issue 17; figures in docs/benchmarks.md, "Scale").

Every stage runs in a process of its own, so its peak RSS (``ru_maxrss`` of that child, from ``os.wait4``)
is the stage's alone: writing the checkpoint (random weights, seeded), ``minireranker build`` (validation
included), indexing ``--pages`` distinct A4 pages cold, each entry then registered under ``--copies`` ids
(so a rerank has pages x copies candidates: said in the output), a warm rerank of all of them, and dense
transformers on ``--dense-pairs`` pairs (scaled to the candidates, said so). Writes scale.json and
scale.md under ``--out``.

    python benchmarks/scale.py --out bench-out/scale [--preset 2b] [--pages 5] [--copies 20] [--precision fp16] [--exact]

Run it alone: it is minutes of both cores per stage, and a second heavy job skews every time in it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def run_stage(name: str, code: str, out: Path) -> dict:
    """Run ``code`` in a fresh Python; returns its wall time, peak RSS and the JSON it printed last."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    record = {"stage": name, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "exit": code, **result}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"{name}: {wall:.1f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB, exit {code}", flush=True)
    if code != 0:
        raise SystemExit(f"stage {name} failed (exit {code}); see its output above")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/scale"))
    ap.add_argument("--preset", default="2b")
    ap.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    ap.add_argument("--pages", type=int, default=5, help="distinct pages indexed cold (default: 5)")
    ap.add_argument("--copies", type=int, default=20, help="ids each page is registered under (default: 20)")
    ap.add_argument("--dense-pairs", type=int, default=1, help="pairs dense transformers scores (default: 1)")
    ap.add_argument("--exact", action="store_true", help="the exact spec (every layer, every token) instead of "
                    "the preset's")
    ap.add_argument("--skip", nargs="*", default=[], help="stages to skip: checkpoint build index rerank dense")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.precision}-exact" if args.exact else args.precision
    ck, bundle, cache = out / f"checkpoint-{args.preset}", out / f"bundle-{tag}", out / f"cache-{tag}"
    corpus = out / "corpus"
    stages = {}
    if "checkpoint" not in args.skip:
        stages["checkpoint"] = run_stage("checkpoint", f"""
            import json
            from pathlib import Path
            from minireranker.calibration.bench.presets import BENCH_PRESETS, write_corpus
            from minireranker.export.tiny import write_tiny_checkpoint
            p = BENCH_PRESETS[{args.preset!r}]
            ck = write_tiny_checkpoint(Path({str(ck)!r}), p.model, seed=0)
            pages = write_corpus(Path({str(corpus)!r}), p.page_size, {args.pages}, 0)
            size = sum(f.stat().st_size for f in ck.glob("*.safetensors"))
            print(json.dumps({{"weight_bytes": size, "pages": [str(x) for x in pages]}}))
        """, out)
    from minireranker.calibration.bench.presets import BENCH_PRESETS

    p = BENCH_PRESETS[args.preset].spec  # 2b: --exit-layer 15 --band 8:11 --keep-ratio 0.25 --query-position 256
    spec = f"--exit-layer {p.exit_layer} --band {p.band[0]}:{p.band[1]} --keep-ratio {p.keep_ratio}"
    spec += f" --query-position {p.query_position}" if p.query_position is not None else ""
    spec = "--exact" if args.exact else spec
    if "build" not in args.skip:
        stages["build"] = run_stage("build", f"""
            import contextlib, json, sys
            from minireranker.tools.cli import main
            with contextlib.redirect_stdout(sys.stderr):  # in this process: its peak RSS is the build's
                assert main("build {ck} -o {bundle} {spec} --precision {args.precision}".split()) == 0
            data = json.load(open("{bundle}/bundle.json"))
            print(json.dumps({{"bundle_bytes": sum(data["files"].values()), "shared": data.get("shared_weights"),
                              "end_to_end": data["validation"].get("end_to_end")}}))
        """, out)
    pages = sorted(str(p) for p in corpus.glob("*.png"))[: args.pages]
    if "index" not in args.skip:
        stages["index"] = run_stage("index", f"""
            import json, shutil, time
            from minireranker.runtime.documents import Document
            from minireranker.runtime.reranker import Reranker
            shutil.rmtree({str(cache)!r}, ignore_errors=True)
            pages = {pages!r}
            per_page, sizes = [], []
            with Reranker({str(bundle)!r}, {str(cache)!r}) as r:
                for i, page in enumerate(pages):
                    t0 = time.perf_counter()
                    report = r.index([Document(image=page, id=f"p{{i}}-0")])
                    per_page.append(time.perf_counter() - t0)
                    assert report.indexed == 1, report
                    entry = r.store.get(f"id:p{{i}}-0")
                    sizes.append(sum(a.nbytes for a in (entry.k, entry.v)))
                    for c in range(1, {args.copies}):  # the same entry under more ids: candidates, not work
                        r.store.put(f"id:p{{i}}-{{c}}", entry)
            print(json.dumps({{"index_s_per_page": per_page, "kv_bytes_per_page": sizes}}))
        """, out)
    if "rerank" not in args.skip:
        stages["rerank"] = run_stage("rerank", f"""
            import json, time
            from minireranker.runtime.documents import Document
            from minireranker.runtime.reranker import Reranker
            from minireranker.calibration.bench.presets import draw_query
            ids = [f"p{{i}}-{{c}}" for i in range({len(pages)}) for c in range({args.copies})]
            pages = {pages!r}
            docs = [Document(image=pages[int(x.split("-")[0][1:])], id=x) for x in ids]
            with Reranker({str(bundle)!r}, {str(cache)!r}) as r:
                out = r.rerank(draw_query(999), docs)  # warm-up
                assert not out.failed and len(out.results) == len(docs), out.failed[:1]
                times = []
                for q in range(3):
                    t0 = time.perf_counter()
                    out = r.rerank(draw_query(q), docs)
                    times.append(time.perf_counter() - t0)
                kv = sum(a.nbytes for e in r.store.get_many([r.key(d) for d in docs]) for a in (e.k, e.v))
            print(json.dumps({{"candidates": len(docs), "rerank_s": times, "kv_bytes_read": kv}}))
        """, out)
        from minireranker.calibration.bench.harness import memcpy_gib_s

        bw = memcpy_gib_s(1 << 28)  # here, not in the stage: its buffers would count in the rerank's peak
        stages["rerank"].update(memcpy_gib_s=bw, kv_floor_s=stages["rerank"]["kv_bytes_read"] / (bw * 2**30))
    if "dense" not in args.skip:
        stages["dense"] = run_stage("dense", f"""
            import json
            from minireranker.calibration.bench.systems import _DenseTransformers
            from minireranker.calibration.bench.presets import draw_query
            d = _DenseTransformers({str(ck)!r}, {pages!r}, {args.dense_pairs}, draw_query(998))
            r = d.run(draw_query(0))
            print(json.dumps({{"pairs": r["measured_pairs"], "total_s": r["total_s"], "stages": r["stages"]}}))
        """, out)
    result = {"preset": args.preset, "precision": args.precision, "exact": args.exact, "pages": len(pages),
              "copies": args.copies,
              "machine": os.uname().machine, "cpus": os.cpu_count(), "stages": stages}
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "scale.md").write_text(table(result), encoding="utf-8")
    print(table(result))


def table(result: dict) -> str:
    s = result["stages"]
    gib = 2**30
    rows = ["| stage | wall | peak RSS | figures |", "|---|---:|---:|---|"]
    weights = (s.get("checkpoint") or {}).get("weight_bytes")
    for name, r in s.items():
        extra = ""
        if name == "checkpoint":
            extra = f"{r['weight_bytes'] / gib:.2f} GiB of weights"
        elif name == "build":
            sh = (r.get("shared") or {}).get("onnx", {})
            extra = (f"bundle {r['bundle_bytes'] / gib:.2f} GiB; shared weights {sh.get('bytes', 0) / gib:.2f} GiB "
                     f"distinct, {sh.get('referenced_bytes', 0) / gib:.2f} GiB referenced")
        elif name == "index":
            per = r["index_s_per_page"]
            extra = (f"{len(per)} pages cold: {sum(per) / len(per):.1f} s/page; "
                     f"K/V {sum(r['kv_bytes_per_page']) / len(per) / 2**20:.2f} MiB/page")
        elif name == "rerank":
            extra = (f"{r['candidates']} candidates warm: {min(r['rerank_s']):.2f} s/query (best of 3); "
                     f"K/V read {r['kv_bytes_read'] / 2**20:.0f} MiB, floor {r['kv_floor_s'] * 1e3:.0f} ms at "
                     f"{r['memcpy_gib_s']:.1f} GiB/s")
        elif name == "dense":
            extra = f"{r['total_s'] / r['pairs']:.1f} s/pair over {r['pairs']} pair(s), measured"
        ratio = f" ({r['peak_rss_bytes'] / weights:.2f}x the fp32 weights)" if weights else ""
        rows.append(f"| {name} | {r['wall_s']:.1f} s | {r['peak_rss_bytes'] / gib:.2f} GiB{ratio} | {extra} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
