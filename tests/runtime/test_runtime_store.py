"""The runtime with its K/V store: crashes, corruption, int8, isolation, LRU, threads.

Score comparisons between two runs of the same engines use atol 1e-6 (same arithmetic, so in practice
bit-identical); int8 K/V is compared with the fp32 cache and its error reported.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minireranker.runtime.documents import Document
from minireranker.runtime.kvstore import entry_file_stem
from minireranker.runtime.reranker import Reranker
from minireranker.runtime.spec import RerankSpec

QUERY = "a photograph of a rocket"


@pytest.fixture(scope="module")
def doc_files(tmp_path_factory, images) -> list[str]:
    """24 documents as CLI arguments: PNG files of real photos (various sizes) and texts."""
    root = tmp_path_factory.mktemp("docs")
    args = []
    for i in range(16):
        name, img = sorted(images.items())[i % len(images)]
        path = root / f"{i:02d}-{name}.png"
        img.rotate(7 * i).resize((40 + 9 * i, 120 - 4 * i)).save(path)
        args.append(str(path))
    args += [f"text:document number {i} about {'rockets' if i % 2 else 'cats'}" for i in range(8)]
    return args


def as_documents(args: list[str]) -> list[Document]:
    return [Document(text=a[5:], id=a) if a.startswith("text:") else Document(image=Path(a), id=a) for a in args]


def scores_of(reranker: Reranker, docs) -> np.ndarray:
    out = reranker.rerank(QUERY, docs)
    assert not out.failed, out.failed
    return np.array([r.score for r in sorted(out.results, key=lambda r: r.index)])


@pytest.fixture(scope="module")
def clean_scores(tiny_bundle, doc_files, tmp_path_factory) -> np.ndarray:
    with Reranker(tiny_bundle, tmp_path_factory.mktemp("clean")) as r:
        return scores_of(r, as_documents(doc_files))


# The child indexer: `python -c _BLOCKING_INDEXER SIGNAL_FD K <cli args>` runs `minireranker index` with the
# store's rename patched, so that after K entries are complete the (K+1)-th blocks with its temp file
# written and fsynced but not yet renamed; it reports the temp file's path on SIGNAL_FD and waits for the
# kill. Patching os.replace (called by name at run time) keeps this independent of the store's module split.
_BLOCKING_INDEXER = r"""
import os, runpy, sys, threading
signal_fd, k = int(sys.argv[1]), int(sys.argv[2])
del sys.argv[1:3]
real_replace, done, lock = os.replace, [0], threading.Lock()

def replace(src, dst, *args, **kwargs):
    is_entry = os.path.basename(os.fspath(src)).startswith(".tmp-") and os.fspath(dst).endswith(".kv")
    with lock:
        if is_entry and done[0] == k:
            os.write(signal_fd, os.fsencode(os.fspath(src)) + b"\n")
            threading.Event().wait()  # until SIGKILL
        result = real_replace(src, dst, *args, **kwargs)
        done[0] += is_entry
        return result

