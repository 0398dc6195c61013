"""The warm read path: mapped entries kept open and re-checked, and candidates batched by K/V length.

A store keeps the mappings of recently read entry files; a get reuses one only while the path still holds
the very file version it mapped. These tests replace, delete, evict and rewrite files behind a store's back
(from another store object or another process) and check that no stale or corrupted entry is returned.
Timing is measured by benchmarks/kvstore_bench.py, never asserted here.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minireranker.runtime.errors import CacheError
from minireranker.runtime.kvstore import KVEntry, KVStore, StoreConfig, entry_file_stem

FP = "00000000feedf00d"

# Shared with the child processes: an entry whose content is a function of (seed, version).
COMMON = r'''
import numpy as np
from minireranker.runtime.kvstore import KVEntry, KVStore, StoreConfig

def make_entry(seed, version=0, tokens=16):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((2, 2, tokens, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, tokens, 8)).astype(np.float32)
    k.flat[0], v.flat[0] = version, -version
    positions = np.stack([np.zeros(tokens), np.arange(tokens) // 4, np.arange(tokens) % 4]).astype(np.int64)
    return KVEntry(k=k, v=v, positions=positions, query_start=tokens + seed, meta={"seed": seed, "version": version})

def entry_matches(entry, seed, version=None, **kw):
    want = make_entry(seed, entry.meta["version"] if version is None else version, **kw)
    return (entry.meta == want.meta and entry.query_start == want.query_start and np.array_equal(entry.k, want.k)
            and np.array_equal(entry.v, want.v) and np.array_equal(entry.positions, want.positions))
'''
exec(COMMON)  # defines make_entry and entry_matches here too


def entry_path(store: KVStore, key: str) -> Path:
    return store.namespace / (entry_file_stem(key) + ".kv")


def mapped_files() -> set[str]:
    """Paths of the files this process has memory-mapped now (Linux)."""
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


needs_proc_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


@pytest.fixture
def two_stores(tmp_path):
    """A reader store and a second store object on the same directory, as another process would have."""
    config = StoreConfig(tmp_path / "kv", FP)
    with KVStore(config) as reader, KVStore(config) as other:
        yield reader, other


# ---- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_config_rejects_bad_mapped_entries(tmp_path, value):
    with pytest.raises(CacheError, match="mapped_entries"):
        StoreConfig(tmp_path, FP, mapped_entries=value)


# ---- reuse ------------------------------------------------------------------------------------------


def test_a_warm_read_opens_and_maps_no_file(two_stores, monkeypatch):
    store, _ = two_stores
    keys = [f"k{i}" for i in range(5)]
    for i, key in enumerate(keys):
        store.put(key, make_entry(i))
    assert all(entry_matches(e, i) for i, e in enumerate(store.get_many(keys)))  # maps and verifies once
    assert store.stats()["mapped"] == 5
    calls: list[str] = []
    real_open, real_mmap = os.open, mmap.mmap
    monkeypatch.setattr(os, "open", lambda *a, **kw: (calls.append("open"), real_open(*a, **kw))[1])
    monkeypatch.setattr(mmap, "mmap", lambda *a, **kw: (calls.append("mmap"), real_mmap(*a, **kw))[1])
    for _ in range(3):
        got = store.get_many(keys) + [store.get(k) for k in keys]
        assert all(entry_matches(e, i % 5) for i, e in enumerate(got))
    assert calls == [] and store.stats()["hits"] == 5 + 3 * 10


def test_each_read_is_a_new_entry_over_shared_read_only_views(two_stores):
    store, _ = two_stores
    store.put("a", make_entry(1))
    first, second = store.get("a"), store.get("a")
    assert first is not second and first.meta is not second.meta and entry_matches(second, 1)
    assert not first.k.flags.writeable and not first.k.flags.owndata
    first.meta["version"] = 99  # a caller's change of its own meta dict reaches no later read
    assert store.get("a").meta["version"] == 0


def test_int8_reads_reuse_the_mapping_and_dequantize_afresh(tmp_path):
    with KVStore(StoreConfig(tmp_path, FP, quantize_int8=True)) as store:
        store.put("a", make_entry(2))
        first, second = store.get("a"), store.get("a")
        assert store.stats()["mapped"] == 1
        assert first.k.flags.owndata and first.k is not second.k
        assert np.array_equal(first.k, second.k) and np.array_equal(first.v, second.v)  # bit-identical reads


# ---- the file changed after it was mapped ---------------------------------------------------------------


def test_replaced_after_mapping_reads_the_new_version(two_stores):
    store, other = two_stores
    store.put("a", make_entry(3, version=1))
    old, before = store.get("a"), os.stat(entry_path(store, "a"))
    other.put("a", make_entry(3, version=2))  # same size, new inode, renamed over the mapped file
    after = os.stat(entry_path(store, "a"))
    assert after.st_size == before.st_size and after.st_ino != before.st_ino
    new = store.get("a")
    assert entry_matches(new, 3, version=2)
    assert entry_matches(old, 3, version=1)  # an entry read before keeps the version it mapped
    assert store.stats()["mapped"] == 1 and store.stats()["corrupted"] == 0


def test_replaced_by_another_process_after_mapping(two_stores):
    store, _ = two_stores
    store.put("a", make_entry(4, version=1))
    assert entry_matches(store.get("a"), 4, version=1)
    child = subprocess.run([sys.executable, "-c", COMMON + "import sys\n"
                            "KVStore(StoreConfig(sys.argv[1], sys.argv[2])).put('a', make_entry(4, version=2))\n",
                            str(store.config.directory), FP], timeout=120)
    assert child.returncode == 0
    assert entry_matches(store.get("a"), 4, version=2)


def test_deleted_after_mapping_is_a_miss_and_unpinned(two_stores):
    store, other = two_stores
    store.put("a", make_entry(5))
    held = store.get("a")
    assert other.delete("a")
    assert store.get("a") is None and store.get_many(["a"]) == [None]
    assert store.stats()["mapped"] == 0 and store.stats()["misses"] == 2
    assert entry_matches(held, 5)  # arrays a caller holds outlive the deletion


def test_evicted_after_mapping_is_a_miss(tmp_path):
    size = KVStore(StoreConfig(tmp_path / "probe", FP)).put("x", make_entry(0))
    directory = tmp_path / "kv"
    with KVStore(StoreConfig(directory, FP)) as store, \
            KVStore(StoreConfig(directory, FP, max_bytes=2 * size + size // 2)) as writer:
        writer.put("a", make_entry(6))
        assert entry_matches(store.get("a"), 6)
        os.utime(entry_path(store, "a"), ns=(1, os.stat(entry_path(store, "a")).st_mtime_ns))  # the oldest
        writer.put("b", make_entry(7))
        writer.put("c", make_entry(8))  # three do not fit: "a" is evicted
        assert "a" not in writer and writer.stats()["evictions"] == 1
        assert store.get("a") is None and store.stats()["mapped"] == 0
        writer.put("a", make_entry(6, version=3))  # indexed again: a new file, mapped afresh
        assert entry_matches(store.get("a"), 6, version=3)


def _rewrite_in_place(path: Path, data: bytes, mtime_ns: int) -> None:
    """Overwrite the file's bytes through the same inode (no rename) and set its mtime to ``mtime_ns``."""
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(os.stat(path).st_atime_ns, mtime_ns))


