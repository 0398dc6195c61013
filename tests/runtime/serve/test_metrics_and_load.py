"""/metrics parses as Prometheus text; the bounded load test answers every request correctly."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from serve_helpers import QUERY, TEXTS

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prometheus(text: str) -> dict[str, dict]:
    """A strict reader of the text format: {family: {"type", "help", "samples": [(name, labels, value)]}}."""
    families: dict[str, dict] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, {"samples": []})["help"] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families.setdefault(name, {"samples": []})["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, _, body, value = m.groups()
            labels = {}
            if body:
                pos = 0
                while pos < len(body):
                    lm = LABEL.match(body, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
            assert family in families and "type" in families[family], f"sample {name} before its TYPE"
            families[family]["samples"].append((name, labels, float(value.replace("Inf", "inf"))))
    return families


def test_metrics_parse_and_count(live):
    live.call("POST", "/v1/rerank", {"query": QUERY, "documents": TEXTS})
    live.call("POST", "/v1/rerank", {"query": ""})
    status, text = live.call("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    families = parse_prometheus(text)
    for name in ("minireranker_requests_total", "minireranker_errors_total", "minireranker_request_seconds",
                 "minireranker_stage_seconds", "minireranker_candidates_per_request", "minireranker_cache_hits_total",
                 "minireranker_cache_misses_total", "minireranker_cache_evictions_total",
                 "minireranker_kv_bytes_read_total", "minireranker_queue_depth", "minireranker_batch_pairs"):
        assert name in families, name
    requests = {(s[1]["route"], s[1]["code"]): s[2] for s in families["minireranker_requests_total"]["samples"]}
    assert requests[("/v1/rerank", "200")] >= 1 and requests[("/v1/rerank", "422")] >= 1
    stages = {s[1]["stage"] for s in families["minireranker_stage_seconds"]["samples"]}
    assert {"query_head", "kv_lookup", "band", "tail", "batch_wait"} <= stages
    buckets = [s for s in families["minireranker_request_seconds"]["samples"]
               if s[0].endswith("_bucket") and s[1]["route"] == "/v1/rerank"]
    assert buckets[-1][1]["le"] == "+Inf" and [b[2] for b in buckets] == sorted(b[2] for b in buckets)
    assert families["minireranker_kv_bytes_read_total"]["samples"][0][2] > 0
    assert not any(math.isnan(s[2]) for f in families.values() for s in f["samples"])


def test_bounded_load(live, tmp_path):
    """8 clients, 48 requests, 4 queries: every answer succeeds and equals the unbatched runtime (1e-5)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import serve_load
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    queries = serve_load.QUERIES[:4]
    expected = serve_load.expected_scores(live.server.service.config.bundle, tmp_path / "cache", queries, TEXTS)
    report = serve_load.run_load(live.url, queries, TEXTS, clients=8, requests=48, expected=expected,
                                 api_key=live.key)
    assert report["failures"] == [] and report["succeeded"] == 48
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    (tmp_path / "serve_load.json").write_text(json.dumps(report))
    assert "| 8 | 48 | 5 |" in serve_load.markdown(report)
