"""Benchmark the K/V store: put throughput and a "rerank read" of N entries against a plain memcpy.

    python benchmarks/kvstore_bench.py --out bench-out/kvstore            # 100 entries of 4 MiB fp16

A rerank read is ``get_many`` of every key plus touching every byte (a uint64 sum, ~memory speed), as
the band graph would: ``Reranker.lookup`` (runtime/reranker.py) reads a rerank's candidates with exactly
this one ``get_many`` call. It is timed three ways:

* cold:  the entries' pages were dropped from the page cache (``posix_fadvise(DONTNEED)``; a VM's host may
         still cache them) and the store object is new, so the first read also checks each payload CRC;
* first: pages cached, store object new (CRC checked): a fresh serving process;
* warm:  the same store object again (CRC already checked): a serving process reranking again.

Baselines measured in the same run over same-sized in-memory buffers: ``memcpy`` (np.copyto into a
preallocated buffer), ``copy`` (a fresh array, as a copying store would return) and ``touch`` alone.
Alternatives for docs/kvstore.md, each timed the same way: safetensors files (``safetensors.numpy``),
and LMDB when the ``lmdb`` package imports (zero-copy ``buffers=True`` inside one read transaction).
With ``--bundle DIR`` (a built bundle, e.g. the tiny one) it also times a **warm rerank** of ``--entries``
cached candidates through ``Reranker`` (``timings["kv_lookup"]`` and ``["kv_read"]`` per query, median of
``--queries``) and splits one entry read into its steps over that bundle's real entries (``entry_phases``:
stat, open, fstat, mmap, header check + JSON, array views, payload CRC, recency ``utime``, close; each
summed over the candidates), next to the store's own warm ``get_many`` of the same keys.
Writes ``results.json`` and ``results.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from minireranker.runtime.kvformat import _PREFIX, array_views, read_header
from minireranker.runtime.kvstore import KVEntry, KVStore, StoreConfig, dequantize_int8, quantize_per_channel_int8
from minireranker.runtime.profiling.telemetry import machine_info

FINGERPRINT = "0123456789abcdef"
LAYERS, KV_HEADS, HEAD_DIM = 4, 8, 128  # a Qwen3-VL-2B band of 4 layers


def make_entry(megabytes: float, dtype: np.dtype, seed: int = 0) -> KVEntry:
    """One document's entry of about ``megabytes`` MiB of K+V: k, v [4, 8, T, 128]."""
    tokens = max(1, round(megabytes * 2**20 / (2 * LAYERS * KV_HEADS * HEAD_DIM * np.dtype(dtype).itemsize)))
    rng = np.random.default_rng(seed)
    shape = (LAYERS, KV_HEADS, tokens, HEAD_DIM)
    positions = np.stack([np.zeros(tokens), np.arange(tokens) // 16, np.arange(tokens) % 16]).astype(np.int64)
    return KVEntry(k=rng.standard_normal(shape, dtype=np.float32).astype(dtype),
                   v=rng.standard_normal(shape, dtype=np.float32).astype(dtype),
                   positions=positions, query_start=tokens + 40, meta={"label": "bench"})


def touch(arrays: list[np.ndarray]) -> int:
    """Read every byte (a wrapping uint64 sum), as a consumer of the K/V would."""
    total = 0
    for a in arrays:
        b = a.reshape(-1).view(np.uint8)
        n = b.size // 8 * 8
        total += int(b[:n].view(np.uint64).sum()) + int(b[n:].sum())
    return total


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def drop_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to forget the files' clean pages (no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_files_cold(paths: list[Path]) -> float:
    """Seconds to read the files with plain readinto after dropping their pages: the disk's own rate."""
    drop_page_cache(paths)
    buffer = bytearray(max(p.stat().st_size for p in paths))
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            f.readinto(buffer)
    return time.perf_counter() - start


def entry_arrays(entries: list) -> list[np.ndarray]:
    return [a for e in entries for a in (e.k, e.v, e.positions)]


def bench_store(root: Path, entry: KVEntry, n: int, repeats: int, quantize: bool) -> dict:
    """Put n entries into a fresh store, then time cold, first and warm rerank reads."""
    config = StoreConfig(root, FINGERPRINT, quantize_int8=quantize)
    keys = [f"doc-{i:05d}" for i in range(n)]
    put_times, written = [], 0
    with KVStore(config) as store:
        for i, key in enumerate(keys):
            entry.k.flat[0] = i  # distinct contents, one buffer
            seconds, nbytes = timed(lambda: store.put(key, entry))
            put_times.append(seconds)
            written += nbytes
        paths = [store.namespace / name for name in os.listdir(store.namespace) if name.endswith(".kv")]
    result = {"put_s": sum(put_times), "put_ms_per_entry": 1e3 * statistics.median(put_times),
              "bytes_on_disk": written, "reads": {}}
    for kind in ("cold", "first", "warm"):
        runs = []
        for _ in range(repeats):
            if kind == "cold":
                drop_page_cache(paths)
            if kind != "warm" or not runs:
                store = KVStore(config)
                if kind == "warm":
                    store.get_many(keys)  # verify once, then time later reads
            get_s, got = timed(lambda: store.get_many(keys))
            assert all(e is not None for e in got)
            touch_s, _ = timed(lambda: touch(entry_arrays(got)))
            runs.append({"get_s": get_s, "touch_s": touch_s, "total_s": get_s + touch_s})
            if kind != "warm":
                store.close()
            del got
        store.close()
        result["reads"][kind] = runs
    result["cold_file_read_s"] = [read_files_cold(paths) for _ in range(repeats)]
    return result


def bench_baselines(entry: KVEntry, n: int, repeats: int) -> dict:
    """memcpy / copy / touch over n in-memory copies of the entry's arrays (the same bytes as a read)."""
    sources = [np.array(a) for _ in range(n) for a in (entry.k, entry.v, entry.positions)]
    targets = [np.empty_like(a) for a in sources]
    touch(targets)  # fault the targets in once: memcpy measures copying, not first-touch page faults
    runs = []
    for _ in range(repeats):
        memcpy_s, _ = timed(lambda: [np.copyto(t, s) for t, s in zip(targets, sources)])
        copy_s, copies = timed(lambda: [s.copy() for s in sources])
        touch_s, _ = timed(lambda: touch(sources))
        runs.append({"memcpy_s": memcpy_s, "copy_s": copy_s, "touch_s": touch_s})
        del copies
    return {"runs": runs, "bytes": sum(s.nbytes for s in sources)}


def bench_safetensors(root: Path, entry: KVEntry, n: int, repeats: int) -> dict | None:
    try:
        from safetensors.numpy import load_file, save_file
    except ImportError:
        return None
    root.mkdir(parents=True)
    paths, put_s = [root / f"doc-{i:05d}.safetensors" for i in range(n)], 0.0
    tensors = {"k": entry.k, "v": entry.v, "positions": entry.positions}
    for path in paths:
        put_s += timed(lambda: (save_file(tensors, str(path)), _fsync(path)))[0]
    runs = []
    for _ in range(repeats):
        get_s, got = timed(lambda: [load_file(str(p)) for p in paths])
        touch_s, _ = timed(lambda: touch([a for d in got for a in d.values()]))
        runs.append({"get_s": get_s, "touch_s": touch_s, "total_s": get_s + touch_s})
    return {"put_s": put_s, "reads": {"warm": runs}}


def bench_lmdb(root: Path, entry: KVEntry, n: int, repeats: int) -> dict | None:
    try:
        import lmdb
    except ImportError:
        return None
    arrays = (entry.k, entry.v, entry.positions)
    size = sum(a.nbytes for a in arrays)
    env = lmdb.open(str(root), map_size=int(n * size * 1.5) + (64 << 20), sync=True, max_readers=16)
    put_s = 0.0
    for i in range(n):
        value = b"".join(a.tobytes() for a in arrays)
        put_s += timed(lambda: _lmdb_put(env, f"doc-{i:05d}".encode(), value))[0]
    runs = []
    for _ in range(repeats):
        with env.begin(buffers=True) as txn:  # views are valid only inside the transaction
            def read():
                out = []
                for i in range(n):
                    buf, offset = txn.get(f"doc-{i:05d}".encode()), 0
                    for a in arrays:
                        out.append(np.frombuffer(buf, a.dtype, a.size, offset))
                        offset += a.nbytes
                return out
            get_s, got = timed(read)
            touch_s, _ = timed(lambda: touch(got))
            del got
        runs.append({"get_s": get_s, "touch_s": touch_s, "total_s": get_s + touch_s})
    env.close()
    return {"put_s": put_s, "reads": {"warm": runs}}


def _lmdb_put(env, key: bytes, value: bytes) -> None:
    with env.begin(write=True) as txn:
        txn.put(key, value)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def int8_fidelity(entry: KVEntry) -> dict:
    """Relative RMS error and worst error in scales of int8 round trips of the entry's K and V."""
    out = {}
    for name in ("k", "v"):
        x = getattr(entry, name).astype(np.float32)
        q, scale = quantize_per_channel_int8(x)
        err = x - dequantize_int8(q, scale)
        out[name] = {"relative_rms_error": float(np.sqrt((err**2).mean() / (x**2).mean())),
                     "max_error_in_scales": float((np.abs(err) / np.where(scale > 0, scale, 1)).max())}
    return out


PHASES = ("stat", "open", "fstat", "mmap", "header", "views", "crc", "utime", "close")


def entry_phases(paths: list[Path], repeats: int) -> dict[str, float]:
    """Median seconds of each step of reading every file in ``paths`` once, summed over the files."""
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        spent = dict.fromkeys(PHASES, 0.0)
        for path in paths:
            clock = time.perf_counter()

            def lap(phase: str) -> None:
                nonlocal clock
                now = time.perf_counter()
                spent[phase] += now - clock
                clock = now

            os.stat(path)
            lap("stat")
            fd = os.open(path, os.O_RDONLY)
            lap("open")
            st = os.fstat(fd)
            lap("fstat")
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            lap("mmap")
            header, start = read_header(mm, st.st_size)
            lap("header")
            arrays = array_views(mm, start, st.st_size - start, header)
            lap("views")
            with memoryview(mm) as whole, whole[start:] as payload:
                assert zlib.crc32(payload) == _PREFIX.unpack_from(mm, 0)[4]
            lap("crc")
            os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
            lap("utime")
            os.close(fd)
            del arrays
            mm.close()
            lap("close")
        runs.append(spent)
    return {phase: statistics.median(r[phase] for r in runs) for phase in PHASES}


def bench_rerank(bundle: Path, root: Path, n: int, queries: int, repeats: int) -> dict:
    """A warm rerank of n cached candidates on ``bundle``, with the store keeping its mappings (the default)
    and with ``mapped_entries=0`` (map every entry on every read: the path before mappings were kept):
    per-query stage times, the store's warm ``get_many``, and one entry read's steps."""
    from PIL import Image

    from minireranker.runtime.documents import Document
    from minireranker.runtime.reranker import Reranker

    rng = np.random.default_rng(0)
    docs = [Document(image=Image.fromarray(rng.integers(0, 256, (48 + i % 5 * 8, 64, 3), dtype=np.uint8)),
                     id=f"doc-{i:03d}") for i in range(n)]
    ids = [d.id for d in docs]
    result: dict = {"candidates": n, "queries": queries, "variants": {}}
    with Reranker(bundle, root) as reranker:
        reranker.index(docs)
        keys = [reranker.key(d) for d in docs]
        default = reranker.store.config
        for label, mapped in (("kept mapped", default.mapped_entries), ("mapped_entries=0", 0)):
            reranker.store.close()
            reranker.store = store = KVStore(dataclasses.replace(default, mapped_entries=mapped))
            reranker.rerank("warm up the engines", ids)  # maps and verifies every entry once
            stages: dict[str, list[float]] = {}
            for q in range(queries):
                out = reranker.rerank(f"query number {q}", ids)
                assert not out.failed and len(out.results) == n
                for stage, seconds in out.timings.items():
                    stages.setdefault(stage, []).append(seconds)
            get_many_s = statistics.median(timed(lambda: store.get_many(keys))[0] for _ in range(max(repeats, 5)))
            result["variants"][label] = {"stages_s": {stage: statistics.median(v) for stage, v in stages.items()},
                                         "store_get_many_warm_s": get_many_s}
        paths = [store.namespace / name for name in os.listdir(store.namespace) if name.endswith(".kv")]
    result["entry_file_bytes"] = statistics.median(p.stat().st_size for p in paths)
    result["entry_phases_s"] = entry_phases(paths, max(repeats, 5))
    return result


def rerank_table(res: dict) -> str:
    """The warm rerank's stages and one entry read's steps, in ms over all candidates and µs per entry."""
    n = res["candidates"]
    rows = [f"| warm rerank, {n} cached candidates ({res['entry_file_bytes'] / 1024:.0f} KiB per entry file) "
            "| ms per query | µs per candidate |", "|---|---:|---:|"]
    for label, variant in res["variants"].items():
        for stage in ("kv_lookup", "kv_read", "band", "tail"):
            seconds = variant["stages_s"].get(stage, 0.0)
            rows.append(f"| {label}: stage {stage} | {1e3 * seconds:.2f} | {1e6 * seconds / n:.1f} |")
        seconds = variant["store_get_many_warm_s"]
        rows.append(f"| {label}: store get_many of the {n} keys | {1e3 * seconds:.2f} | {1e6 * seconds / n:.1f} |")
    for phase, seconds in res["entry_phases_s"].items():
        rows.append(f"| mapping a file, step by step: {phase} | {1e3 * seconds:.2f} | {1e6 * seconds / n:.1f} |")
    return "\n".join(rows)


def table(results: dict) -> str:
    """The markdown table: one row per (variant, read kind), medians over repeats."""
    n, mib = results["args"]["entries"], results["baselines"]["bytes"] / 2**20
    rows = ["| what | median ms | GiB/s (of the entries' array bytes) | vs memcpy |", "|---|---:|---:|---:|"]
    memcpy = statistics.median(r["memcpy_s"] for r in results["baselines"]["runs"])

    def row(label: str, seconds: float) -> None:
        rows.append(f"| {label} | {1e3 * seconds:.1f} | {mib / 1024 / seconds:.2f} | {seconds / memcpy:.2f}x |")

    base = results["baselines"]["runs"]
    for key, label in (("memcpy_s", "memcpy (np.copyto, preallocated)"), ("copy_s", "copy (fresh arrays)"),
                       ("touch_s", "touch in-memory arrays")):
        row(f"baseline: {label}", statistics.median(r[key] for r in base))
    row("baseline: memcpy + touch (a copying store's floor)", statistics.median(r["memcpy_s"] + r["touch_s"]
                                                                                 for r in base))
    for variant, res in results["variants"].items():
        if res is None:
            continue
        if "cold_file_read_s" in res:
            row(f"{variant}: cold plain read of its files (disk rate)", statistics.median(res["cold_file_read_s"]))
        for kind, runs in res["reads"].items():
            row(f"{variant}: {kind} get_many", statistics.median(r["get_s"] for r in runs))
            row(f"{variant}: {kind} get_many + touch", statistics.median(r["total_s"] for r in runs))
    rows.append("")
    rows.append("| variant | put total s (with fsync) | MiB/s | bytes on disk per entry |")
    rows.append("|---|---:|---:|---:|")
    for variant, res in results["variants"].items():
        if res is not None:
            per_entry = f"{res['bytes_on_disk'] / n / 2**20:.2f} MiB" if "bytes_on_disk" in res else "-"
            rows.append(f"| {variant} | {res['put_s']:.2f} | {mib / res['put_s']:.0f} | {per_entry} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--entries", type=int, default=100, help="entries per rerank (default 100)")
    parser.add_argument("--mb", type=float, default=4.0, help="MiB of K+V per entry (default 4)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    parser.add_argument("--no-alternatives", action="store_true", help="skip safetensors and LMDB")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="also time a warm rerank of --entries cached candidates on this bundle")
    parser.add_argument("--queries", type=int, default=20, help="warm queries timed with --bundle (default 20)")
    parser.add_argument("--rerank-only", action="store_true", help="with --bundle: skip the synthetic store runs")
    args = parser.parse_args(argv)

    entry = make_entry(args.mb, np.dtype(args.dtype))
    work = Path(tempfile.mkdtemp(prefix="kvbench-", dir=args.dir))
    try:
        results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "machine": machine_info(), "entry_shape": list(entry.k.shape), "variants": {}}
        if args.bundle is not None:
            results["rerank"] = bench_rerank(args.bundle, work / "rerank", args.entries, args.queries, args.repeats)
        if not args.rerank_only:
            results["baselines"] = bench_baselines(entry, args.entries, args.repeats)
            results["variants"]["store"] = bench_store(work / "store", entry, args.entries, args.repeats, False)
            results["variants"]["store int8"] = bench_store(work / "int8", entry, args.entries, args.repeats, True)
            results["int8_fidelity"] = int8_fidelity(entry)
        if not args.no_alternatives and not args.rerank_only:
            results["variants"]["safetensors"] = bench_safetensors(work / "st", entry, args.entries, args.repeats)
            results["variants"]["lmdb"] = bench_lmdb(work / "lmdb", entry, args.entries, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = "\n\n".join(([table(results)] if "baselines" in results else [])
                       + ([rerank_table(results["rerank"])] if "rerank" in results else []))
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