def test_rewritten_in_place_same_size_after_mapping_is_checked_again(two_stores):
    store, other = two_stores
    store.put("a", make_entry(9, version=1))
    assert entry_matches(store.get("a"), 9, version=1)
    path = entry_path(store, "a")
    st = os.stat(path)
    other.put("b", make_entry(9, version=2))
    good = entry_path(other, "b").read_bytes()  # a valid entry of the same size, but for key "b"
    # A later write: a new mtime (set here, so the test does not depend on the clock's granularity).
    _rewrite_in_place(path, good, st.st_mtime_ns + 1_000_000)
    assert os.stat(path).st_ino == st.st_ino and os.stat(path).st_size == st.st_size
    assert store.get("a") is None and store.stats()["corrupted"] == 1  # its header names another key
    store.put("a", make_entry(9, version=1))
    assert entry_matches(store.get("a"), 9, version=1)
    path_st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x5A  # a payload byte flipped
    _rewrite_in_place(path, bytes(data), path_st.st_mtime_ns + 1_000_000)
    assert store.get("a") is None and store.stats()["corrupted"] == 2 and not path.exists()


def test_verify_every_read_checks_a_reused_mapping_even_when_the_version_looks_unchanged(tmp_path):
    with KVStore(StoreConfig(tmp_path, FP, verify_every_read=True)) as store:
        store.put("a", make_entry(10))
        assert entry_matches(store.get("a"), 10) and store.stats()["mapped"] == 1
        path = entry_path(store, "a")
        st = os.stat(path)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x5A
        _rewrite_in_place(path, bytes(data), st.st_mtime_ns)  # same inode, size and mtime: bit rot
        assert os.stat(path).st_mtime_ns == st.st_mtime_ns
        assert store.get("a") is None and store.stats()["corrupted"] == 1 and store.stats()["mapped"] == 0


