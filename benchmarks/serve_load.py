"""A bounded load test of ``minireranker serve`` on loopback: C concurrent clients, R requests in all.

Each client is a thread with its own keep-alive HTTP/1.1 connection; requests cycle through a fixed set
of queries over the same documents, so every answer can be checked against scores computed beforehand
without the server (``Reranker.rerank``, one query at a time, no dynamic batching). Writes
``serve_load.json`` (config, throughput, latency percentiles, failures) and ``serve_load.md`` (a table).

    python benchmarks/serve_load.py --out /tmp/serve-load                  # builds a tiny bundle (torch)
    python benchmarks/serve_load.py --bundle B --clients 8 --requests 200 --documents 8 --out DIR

Timings are reported, never asserted (tests/runtime/serve/test_metrics_and_load.py runs a small
configuration).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

QUERIES = ["a cat sitting on a sofa", "a rocket launch", "coffee in the morning", "snow and dogs",
           "a portrait of an astronaut", "the city at night", "a red car", "fresh fruit on a table"]
DOCUMENTS = ["a photo of a cat", "a rocket on the launch pad", "two dogs in the snow", "coffee in a white cup",
             "a tabby cat asleep on a couch", "an astronaut in a white suit", "skyscrapers lit at night",
             "a sports car, red", "apples and pears in a bowl", "a quiet mountain lake", "a bicycle by a wall",
             "a bowl of ramen", "a lighthouse in a storm", "children playing football", "a violin on a chair",
             "a map of the old town"]


def expected_scores(bundle: Path, cache: Path, queries: list[str], documents: list[str]) -> dict[str, list[float]]:
    """Per query, the raw score of each document (by index), from the runtime directly."""
    from minireranker.runtime.documents import Document
    from minireranker.runtime.reranker import Reranker

    with Reranker(bundle, cache) as reranker:
        out = {}
        for q in queries:
            scores = [0.0] * len(documents)
            for r in reranker.rerank(q, [Document(text=t) for t in documents]).results:
                scores[r.index] = r.score
            out[q] = scores
    return out


def run_load(url: str, queries: list[str], documents: list[str], clients: int, requests: int,
             expected: dict[str, list[float]] | None = None, api_key: str | None = None,
             tolerance: float = 1e-5) -> dict:
    """Send ``requests`` rerank requests from ``clients`` threads; latency and correctness of each."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            query = queries[n % len(queries)]
            body = json.dumps({"query": query, "documents": documents})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/rerank", body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
                with lock:
                    failures.append(f"request {n}: {exc!r}")
                continue
            seconds = time.perf_counter() - t0
            problem = _check(resp.status, data, expected and expected[query], len(documents), tolerance)
            with lock:
                latencies.append(seconds)
                if problem:
                    failures.append(f"request {n}: {problem}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1e3 * x for x in latencies)
    return {"config": {"clients": clients, "requests": requests, "documents_per_request": len(documents),
                       "distinct_queries": len(queries)},
            "wall_s": wall, "throughput_rps": len(latencies) / wall if wall else 0.0,
            "pairs_per_s": len(latencies) * len(documents) / wall if wall else 0.0,
            "latency_ms": {"p50": _pct(ms, 50), "p95": _pct(ms, 95), "p99": _pct(ms, 99),
                           "mean": statistics.fmean(ms) if ms else None, "max": ms[-1] if ms else None},
            "succeeded": len(latencies) - len(failures), "failures": failures}


def _check(status: int, data: bytes, want: list[float] | None, n: int, tolerance: float) -> str | None:
    if status != 200:
        return f"HTTP {status}: {data[:200]!r}"
    results = json.loads(data)["results"]
    if sorted(r["index"] for r in results) != list(range(n)):
        return "results do not cover every document once"
    if want is not None:
        worst = max(abs(r["score"] - want[r["index"]]) for r in results)
        if worst > tolerance:
            return f"a score differs from the unbatched runtime by {worst:.2e}"
    scores = [r["score"] for r in results]
    if scores != sorted(scores, reverse=True):
        return "results are not sorted best first"
    return None


def _pct(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    k = (len(sorted_ms) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (k - lo)


def markdown(report: dict) -> str:
    c, lat = report["config"], report["latency_ms"]
    return ("| clients | requests | docs/request | max batch | window ms | throughput (req/s) | pairs/s | "
            "p50 ms | p95 ms | p99 ms | failed |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {c['clients']} | {c['requests']} | {c['documents_per_request']} | {c.get('max_batch', '')} | "
            f"{c.get('batch_window_ms', '')} | {report['throughput_rps']:.1f} | {report['pairs_per_s']:.0f} | "
            f"{lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | {len(report['failures'])} |\n")


def _tiny_bundle(work: Path) -> Path:
    from minireranker.export.onnx_export import BuildConfig, build_bundle
    from minireranker.export.tiny import write_tiny_checkpoint
    from minireranker.runtime.spec import RerankSpec

    checkpoint = write_tiny_checkpoint(work / "checkpoint", "tiny", seed=0)
    spec = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64)
    build_bundle(checkpoint, work / "bundle", spec, BuildConfig(), log=lambda m: None)
    return work / "bundle"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle directory (default: build the tiny one; needs torch)")
    p.add_argument("--out", type=Path, required=True, help="folder for serve_load.json and serve_load.md")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--documents", type=int, default=8, help=f"documents per request (at most {len(DOCUMENTS)})")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-window-ms", type=float, default=2.0)
    args = p.parse_args(argv)
    from minireranker.runtime.serve.api import ServeLimits
    from minireranker.runtime.serve.service import ServeConfig
    from minireranker.runtime.serve.server import make_server, shut_down
    from minireranker.runtime.profiling.telemetry import machine_info

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or _tiny_bundle(work)
        docs = DOCUMENTS[: args.documents]
        expected = expected_scores(bundle, work / "expected-cache", QUERIES, docs)
        config = ServeConfig(bundle=bundle, cache=work / "cache", port=0, max_batch=args.max_batch,
                             batch_window_ms=args.batch_window_ms, limits=ServeLimits())
        server = make_server(config)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        server.service.ready.wait(300)
        run_load(server.url, QUERIES, docs, 1, len(QUERIES))  # warm-up: index the documents once
        report = run_load(server.url, QUERIES, docs, args.clients, args.requests, expected)
        shut_down(server)
    report["config"].update({"max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms,
                             "bundle": str(args.bundle or "tiny (built)"), "machine": machine_info()})
    (args.out / "serve_load.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve_load.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
