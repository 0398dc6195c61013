"""Many readers, one store: one writer `minireranker serve` and two `--read-only` ones on one cache directory,
as real processes (docs/serve.md, "Many readers, one store").

The readers score as the writer does, compute no document, write nothing, map the very entry files the
writer stored (the same inodes: one copy in the page cache), and each process reports its own memory on
/metrics. Readiness is polled, never slept for.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from serve_helpers import QUERY, TEXTS, Live

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    from serve_readers import ServeProcess  # the benchmark's launcher: a real `minireranker serve` process
finally:
    sys.path.remove(str(ROOT / "benchmarks"))

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(),
                                reason="reads /proc/PID/maps and smaps_rollup (Linux 4.14 and later)")
SCORE_ATOL = 1e-6  # the same entry bytes through the same engines: the scores come out equal
INDEXED = TEXTS[:4]  # indexed through the writer as doc-0..doc-3; TEXTS[4] never is


def rerank(live: Live, documents: list) -> tuple[int, dict]:
    return live.call("POST", "/v1/rerank", {"query": QUERY, "documents": documents})


def listing(directory: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every file under ``directory``: (inode, size, mtime, atime), to show that the readers wrote nothing
    (not even recency: the writer set each atime after the mtime, so relatime never moves it on a read)."""
    return {str(p.relative_to(directory)): (st.st_ino, st.st_size, st.st_mtime_ns, st.st_atime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() for st in [p.stat()]}


def mapped_entry_inodes(pid: int, namespace: Path) -> set[int]:
    """The inode of each entry file that process ``pid`` maps, from /proc/PID/maps."""
    prefix = os.path.realpath(namespace) + os.sep
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # start-end perms offset dev inode path
        if len(fields) == 6 and fields[5].startswith(prefix) and fields[5].endswith(".kv"):
            found.add(int(fields[4]))
    return found


def memory_of(live: Live) -> dict[str, float]:
    """The memory gauges of one process's /metrics (docs/serve.md), by name without the prefix."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = live.call("GET", "/metrics")
    assert status == 200, text
    return {f.name.removeprefix("minireranker_"): f.samples[0].value for f in text_string_to_metric_families(text)
            if f.name.startswith(("minireranker_memory_", "minireranker_cache_mapped_"))}


@pytest.fixture(scope="module")
def store(tiny_bundle, tmp_path_factory):
    """A writer and two readers on one cache, the writer's index done and one rerank through each."""
    work = tmp_path_factory.mktemp("many-readers")
    cache = work / "cache"
    writer = ServeProcess(tiny_bundle, cache, work / "writer.log")
    servers = [writer]
    try:
        live_writer = Live(writer.url(), None, None)  # the readers open the store the writer made
        readers = [ServeProcess(tiny_bundle, cache, work / f"reader-{i}.log", "--read-only") for i in range(2)]
        servers += readers
        status, body = live_writer.call("POST", "/v1/documents", {"documents": [
            {"id": f"doc-{i}", "text": text} for i, text in enumerate(INDEXED)]})
        assert status == 200 and body["indexed"] == len(INDEXED), body
        lives = [live_writer] + [Live(r.url(), None, None) for r in readers]
        ids = [{"id": f"doc-{i}"} for i in range(len(INDEXED))]
        answers = [rerank(live, ids) for live in lives]
        before = listing(cache)
        (namespace,) = [p for p in cache.iterdir() if p.is_dir()]
        yield {"lives": lives, "servers": servers, "answers": answers, "cache": cache, "namespace": namespace,
               "before": before}
    finally:
        for server in servers:
            server.stop()


def test_readers_score_as_the_writer(store):
    scores = []
    for status, body in store["answers"]:
        assert status == 200, body
        scores.append({r["index"]: r["score"] for r in body["results"]})
    writer, *readers = scores
    assert sorted(writer) == list(range(len(INDEXED)))
    for reader in readers:
        assert reader.keys() == writer.keys()
        worst = max(abs(reader[i] - writer[i]) for i in writer)
        print(f"largest |reader - writer| score difference: {worst:.3g}")
        assert worst <= SCORE_ATOL, (reader, writer)


def test_a_reader_fails_an_uncached_document_per_document_and_writes_nothing(store):
    for live in store["lives"][1:]:
        status, body = rerank(live, [{"id": "doc-0"}, TEXTS[4], {"id": "never-indexed"}])
        assert status == 404, body
        assert [(f["index"], f["status"]) for f in body["failed"]] == [(1, 404), (2, 404)]
        assert all("not in the cache; index it first with the writer" in f["error"] for f in body["failed"])
        assert body["detail"].startswith("documents[1]: not in the cache")
        status, body = live.call("POST", "/v1/documents", {"documents": [{"id": "x", "text": "a new one"}]})
        assert status == 403 and "--read-only" in body["detail"]
        assert live.call("DELETE", "/v1/documents/doc-0")[0] == 403
    assert listing(store["cache"]) == store["before"]  # no entry, temp file or access time written, a hit included


def test_the_readers_map_the_entry_files_the_writer_stored(store):
    """The same inodes in every process (kept mappings, so no timing): one copy of each entry in the page cache."""
    namespace = store["namespace"]
    on_disk = {p.stat().st_ino for p in namespace.glob("*.kv")}
    assert len(on_disk) == len(INDEXED)
    for server in store["servers"]:  # the writer too: its rerank read them back
        assert mapped_entry_inodes(server.proc.pid, namespace) == on_disk, server.log


def test_each_process_reports_its_memory(store):
    for live in store["lives"]:
        memory = memory_of(live)
        print(live.url, {k: int(v) for k, v in sorted(memory.items())})  # the figures docs/serve.md quotes
        assert memory["memory_rss_bytes"] > 0 and 0 < memory["memory_pss_bytes"] <= memory["memory_rss_bytes"]
        assert memory["memory_shared_bytes"] + memory["memory_private_bytes"] == memory["memory_rss_bytes"]
        assert memory["cache_mapped_files"] == len(INDEXED)
        assert 0 <= memory["cache_mapped_pss_bytes"] <= memory["cache_mapped_rss_bytes"]


def test_the_flag_and_its_variable(tiny_bundle, tmp_path, monkeypatch):
    from minireranker.tools.cli import build_parser
    from minireranker.tools.serve_cli import config_from_args

    def read_only(*flags: str) -> bool:
        args = build_parser().parse_args(["serve", str(tiny_bundle), "--cache", str(tmp_path), *flags])
        return config_from_args(args).read_only

    monkeypatch.delenv("MINIRERANKER_READ_ONLY", raising=False)
    assert read_only("--read-only") and not read_only()
    monkeypatch.setenv("MINIRERANKER_READ_ONLY", "1")
    assert read_only()


def test_a_reader_needs_the_store_the_writer_makes(tmp_path):
    """A reader started first is told to start the writer (no directory, or one without a store's marker)."""
    from minireranker.runtime.errors import CacheError
    from minireranker.runtime.kvstore import KVStore, StoreConfig

    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(CacheError, match="holds no K/V store yet.*start the writer"):
            KVStore(StoreConfig.tiny(directory, read_only=True))
        assert not directory.exists() or os.listdir(directory) == []  # nothing written