# ---- bound and lifetime ---------------------------------------------------------------------------------


@needs_proc_maps
def test_the_bound_holds_and_close_unmaps(tmp_path):
    with KVStore(StoreConfig(tmp_path, FP, mapped_entries=3)) as store:
        keys = [f"k{i}" for i in range(5)]
        for i, key in enumerate(keys):
            store.put(key, make_entry(i))
        assert all(entry_matches(e, i) for i, e in enumerate(store.get_many(keys)))  # results freed here
        for i, key in enumerate(keys):  # one at a time: k2, k3, k4 are the most recently read
            assert entry_matches(store.get(key), i)
        paths = {str(entry_path(store, key)) for key in keys}
        assert store.stats()["mapped"] == 3 and len(paths & mapped_files()) == 3  # the 3 most recent
        assert {str(entry_path(store, k)) for k in keys[2:]} <= mapped_files()
        held = store.get("k4")
        store.close()
        assert paths & mapped_files() == {str(entry_path(store, "k4"))}  # only the one a caller holds
        assert entry_matches(held, 4)
        del held
        assert not paths & mapped_files()


def test_mapped_entries_0_maps_on_every_read(tmp_path, monkeypatch):
    with KVStore(StoreConfig(tmp_path, FP, mapped_entries=0)) as store:
        store.put("a", make_entry(11))
        assert entry_matches(store.get("a"), 11)
        calls: list[int] = []
        real_mmap = mmap.mmap
        monkeypatch.setattr(mmap, "mmap", lambda *a, **kw: (calls.append(1), real_mmap(*a, **kw))[1])
        assert entry_matches(store.get("a"), 11) and calls == [1] and store.stats()["mapped"] == 0


# ---- several processes ------------------------------------------------------------------------------------

# The writer replaces and deletes the entries the readers keep mapped; the readers use the default CRC policy
# (verify once per file version), so every read of a version after the first reuses its mapping. Hand-over by
# marker files, not a clock (as in test_kvstore.py).
WRITER = r'''
import os, sys
store = KVStore(StoreConfig(sys.argv[1], sys.argv[2]))
signals, version = sys.argv[3], 0
while version < 300 or not all(os.path.exists(os.path.join(signals, f"reader-{i}")) for i in range(2)):
    version += 1
    key = f"k{version % 10}"
    if version % 7 == 0:
        store.delete(key)
    else:
        store.put(key, make_entry(version % 10, version=version, tokens=64))
open(os.path.join(signals, "writer"), "w").close()
print(version)
'''

READER = r'''
import json, os, sys
store = KVStore(StoreConfig(sys.argv[1], sys.argv[2]))
signals, me = sys.argv[3], sys.argv[4]
rounds, good, bad, missing = 0, 0, 0, 0
while not os.path.exists(os.path.join(signals, "writer")):
    got = store.get_many([f"k{i}" for i in range(10)]) + [store.get(f"k{i}") for i in range(10)]
    for i, entry in enumerate(got):
        if entry is None:
            missing += 1
        elif entry_matches(entry, i % 10, tokens=64):
            good += 1
        else:
            bad += 1
    rounds += 1
    if rounds >= 20 and good and missing and not os.path.exists(os.path.join(signals, me)):
        open(os.path.join(signals, me), "w").close()
print(json.dumps({"good": good, "bad": bad, "missing": missing, "corrupted": store.stats()["corrupted"],
                  "mapped": store.stats()["mapped"]}))
'''