os.replace = replace
sys.argv[0] = "minireranker"
runpy.run_module("minireranker.tools.cli", run_name="__main__", alter_sys=True)
"""


def index_until_blocked(cmd_args: list[str], complete: int, log: Path) -> tuple[subprocess.Popen, Path]:
    """Start the blocking indexer and wait for it to hold its (complete+1)-th entry mid-write; returns the
    process (still alive) and the temp file it is writing. Its output goes to ``log`` (a file: a full pipe
    could block it before it signals). A child that exits without signalling fails the test."""
    read_fd, write_fd = os.pipe()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _BLOCKING_INDEXER, str(write_fd), str(complete), *cmd_args],
                                stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_fd,))
    os.close(write_fd)  # the child holds the only write end: EOF means it exited without signalling
    try:
        # a generous bound so that a hung child fails loudly; it never decides a passing outcome
        ready, _, _ = select.select([read_fd], [], [], 600)
        line = os.read(read_fd, 4096) if ready else b""
    finally:
        os.close(read_fd)
    if not line.endswith(b"\n"):
        proc.kill()
        proc.wait()
        raise AssertionError(f"the indexer never reached entry {complete + 1} (exit {proc.returncode}): "
                             f"{log.read_text(errors='replace')[-2000:]}")
    return proc, Path(os.fsdecode(line.strip()))


def test_kill_9_while_indexing_leaves_only_complete_entries(tiny_bundle, images, tmp_path):
    """SIGKILL `minireranker index` 4 times, each while it writes an entry (temp file fsynced, not yet
    renamed) after a chosen number of complete ones; then every visible entry is complete and the scores
    equal a clean run's. The kill moment is set by the test, not by the machine's speed."""
    files = []
    for i in range(40):
        img = sorted(images.values(), key=lambda im: im.size)[i % len(images)]
        path = tmp_path / f"{i:03d}.png"
        img.rotate(5 * i).resize((36 + i % 90, 100 - i % 60)).save(path)
        files.append(str(path))
    docs = as_documents(files)
    with Reranker(tiny_bundle, tmp_path / "clean") as r:
        clean = scores_of(r, docs)
    cache = tmp_path / "cache"
    cmd_args = ["index", str(tiny_bundle), "--cache", str(cache), "--quiet", *files]
    killed, complete = 0, [0, 3, 1, 7]  # new complete entries before each kill (0: killed in the first put)
    for k in complete:
        log = tmp_path / f"index-{killed}.log"
        proc, temp = index_until_blocked(cmd_args, k, log)
        try:
            assert temp.is_file() and temp.name.startswith(".tmp-"), temp  # the kill lands mid-write
        finally:  # never leave a blocked child behind
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-2000:]
        killed += 1
    assert killed == len(complete)
    with Reranker(tiny_bundle, cache) as r:
        keys = r.store.keys()
        assert 0 < len(keys) < len(files) or killed < 4
        assert len(keys) == sum(complete)  # the skipped resume: each run added exactly its complete entries
        for key in keys:
            assert r.store.get(key) is not None  # complete and verified
        assert r.store.stats()["corrupted"] == 0
        assert not list(r.store.namespace.glob(".tmp-*"))  # the dead writers' temp files were removed
    rerun = subprocess.run([sys.executable, "-m", "minireranker.tools.cli", *cmd_args], capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"indexed {len(files) - sum(complete)}, skipped {sum(complete)} " in rerun.stdout, rerun.stdout
    with Reranker(tiny_bundle, cache) as r:
        assert len(r.store.keys()) == len(files)
        np.testing.assert_allclose(scores_of(r, docs), clean, atol=1e-6, rtol=0)


def test_flipped_bytes_are_detected_logged_and_recomputed(tiny_bundle, doc_files, clean_scores, tmp_path, caplog):
    cache = tmp_path / "cache"
    docs = as_documents(doc_files)
    with Reranker(tiny_bundle, cache) as r:
        r.index(docs)
        key = Reranker.key(docs[3])
        victim = next(cache.rglob(entry_file_stem(key) + ".kv"))
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF  # inside the payload (the K/V arrays)
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="minireranker.kvstore"), Reranker(tiny_bundle, cache) as r:
        np.testing.assert_allclose(scores_of(r, docs), clean_scores, atol=1e-6, rtol=0)
    assert any(docs[3].id in rec.getMessage() for rec in caplog.records), [r.getMessage() for r in caplog.records]


def test_int8_cache_score_error_is_small_and_reported(tiny_bundle, doc_files, clean_scores, tmp_path):
    with Reranker(tiny_bundle, tmp_path / "int8", int8_cache=True) as r:
        got = scores_of(r, as_documents(doc_files))
        entry = r.store.get(Reranker.key(as_documents(doc_files)[0]))
        assert entry.k.dtype == np.float32  # dequantized on read
    error = float(np.abs(got - clean_scores).max())
    print(f"int8 K/V: max |score - fp32 cache score| = {error:.2e} over {len(got)} documents")
    assert error < 0.05
    assert error > 0  # int8 is not free: a zero error would mean the option did nothing


def test_entries_hold_only_document_tokens(tiny_bundle, tmp_path):
    """The system segment's K/V is not in the entries: they hold the kept document tokens only."""
    with Reranker(tiny_bundle, tmp_path / "c") as r:
        doc = Document(text="just some text", id="t")
        r.index([doc])
        entry = r.store.get("id:t")
        assert entry.k.shape[2] == len(r.template.document(None, "just some text").ids)
        assert entry.k.shape[0] == 2  # band [1, 2]: two layers stored, not the 4 of the model


def test_another_bundle_never_reads_these_entries(bundle_factory, tiny_bundle, tmp_path):
    cache = tmp_path / "shared"
    with Reranker(tiny_bundle, cache) as r:
        r.index([Document(text="cached once", id="x")])
        assert "id:x" in r.store
    other = bundle_factory("tiny", RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.25, query_position=64))
    with Reranker(other, cache) as r:
        assert "id:x" not in r.store and r.store.keys() == []


def test_lru_bound_holds_and_evicted_documents_are_recomputed(tiny_bundle, doc_files, clean_scores, tmp_path):
    docs = as_documents(doc_files)
    with Reranker(tiny_bundle, tmp_path / "c") as r:
        r.index(docs[:1])
        one = r.store.stats()["bytes"]
    bound = one * 5
    with Reranker(tiny_bundle, tmp_path / "lru", max_cache_bytes=bound) as r:
        r.index(docs)
        assert r.store.stats()["bytes"] <= bound and r.store.stats()["evictions"] > 0
        np.testing.assert_allclose(scores_of(r, docs), clean_scores, atol=1e-6, rtol=0)


def test_rerank_is_thread_safe(tiny_bundle, doc_files, tmp_path):
    docs = as_documents(doc_files)
    queries = [f"query number {i}" for i in range(6)]
    with Reranker(tiny_bundle, tmp_path / "c") as r:
        r.index(docs)
        expected = {q: [(x.index, x.score) for x in r.rerank(q, docs).results] for q in queries}
        got: dict[str, list] = {}
        errors: list[BaseException] = []

        def work(q: str) -> None:
            try:
                for _ in range(3):
                    got[q] = [(x.index, x.score) for x in r.rerank(q, docs).results]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(q,)) for q in queries]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert got == expected


def test_rerank_json_lists_failures_with_their_index(tiny_bundle, doc_files, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    out = subprocess.run([sys.executable, "-m", "minireranker.tools.cli", "rerank", str(tiny_bundle), "--cache",
                          str(tmp_path / "c"), "--query", QUERY, doc_files[0], str(bad), doc_files[-1], "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    data = json.loads(out.stdout)
    assert [f["index"] for f in data["failed"]] == [1]
    assert sorted(r["index"] for r in data["results"]) == [0, 2]
