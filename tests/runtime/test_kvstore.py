"""The disk-backed K/V store: zero-copy reads, crash safety, corruption, concurrency, LRU, namespaces, int8.

Timing is measured by benchmarks/kvstore_bench.py, never asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minireranker.runtime.errors import CacheError, MiniRerankerError
from minireranker.runtime.kvstore import (
    MARKER_NAME,
    TEMP_PREFIX,
    KVEntry,
    KVStore,
    StoreConfig,
    dequantize_int8,
    entry_file_stem,
    quantize_per_channel_int8,
)

FP = "00000000feedf00d"

# Shared by this file and the child processes it starts: an entry whose content is a function of
# (seed, version), so any reader can check what it got.
COMMON = r'''
import numpy as np
from minireranker.runtime.kvstore import KVEntry, KVStore, StoreConfig

def make_entry(seed, version=0, tokens=16, layers=2, heads=2, dim=8, dtype=np.float32):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((layers, heads, tokens, dim)).astype(dtype)
    v = rng.standard_normal((layers, heads, tokens, dim)).astype(dtype)
    k.flat[0], v.flat[0] = version, -version
    positions = np.stack([np.zeros(tokens), np.arange(tokens) // 4, np.arange(tokens) % 4]).astype(np.int64)
    return KVEntry(k=k, v=v, positions=positions, query_start=tokens + seed,
                   meta={"seed": seed, "version": version, "kept": list(range(0, tokens, 2))})

def entry_matches(entry, seed, **kw):
    want = make_entry(seed, entry.meta["version"], **kw)
    return (entry.meta == want.meta and entry.query_start == want.query_start
            and entry.k.dtype == want.k.dtype and np.array_equal(entry.k, want.k)
            and np.array_equal(entry.v, want.v) and np.array_equal(entry.positions, want.positions))
'''
exec(COMMON)  # defines make_entry and entry_matches here too


def run_child(code: str, *args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMMON + code, *args], text=True, **popen)


@pytest.fixture
def store(tmp_path):
    with KVStore(StoreConfig(tmp_path / "kv", FP)) as s:
        yield s


def entry_path(store: KVStore, key: str) -> Path:
    return store.namespace / (entry_file_stem(key) + ".kv")


# ---- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", ["", "abc", "../../etc0000", "dead/beef00", "g0000000", "a" * 129, 12345678])
def test_config_rejects_fingerprints_that_are_not_hex(tmp_path, fingerprint):
    with pytest.raises(CacheError, match="fingerprint"):
        StoreConfig(tmp_path, fingerprint)


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True])
def test_config_rejects_bad_bounds(tmp_path, max_bytes):
    with pytest.raises(CacheError, match="max_bytes"):
        StoreConfig(tmp_path, FP, max_bytes=max_bytes)


def test_config_tiny_preset_and_normalisation(tmp_path):
    config = StoreConfig.tiny(str(tmp_path), fingerprint="ABCDEF0123")
    assert config.directory == tmp_path and config.fingerprint == "abcdef0123" and config.max_bytes == 1 << 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_bytes = 5


# ---- round trips and zero copy -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_is_bit_exact_in_the_given_dtype_and_zero_copy(store, dtype):
    entry = make_entry(3, version=7, dtype=dtype)
    written = store.put("doc-3", entry)
    assert written == os.path.getsize(entry_path(store, "doc-3")) > entry.nbytes
    got = store.get("doc-3")
    assert entry_matches(got, 3, dtype=dtype) and got.k.dtype == dtype and got.positions.dtype == np.int64
    assert got.meta == entry.meta and got.query_start == entry.query_start
    for arr in (got.k, got.v, got.positions):
        assert arr.base is not None and not arr.flags.owndata and not arr.flags.writeable
        assert arr.ctypes.data % 64 == 0  # aligned for SIMD readers
        with pytest.raises(ValueError):
            arr.flat[0] = 1


def test_entry_has_no_per_entry_system_segment():
    # the instruction segment's K/V depends on the document (DESIGN.md section 4); the system segment's does not
    assert [f.name for f in dataclasses.fields(KVEntry)] == ["k", "v", "positions", "query_start", "meta",
                                                             "instruction_k", "instruction_v"]


def test_int8_round_trip_error_is_within_half_a_scale(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 40, 16)) * rng.uniform(0.01, 30, (2, 3, 1, 16))).astype(np.float32)
    x[0, 0, :, 0] = 0  # an all-zero channel must not divide by zero
    q, scale = quantize_per_channel_int8(x)
    assert q.dtype == np.int8 and scale.shape == (2, 3, 1, 16) and scale.dtype == np.float32
    err = np.abs(x - dequantize_int8(q, scale))
    assert np.all(err <= scale / 2 * (1 + 1e-5) + 1e-30)  # tolerance: float32 rounding of x / scale
    assert np.all(dequantize_int8(q, scale)[0, 0, :, 0] == 0)

    entry = make_entry(1, tokens=128, dim=64, dtype=np.float16)
    with KVStore(StoreConfig(tmp_path / "fp16", FP)) as store:
        fp16_bytes = store.put("a", entry)
    with KVStore(StoreConfig(tmp_path / "int8", FP, quantize_int8=True)) as store:
        written = store.put("a", entry)
        got = store.get("a")
    assert written < fp16_bytes * 0.6  # int8 halves fp16 K/V; scales and positions add a little
    assert got.k.dtype == np.float32 and got.k.flags.owndata  # dequantized: a new array, not zero-copy
    assert got.positions.base is not None and not got.positions.flags.writeable
    for original, restored in ((entry.k, got.k), (entry.v, got.v)):
        _, scale = quantize_per_channel_int8(original)
        assert np.all(np.abs(original.astype(np.float32) - restored) <= scale / 2 * (1 + 1e-5) + 1e-30)


def test_an_entry_stored_in_the_other_mode_is_a_miss(tmp_path):
    with KVStore(StoreConfig(tmp_path, FP, quantize_int8=True)) as store:
        store.put("a", make_entry(1))
    with KVStore(StoreConfig(tmp_path, FP)) as store:
        assert store.get("a") is None and "a" in store and store.stats()["corrupted"] == 0
        store.put("a", make_entry(1))
        assert entry_matches(store.get("a"), 1)


# ---- API -------------------------------------------------------------------------------------------


def test_keys_contains_delete_stats_and_get_many(store):
    odd_keys = ["doc-1", "../../escape", "sub/dir/key", "ключ ✓"]
    for i, key in enumerate(odd_keys):
        store.put(key, make_entry(i))
    assert sorted(os.listdir(store.namespace)) == sorted(entry_file_stem(k) + ".kv" for k in odd_keys)
    assert store.keys() == sorted(odd_keys) and "../../escape" in store and "nope" not in store
    got = store.get_many(["nope", *odd_keys])
    assert got[0] is None and all(entry_matches(e, i) for i, e in enumerate(got[1:]))
    assert store.delete("doc-1") and not store.delete("doc-1") and "doc-1" not in store
    stats = store.stats()
    assert stats["entries"] == 3 and stats["hits"] == 4 and stats["misses"] == 1 and stats["puts"] == 4
    assert stats["bytes"] == sum(os.path.getsize(store.namespace / n) for n in os.listdir(store.namespace))


def test_threads_share_one_store(store):
    errors: list[str] = []

    def work(worker: int) -> None:
        for i in range(20):
            seed = worker * 100 + i % 5
            store.put(f"k{seed}", make_entry(seed, version=i))
            got = store.get(f"k{seed}")
            if got is None or not entry_matches(got, seed):
                errors.append(f"worker {worker} read a bad k{seed}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(store.keys()) == 20


@pytest.mark.parametrize("change, match", [
    (lambda e: dataclasses.replace(e, k=e.k.astype(np.float64), v=e.v.astype(np.float64)), "float16 or float32"),
    (lambda e: dataclasses.replace(e, v=e.v[:, :, :-1]), "share a shape"),
    (lambda e: dataclasses.replace(e, positions=e.positions[:2]), "positions"),
    (lambda e: dataclasses.replace(e, positions=e.positions.astype(np.float32)), "positions"),
    (lambda e: dataclasses.replace(e, query_start=-1), "query_start"),
    (lambda e: dataclasses.replace(e, meta={"x": object()}), "JSON"),
    (lambda e: dataclasses.replace(e, k=e.k.tolist()), "numpy array"),
])
def test_put_rejects_malformed_entries(store, change, match):
    with pytest.raises(CacheError, match=match):
        store.put("a", change(make_entry(0)))
    with pytest.raises(CacheError, match="key"):
        store.put("", make_entry(0))
    assert store.keys() == []


def test_closed_store_refuses_work(tmp_path):
    store = KVStore(StoreConfig(tmp_path, FP))
    store.put("a", make_entry(0))
    got = store.get("a")
    store.close()
    assert entry_matches(got, 0)  # arrays outlive the store
    with pytest.raises(CacheError, match="closed"):
        store.get("a")


# ---- directory errors --------------------------------------------------------------------------------


def test_directory_errors_name_the_directory_and_say_what_to_do(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CacheError, match=f"{a_file}.*is a file"):
        KVStore(StoreConfig(a_file, FP))
    with pytest.raises(CacheError, match=f"cannot create.*{a_file / 'sub'}.*writable"):
        KVStore(StoreConfig(a_file / "sub", FP))
    busy = tmp_path / "home"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match=f"{busy} is not a miniReranker K/V store.*notes.txt.*dedicated"):
        KVStore(StoreConfig(busy, FP))
    bad_marker = tmp_path / "bad"
    bad_marker.mkdir()
    (bad_marker / MARKER_NAME).write_text("{not json")
    with pytest.raises(CacheError, match="not a miniReranker K/V store marker"):
        KVStore(StoreConfig(bad_marker, FP))
    assert issubclass(CacheError, MiniRerankerError)


def test_stores_opening_a_new_directory_at_once_agree(tmp_path):
    errors: list[BaseException] = []

    def open_and_put(i: int) -> None:
        try:
            with KVStore(StoreConfig(tmp_path / "new", f"{i:08x}")) as store:
                store.put("a", make_entry(i))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_and_put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(os.listdir(tmp_path / "new")) == 9  # the marker and 8 namespaces


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CacheError, match=f"{locked}.*not writable"):
            KVStore(StoreConfig(locked, FP))
    finally:
        locked.chmod(0o700)


# ---- namespaces ----------------------------------------------------------------------------------------


def test_a_new_fingerprint_never_reads_an_old_entry(tmp_path):
    with KVStore(StoreConfig(tmp_path, "aaaaaaaa01")) as old:
        old.put("doc", make_entry(1))
    with KVStore(StoreConfig(tmp_path, "bbbbbbbb02", max_bytes=1)) as new:
        assert new.get("doc") is None and "doc" not in new and new.keys() == []
        assert new.stats()["entries"] == 0
    with KVStore(StoreConfig(tmp_path, "aaaaaaaa01")) as old:
        assert entry_matches(old.get("doc"), 1)  # the other bundle's bound never evicted it
    # a file copied across namespaces is refused too: its header names the old fingerprint
    os.link(tmp_path / "aaaaaaaa01" / (entry_file_stem("doc") + ".kv"),
            tmp_path / "bbbbbbbb02" / (entry_file_stem("doc") + ".kv"))
    with KVStore(StoreConfig(tmp_path, "bbbbbbbb02")) as new:
        assert new.get("doc") is None


# ---- corruption ------------------------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("where", ["magic", "prefix-crc", "header", "payload-first", "payload-last", "truncated"])
def test_corrupted_entry_is_detected_logged_removed_and_never_returned(tmp_path, caplog, where):
    config = StoreConfig(tmp_path, FP)
    with KVStore(config) as store:
        store.put("doc-9", make_entry(9))
        store.put("doc-8", make_entry(8))
        path = entry_path(store, "doc-9")
    size = path.stat().st_size
    header_len = int.from_bytes(path.read_bytes()[12:16], "little")
    payload_start = (32 + header_len + 63) // 64 * 64
    if where == "truncated":
        os.truncate(path, size - 5)
    else:
        _flip(path, {"magic": 2, "prefix-crc": 21, "header": 32 + header_len // 2,
                     "payload-first": payload_start, "payload-last": size - 1}[where])
    with KVStore(config) as store, caplog.at_level(logging.WARNING, logger="minireranker.kvstore"):
        assert store.get("doc-9") is None
        assert not path.exists() and "doc-9" not in store
        assert entry_matches(store.get("doc-8"), 8)
        assert store.stats()["corrupted"] == 1
    [record] = [r for r in caplog.records if r.name == "minireranker.kvstore"]
    assert record.levelno == logging.WARNING and "doc-9" in record.getMessage()


def test_verify_every_read_catches_corruption_after_a_verified_read(tmp_path):
    with KVStore(StoreConfig(tmp_path, FP, verify_every_read=True)) as store:
        store.put("a", make_entry(0))
        assert store.get("a") is not None
        _flip(entry_path(store, "a"), os.path.getsize(entry_path(store, "a")) - 100)
        assert store.get("a") is None and store.stats()["corrupted"] == 1


# ---- crash safety --------------------------------------------------------------------------------------

WRITER_UNTIL_KILLED = r'''
import sys
store = KVStore(StoreConfig(sys.argv[1], sys.argv[2]))
i = int(sys.argv[3])
while True:
    store.put(f"k{i % 12}", make_entry(i % 12, version=i, tokens=1024, layers=4, heads=4, dim=32))
    if i == int(sys.argv[3]):
        print("ready", flush=True)
    i += 1
'''


def test_kill_9_during_put_leaves_only_complete_entries_and_temp_files_are_cleaned(tmp_path, caplog):
    rng = random.Random(1234)
    directory = tmp_path / "kv"
    KVStore(StoreConfig(directory, FP)).close()
    leftovers = 0
    for round_ in range(6):
        child = run_child(WRITER_UNTIL_KILLED, str(directory), FP, str(round_ * 1000), stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        leftovers += any(n.startswith(TEMP_PREFIX) for n in os.listdir(directory / FP))
    with caplog.at_level(logging.WARNING, logger="minireranker.kvstore"), \
            KVStore(StoreConfig(directory, FP, verify_every_read=True)) as store:
        assert not [n for n in os.listdir(store.namespace) if n.startswith(TEMP_PREFIX)]
        keys = store.keys()
        assert keys and len(keys) == store.stats()["entries"]
        for key in keys:
            entry = store.get(key)
            assert entry is not None and entry_matches(entry, int(key[1:]), tokens=1024, layers=4, heads=4, dim=32)
    assert not caplog.records
    print(f"{leftovers} of 6 kills left a temp file behind")


def test_opening_removes_dead_writers_temp_files_but_not_live_ones(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    with KVStore(StoreConfig(tmp_path, FP)) as store:
        namespace = store.namespace
    dead = namespace / f"{TEMP_PREFIX}999999-dead.kv"
    dead.write_bytes(b"half an entry")
    live = namespace / f"{TEMP_PREFIX}{os.getpid()}-live.kv"
    fd = os.open(live, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer in progress holds it
    try:
        KVStore(StoreConfig(tmp_path, FP)).close()
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)


def test_a_put_in_progress_holds_the_lock_that_keeps_its_temp_file(store, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    seen: list[str] = []
    real_replace = os.replace

    def checking_replace(src, dst):  # called by put just before the entry becomes visible
        fd = os.open(src, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("unlocked")
        except BlockingIOError:
            seen.append("locked")
        finally:
            os.close(fd)
        assert Path(src).name.startswith(TEMP_PREFIX) and Path(src).parent == Path(dst).parent
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checking_replace)
    store.put("a", make_entry(0))
    assert seen == ["locked"] and entry_matches(store.get("a"), 0)


# ---- several processes -----------------------------------------------------------------------------------

# The processes hand over by marker files, not by a clock, so the reads overlap the writes whatever the
# machine's speed: the writer keeps writing (at least 200 puts) until both readers have read 20 rounds with a
# good entry among them, and each reader keeps reading until the writer has stopped.
WRITER = r'''
import os, sys
store = KVStore(StoreConfig(sys.argv[1], sys.argv[2]))
signals, version = sys.argv[3], 0
while version < 200 or not all(os.path.exists(os.path.join(signals, f"reader-{i}")) for i in range(2)):
    version += 1
    store.put(f"k{version % 10}", make_entry(version % 10, version=version, tokens=256))
open(os.path.join(signals, "writer"), "w").close()
print(version)
'''

READER = r'''
import json, os, sys
store = KVStore(StoreConfig(sys.argv[1], sys.argv[2], verify_every_read=True))
signals, me = sys.argv[3], sys.argv[4]
rounds, good, bad, missing = 0, 0, 0, 0
while not os.path.exists(os.path.join(signals, "writer")):
    for seed, entry in enumerate(store.get_many([f"k{i}" for i in range(10)])):
        if entry is None:
            missing += 1
        elif entry_matches(entry, seed, tokens=256):
            good += 1
        else:
            bad += 1
    rounds += 1
    if rounds >= 20 and good and not os.path.exists(os.path.join(signals, me)):
        open(os.path.join(signals, me), "w").close()
print(json.dumps({"good": good, "bad": bad, "missing": missing, "corrupted": store.stats()["corrupted"]}))
'''


def test_two_readers_and_a_writer_at_once(tmp_path):
    directory, signals = str(tmp_path / "kv"), tmp_path / "signals"
    signals.mkdir()
    KVStore(StoreConfig(directory, FP)).close()
    procs = [run_child(WRITER, directory, FP, str(signals), stdout=subprocess.PIPE)]
    procs += [run_child(READER, directory, FP, str(signals), f"reader-{i}", stdout=subprocess.PIPE)
              for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]  # a bound that only fails loudly
    assert all(p.returncode == 0 for p in procs), outs
    assert int(outs[0]) > 10  # the writer rewrote entries while the readers read them
    for out in outs[1:]:
        counts = json.loads(out)
        assert counts["good"] > 0 and counts["bad"] == 0 and counts["corrupted"] == 0, counts


# ---- LRU -------------------------------------------------------------------------------------------------


def _tick() -> None:
    time.sleep(0.01)  # keep access times apart even where the clock is coarse


def test_lru_bound_and_eviction_order_survive_reopening_and_other_processes(tmp_path):
    size = KVStore(StoreConfig(tmp_path / "probe", FP)).put("x", make_entry(0))
    config = StoreConfig(tmp_path / "kv", FP, max_bytes=3 * size + size // 2)  # room for three entries
    with KVStore(config) as store:
        for i in range(3):
            store.put(f"k{i}", make_entry(i))
            _tick()
        assert store.get("k0") is not None  # k0 is now the most recent; k1 the least
        _tick()
        store.put("k3", make_entry(3))
        assert sorted(store.keys()) == ["k0", "k2", "k3"]
        assert store.stats()["evictions"] == 1 and store.stats()["bytes"] <= config.max_bytes
        _tick()
    with KVStore(config) as store:  # recency survived reopening: k2 is the oldest
        store.put("k4", make_entry(4))
        assert sorted(store.keys()) == ["k0", "k3", "k4"]
        _tick()
    child = run_child("import sys\nassert KVStore(StoreConfig(sys.argv[1], sys.argv[2])).get('k0') is not None\n",
                      str(config.directory), FP)
    assert child.wait(timeout=60) == 0  # another process used k0: k3 is now the oldest
    _tick()
    with KVStore(config) as store:
        store.put("k5", make_entry(5))
        assert sorted(store.keys()) == ["k0", "k4", "k5"]
        for i in range(6, 12):
            store.put(f"k{i}", make_entry(i))
            assert store.stats()["bytes"] <= config.max_bytes


def test_an_entry_larger_than_the_bound_is_not_stored(tmp_path, caplog):
    with KVStore(StoreConfig(tmp_path, FP, max_bytes=1000)) as store, \
            caplog.at_level(logging.WARNING, logger="minireranker.kvstore"):
        assert store.put("big", make_entry(0, tokens=64)) == 0
        assert "big" not in store and "exceeds max_bytes" in caplog.text