def test_readers_keeping_mappings_beside_a_writer_replacing_and_deleting(tmp_path):
    directory, signals = str(tmp_path / "kv"), tmp_path / "signals"
    signals.mkdir()
    KVStore(StoreConfig(directory, FP)).close()
    procs = [subprocess.Popen([sys.executable, "-c", COMMON + code, directory, FP, str(signals), *extra],
                              stdout=subprocess.PIPE, text=True)
             for code, extra in [(WRITER, []), (READER, ["reader-0"]), (READER, ["reader-1"])]]
    outs = [p.communicate(timeout=600)[0] for p in procs]  # a bound that only fails loudly
    assert all(p.returncode == 0 for p in procs), outs
    assert int(outs[0]) >= 300
    for out in outs[1:]:
        counts = json.loads(out)
        assert counts["good"] > 0 and counts["missing"] > 0 and counts["bad"] == 0, counts
        assert counts["corrupted"] == 0 and 0 < counts["mapped"] <= 10, counts


# ---- the warm rerank: candidates batched by K/V length ----------------------------------------------------------


def test_candidates_batched_by_kv_length_score_as_without_grouping_in_the_callers_order(tiny_bundle, images,
                                                                                         tmp_path):
    """Scores with batches cut from length-sorted candidates equal those of batches cut in the caller's order
    (no grouping), of each candidate alone and of one batch of all, listed under the caller's indices.

    Tolerance: |diff| <= 1e-6 + 1e-6 |score|. The arithmetic is the same but the padded length is not, and
    it changes the order of fp32 reductions over the (masked) K/V: a few float32 ulps, up to 9.5e-7 at
    scores of about 1.2 on the tiny bundle when measured.
    """
    from minireranker.runtime.documents import Document
    from minireranker.runtime.reranker import Reranker

    photos = sorted(images.values(), key=lambda im: im.size)
    docs = [Document(image=photos[i % len(photos)].resize((24 + 20 * (i * 3 % 5), 64 - 8 * (i % 3))), id=f"p{i}")
            for i in range(7)]
    docs += [Document(text="a text " * (1 + 5 * (i % 3)), id=f"t{i}") for i in range(3)]
    docs = [docs[i] for i in (3, 8, 0, 6, 9, 1, 5, 2, 7, 4)]  # lengths interleaved, not sorted
    query = "a photograph of a rocket"

    def run(batch_size: int) -> tuple[dict[str, float], dict[str, float], list[list[int]], list[int]]:
        """(scores by id, scores without grouping by id, K/V lengths of each band batch, lengths of docs)."""
        with Reranker(tiny_bundle, tmp_path / "kv", batch_size=batch_size) as reranker:
            batches: list[list[int]] = []
            band = reranker._band

            def recording_band(*args, **kwargs):
                entries = next(a for a in args if isinstance(a, list) and a and isinstance(a[0], KVEntry))
                batches.append([e.k.shape[2] for e in entries])
                return band(*args, **kwargs)

            reranker._band = recording_band
            out = reranker.rerank(query, docs)
            rerank_batches = list(batches)
            entries = [reranker.store.get(reranker.key(d)) for d in docs]
            state, ungrouped = reranker.prepare_query(query), {}
            for i in range(0, len(docs), batch_size):  # one call per caller-order chunk: batches as given
                chunk = list(zip(docs[i:i + batch_size], entries[i:i + batch_size]))
                scores = reranker.score_pairs([(state, e) for _, e in chunk])
                ungrouped.update({d.id: float(x) for (d, _), x in zip(chunk, scores)})
        assert not out.failed and len(out.results) == len(docs)
        assert all(r.id == docs[r.index].id for r in out.results)  # indices are the caller's
        return {r.id: r.score for r in out.results}, ungrouped, rerank_batches, \
            [e.k.shape[2] for e in entries]

    alone, _, _, lengths = run(1)
    assert len(set(lengths)) >= 4  # the documents differ in K/V length, so grouping has work to do
    grouped, ungrouped, batches, _ = run(3)
    one_batch, _, _, _ = run(64)
    assert [n for b in batches for n in b] == sorted(lengths)  # cut from candidates sorted by length
    padded = sum(len(b) * max(b) - sum(b) for b in batches)
    in_caller_order = [lengths[i: i + 3] for i in range(0, len(lengths), 3)]
    assert padded < sum(len(b) * max(b) - sum(b) for b in in_caller_order)
    for scores in (grouped, one_batch, ungrouped):
        assert scores.keys() == alone.keys()
        np.testing.assert_allclose([scores[k] for k in alone], list(alone.values()), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([grouped[k] for k in alone], [ungrouped[k] for k in alone], rtol=1e-6, atol=1e-6)
