"""``minireranker bench``: dense vs prefix reuse vs miniReranker, one query over N candidates, one run.

::

    checkpoint (random weights) ─build─▶ exact bundle ─┬────────────────▶ (b) dense ONNX Runtime
                               └─build─▶ spec bundle   │  index (cold) ─▶ (c) prefix reuse
                                                       └─ index (cold) ─▶ (d) miniReranker
    drawn pages ───────────────────────────────────────────────────────▶ (a) dense transformers

Each system runs in a worker process of its own, so its peak RSS (VmHWM) covers exactly its
model, warm-up and timed queries; indexing runs in another process, reported apart. The parent runs
one system at a time (they never share the CPU), rotates the order every repeat, and between systems
measures the baselines: memcpy of each system's K/V bytes and a GEMM. What each system times, from the
query text to scores of all N candidates:

(a) ``dense_transformers``: ``Qwen3VLForConditionalGeneration`` pair by pair on Qwen3-VL-Reranker's
    query-first sequence (:func:`query_first_prompt`): open the page, image processor, tokenizer, then one
    forward (full vision tower, all layers, ``logits_to_keep=1``); score = logit(yes) - logit(no). Stages:
    preprocess, vision (hooks on the vision tower), lm (the rest of the forward).
(b) ``dense_onnx``: ``Reranker.rerank`` on the exact-spec bundle with a K/V store that declines every
    entry (``max_cache_bytes=1``): preprocess, vision and doc_prefix run for every candidate on every
    query, then band + tail batched. The graphs of (c), without reuse.
(c) ``prefix_reuse``: the exact-spec bundle, every candidate indexed beforehand, warm cache.
(d) ``minireranker``: a spec bundle (early exit, band, pruning), warm cache; one system per spec.

Warm: entries on disk and in the page cache, their CRCs checked by an untimed rerank before timing.
A run also records the share of the machine's CPU other processes took meanwhile (``contention``).

``results.json`` (``schema_version`` 1; seconds, bytes; a spread is ``{median, min, max}`` over repeats)::

    created, wall_s, argv, machine {cpu, cores, memory_bytes, platform, python, versions}
    preset {name, description, page_size, model}     settings {candidates, repeats, batch_size, dense_pairs, ...}
    queries [one per repeat]    bundles {name: {path, build_s, spec}}
    baselines [{repeat, memcpy_gib_s {bytes: GiB/s}, gemm {shape, gflops}}]
    systems {name: {label, spec, measured_pairs, scaled, total_s, stages_s {STAGES}, other_s (spreads),
                    ratio_to_dense_transformers, ratio_to_dense_onnx, query_head_runs_per_query,
                    kv_bytes_read_per_query, contention_max, peak_rss_bytes {serve, index},
                    index_one_doc {per_doc_s, documents, stages_s, kv_bytes_per_doc, tokens_per_doc} | null,
                    bounds {kv_read_s, read_gib_s, memcpy_gib_s, kv_floor_s, total_over_kv_floor, gflop_per_query,
                            gemm_gflops, compute_floor_s, total_over_compute_floor} | null      (warm systems)
                    runs [{repeat, total_s, measured_total_s, scale, stages_s, other_s, query_head_runs,
                           kv_bytes_read, cpu_s, contention, scores, ...}]}}
    checks {exact_scores_max_abs_diff_b_vs_c}     targets [{system, ratio_to_dense_transformers, target, aim, ...}]
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from ...runtime.spec import RerankSpec
from .presets import BenchConfig, BenchError, draw_query, write_corpus

SCHEMA_VERSION = 1
STAGES = ("preprocess", "vision", "guide", "doc_prefix", "lm", "query_head", "kv_read", "band", "tail")
TARGETS = {"ratio_to_dense_transformers": 0.01, "aim": 0.005, "total_over_kv_floor": 2.0}
LABELS = {"dense_transformers": "(a) dense transformers, pair by pair (query-first)",
          "dense_onnx": "(b) dense ONNX Runtime, batched, no reuse",
          "prefix_reuse": "(c) vision-first prefix reuse (exact spec, warm)",
          "minireranker": "(d) miniReranker{} (warm)"}
_WARMUP_SEED = 999_983
_SETTLE_S = 1.0


def query_first_prompt(spec: RerankSpec, query: str, image_tokens: int, text: str | None = None) -> str:
    """Qwen3-VL-Reranker's own (query-first) sequence of one pair, image pads expanded."""
    image = f"<|vision_start|>{'<|image_pad|>' * image_tokens}<|vision_end|>" if image_tokens else ""
    return (f"<|im_start|>system\n{spec.system}<|im_end|>\n<|im_start|>user\n"
            f"<Instruct>: {spec.instruction}\n<Query>: {query}\n<Document>: {image}{text or ''}"
            f"<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------------
# the systems, each inside its worker process
# ---------------------------------------------------------------------------------------------------


class _DenseTransformers:
    """(a): transformers' own model, one forward per (query, document) pair."""

    def __init__(self, checkpoint: str, pages: list[str], pairs: int, warmup: str) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch, self.spec = torch, RerankSpec.exact()
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
        self.yes, self.no = (self.tokenizer.convert_tokens_to_ids(t) for t in (self.spec.yes_token, self.spec.no_token))
        self.pages = pages[:pairs]
        self._vision_s = self._t = 0.0
        visual = self.model.model.visual
        visual.register_forward_pre_hook(lambda *_: setattr(self, "_t", time.perf_counter()))
        visual.register_forward_hook(
            lambda *_: setattr(self, "_vision_s", self._vision_s + time.perf_counter() - self._t))
        self._score(warmup, pages[0], {})

    def _score(self, query: str, page: str, stages: dict) -> float:
        from PIL import Image

        t0 = time.perf_counter()
        with Image.open(page) as image:
            feats = self.processor(images=[image.convert("RGB")], return_tensors="pt")
        merge = self.model.config.vision_config.spatial_merge_size
        prompt = query_first_prompt(self.spec, query, int(feats["image_grid_thw"].prod()) // merge**2)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        t1, vision_before = time.perf_counter(), self._vision_s
        with self.torch.no_grad():
            logits = self.model(input_ids=ids, pixel_values=feats["pixel_values"],
                                image_grid_thw=feats["image_grid_thw"],
                                mm_token_type_ids=(ids == self.model.config.image_token_id).int(),
                                logits_to_keep=1).logits[0, -1]
        t2, vision = time.perf_counter(), self._vision_s - vision_before
        for stage, seconds in (("preprocess", t1 - t0), ("vision", vision), ("lm", t2 - t1 - vision)):
            stages[stage] = stages.get(stage, 0.0) + seconds
        return float(logits[self.yes] - logits[self.no])

    def run(self, query: str) -> dict:
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        scores = [self._score(query, page, stages) for page in self.pages]
        return {"total_s": time.perf_counter() - t0, "stages": stages, "scores": scores,
                "measured_pairs": len(self.pages), "query_head_runs": 0, "kv_bytes_read": 0}


class _OnnxSystem:
    """(b), (c), (d): the runtime's Reranker; ``recompute`` gives it a store that keeps nothing."""

    def __init__(self, bundle: str, cache: str, documents: list[str], recompute: bool, batch_size: int,
                 warmup: str) -> None:
        from ...runtime.documents import Document
        from ...runtime.reranker import Reranker

        logging.getLogger("minireranker.kvstore").setLevel(logging.ERROR)  # (b)'s declined puts are on purpose
        self.reranker = Reranker(bundle, cache, batch_size=batch_size, max_cache_bytes=1 if recompute else None)
        self.documents = [Document(image=p) for p in documents] if recompute else list(documents)
        self.run(warmup, self.documents[:2] if recompute else None)

    def run(self, query: str, documents: list | None = None) -> dict:
        r = self.reranker
        before = dict(r.stats)
        t0 = time.perf_counter()
        out = r.rerank(query, self.documents if documents is None else documents)
        total = time.perf_counter() - t0
        if out.failed:
            first = out.failed[0]
            raise BenchError(f"{len(out.failed)} candidates failed; first {first.document}: {first.error}")
        t = out.timings
        stages = {k: t.get(k, 0.0) for k in STAGES if k not in ("lm", "kv_read")}
        stages["kv_read"] = t.get("kv_lookup", 0.0) + t.get("kv_read", 0.0)
        return {"total_s": total, "stages": stages, "timings": dict(t), "measured_pairs": len(out.results),
                "scores": [s for _, s in sorted((x.index, x.score) for x in out.results)],
                "kv_bytes_read": int(r.stats["kv_bytes_read"] - before.get("kv_bytes_read", 0)),
                "query_head_runs": int(r.stats["query_head_runs"] - before.get("query_head_runs", 0)),
                "query_tokens": len(r.query_ids(query)), "system_tokens": len(r.template.system_ids)}


class _Indexer:
    """The cold path of (c) and (d): encode every page and put it into a fresh store."""

    def __init__(self, bundle: str, cache: str, documents: list[tuple[str, str]]) -> None:
        from ...runtime.documents import Document
        from ...runtime.reranker import Reranker

        shutil.rmtree(cache, ignore_errors=True)
        info: dict[str, list] = {"per_doc_s": [], "stages": [], "kv_bytes_per_doc": [], "tokens_per_doc": []}
        with Reranker(bundle, cache) as r:
            for doc_id, page in documents:
                doc, timings = Document(image=page, id=doc_id), {}
                t0 = time.perf_counter()
                entry = r.encode_document(doc, timings)
                t1 = time.perf_counter()
                r.store.put(r.key(doc), entry)
                info["per_doc_s"].append(time.perf_counter() - t0)
                info["stages"].append({**timings, "store_put": time.perf_counter() - t1})
                info["kv_bytes_per_doc"].append(int(entry.k.nbytes + entry.v.nbytes))
                info["tokens_per_doc"].append(int(entry.k.shape[2]))
        self.info = info


_KINDS = {"dense_transformers": _DenseTransformers, "onnx": _OnnxSystem, "index": _Indexer}


def _peak_rss_bytes() -> int:
    """VmHWM, the peak resident set of this address space. (Not ru_maxrss: Linux carries it across
    exec, so a spawned worker would start at its parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat); None where unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _worker_stdio() -> None:
    """A worker process (``python -c``; a fresh interpreter, so no caller's ``__main__`` is re-run): pickled
    requests on stdin, replies on the original stdout; stdout itself now points at stderr, so nothing a
    library prints can corrupt a reply. Builds the system, answers ``run``, reports its peak RSS on ``finish``."""
    replies, requests = os.fdopen(os.dup(1), "wb"), sys.stdin.buffer
    os.dup2(2, 1)

    def send(message: dict) -> None:
        pickle.dump(message, replies)
        replies.flush()

    try:
        kind, setup = pickle.load(requests)
        system = _KINDS[kind](**setup)
        send({"ok": True, "info": getattr(system, "info", None)})
        while (message := pickle.load(requests))["op"] == "run":
            before = os.times()
            result = system.run(message["query"])
            after = os.times()
            send({"ok": True, "result": {**result, "cpu_s": after.user - before.user + after.system - before.system}})
        send({"ok": True, "peak_rss_bytes": _peak_rss_bytes()})
    except EOFError:  # the parent went away
        return
    except Exception as exc:  # the parent raises BenchError naming the system
        send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, name: str, kind: str, setup: dict) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from minireranker.calibration.bench.harness import _worker_stdio; _worker_stdio()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._send((kind, setup))
        self.info = self._reply()["info"]

    def _send(self, message) -> None:
        pickle.dump(message, self.process.stdin)
        self.process.stdin.flush()

    def _reply(self) -> dict:
        try:
            reply = pickle.load(self.process.stdout)
        except EOFError:
            raise BenchError(f"system {self.name}: its worker process died (exit code {self.process.wait()}); "
                             "out of memory? try fewer --candidates or a smaller --preset") from None
        if not reply["ok"]:
            raise BenchError(f"system {self.name} failed: {reply['error']}\n{reply['traceback']}")
        return reply

    def run(self, query: str) -> dict:
        """One timed query, with ``contention``: the share of all cores other processes used meanwhile."""
        busy, t0 = _busy_cpu_s(), time.perf_counter()
        self._send({"op": "run", "query": query})
        result = self._reply()["result"]
        wall, busy_after = time.perf_counter() - t0, _busy_cpu_s()
        foreign = None if busy is None or busy_after is None else max(0.0, busy_after - busy - result["cpu_s"])
        return {**result, "contention": None if foreign is None else foreign / (wall * (os.cpu_count() or 1))}

    def finish(self) -> int:
        self._send({"op": "finish"})
        peak = self._reply()["peak_rss_bytes"]
        self.process.stdin.close()
        self.process.wait(timeout=60)
        return peak

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------
# baselines measured in the same run
# ---------------------------------------------------------------------------------------------------


def memcpy_gib_s(nbytes: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` np.copyto rate over ``nbytes`` (clamped to 1 MiB..1 GiB), GiB/s."""
    size = int(min(max(nbytes, 1 << 20), 1 << 30))
    src, dst = np.full(size, 7, dtype=np.uint8), np.zeros(size, dtype=np.uint8)  # both faulted in
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return size / best / 2**30


def gemm_gflops(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 [rows, inner] @ [inner, cols] rate (numpy's BLAS), GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((rows, inner), dtype=np.float32), rng.standard_normal((inner, cols), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms the BLAS threads
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * inner * cols / best / 1e9


def warm_rerank_flops(model, spec: RerankSpec, query_tokens: int, system_tokens: int, doc_tokens: int,
                      candidates: int) -> dict[str, float]:
    """FLOPs of a warm rerank per stage: linear layers plus attention scores and values (norms, rotary,
    softmax left out). ``model`` is a TinyPreset; the query head runs once, band and tail per candidate."""
    d, hq, hkv, hd = model.hidden_size, model.num_attention_heads, model.num_key_value_heads, model.head_dim
    linear = 2 * (2 * d * hq * hd + 2 * d * hkv * hd + 3 * d * model.intermediate_size)  # per token and layer

    def layers(count: int, keys: float) -> float:
        return count * query_tokens * (linear + 4 * hq * hd * keys)

    a, b = spec.band
    own = query_tokens / 2  # causal: a query token sees half the query on average
    return {"query_head": layers(a, system_tokens + own),
            "band": candidates * layers(b - a + 1, system_tokens + doc_tokens + own),
            "tail": candidates * (layers(spec.exit_layer - b, system_tokens + own) + 4 * d)}


# ---------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------


def _prepare(config: BenchConfig, log: Callable[[str], None]) -> dict:
    """Checkpoint, pages, queries and bundles under ``config.work``."""
    from ...export.onnx_export import BuildConfig, build_bundle
    from ...export.tiny import write_tiny_checkpoint

    work, preset = config.work, config.bench_preset
    t0 = time.perf_counter()
    checkpoint = write_tiny_checkpoint(work / f"checkpoint-{config.preset}", preset.model, seed=config.seed)
    pages = write_corpus(work / "corpus", preset.page_size, config.candidates, config.seed)
    log(f"checkpoint ({config.preset}, random weights) and {len(pages)} pages in {time.perf_counter() - t0:.1f} s")
    wanted = [("exact", RerankSpec.exact())] if {"dense_onnx", "prefix_reuse"} & set(config.systems) else []
    wanted += list(config.specs) if "minireranker" in config.systems else []
    bundles: dict[str, dict] = {}
    for name, spec in wanted:
        t0, path = time.perf_counter(), work / "bundles" / name.replace(":", "-")
        build_bundle(checkpoint, path, spec, BuildConfig(precision=config.precision, validate=config.validate),
                     log=lambda _: None)
        bundles[name] = {"path": str(path), "build_s": time.perf_counter() - t0,
                         "spec": json.loads((path / "bundle.json").read_text())["spec"]}
        log(f"built bundle {name} in {bundles[name]['build_s']:.1f} s")
    return {"checkpoint": str(checkpoint), "pages": [str(p) for p in pages], "ids": [p.stem for p in pages],
            "bundles": bundles, "queries": [draw_query(config.seed * 1000 + r) for r in range(config.repeats)],
            "warmup": draw_query(_WARMUP_SEED)}


def _plan(config: BenchConfig, prep: dict) -> list[tuple[str, str, dict, str | None]]:
    """(system, worker kind, setup, bundle whose cache is indexed first), in the order of the first repeat."""
    cache, onnx = config.work / "cache", {"batch_size": config.batch_size, "warmup": prep["warmup"]}
    plan: list[tuple[str, str, dict, str | None]] = []
    if "dense_transformers" in config.systems:
        plan.append(("dense_transformers", "dense_transformers", {
            "checkpoint": prep["checkpoint"], "pages": prep["pages"], "pairs": config.dense_pairs or config.candidates,
            "warmup": prep["warmup"]}, None))
    if "dense_onnx" in config.systems:
        plan.append(("dense_onnx", "onnx", {"bundle": prep["bundles"]["exact"]["path"], "documents": prep["pages"],
                                            "cache": str(cache / "keeps-nothing"), "recompute": True, **onnx}, None))
    cached = ["prefix_reuse"] if "prefix_reuse" in config.systems else []
    cached += [name for name, _ in config.specs] if "minireranker" in config.systems else []
    for name in cached:
        bundle = "exact" if name == "prefix_reuse" else name
        plan.append((name, "onnx", {"bundle": prep["bundles"][bundle]["path"], "documents": prep["ids"],
                                    "cache": str(cache / bundle.replace(":", "-")), "recompute": False, **onnx},
                     bundle))
    return plan


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark, write ``results.json``, ``results.md`` and ``results.png`` into ``config.out``,
    print the tables through ``log``, and return the results dict (the JSON)."""
    started = _dt.datetime.now(_dt.timezone.utc)
    config.out.mkdir(parents=True, exist_ok=True)
    config.work.mkdir(parents=True, exist_ok=True)
    prep = _prepare(config, log)
    plan = _plan(config, prep)
    indexed: dict[str, dict] = {}
    workers: dict[str, _Worker] = {}
    runs: dict[str, list[dict]] = {name: [] for name, *_ in plan}
    baselines: list[dict] = []
    try:
        for name, kind, setup, bundle in plan:
            if bundle is not None and bundle not in indexed:
                log(f"indexing {config.candidates} pages into the {bundle} cache (the cold path, in its own process)")
                indexer = _Worker(f"index:{bundle}", "index", {"bundle": setup["bundle"], "cache": setup["cache"],
                                                                "documents": list(zip(prep["ids"], prep["pages"]))})
                indexed[bundle] = {**indexer.info, "peak_rss_bytes": indexer.finish()}
            log(f"starting {name} (load and warm-up)")
            workers[name] = _Worker(name, kind, setup)
        for r, query in enumerate(prep["queries"]):
            order = [name for name, *_ in plan]
            for name in order[r % len(order):] + order[: r % len(order)]:  # who goes first rotates
                time.sleep(_SETTLE_S)  # the last system's idle threads stop spinning before the next one runs
                result = workers[name].run(query)
                runs[name].append({**result, "repeat": r})
                log(f"repeat {r + 1}/{config.repeats}: {name:<24} {result['total_s']:9.3f} s "
                    f"({result['measured_pairs']} candidates)")
            baselines.append(_baselines(config, runs, r))
        peaks = {name: w.finish() for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.kill()
    result = _assemble(config, prep, plan, runs, indexed, peaks, baselines, started)
    from .report import write_results

    write_results(config.out, result, log)
    return result


def _baselines(config: BenchConfig, runs: dict[str, list[dict]], repeat: int) -> dict:
    this = [run for rs in runs.values() for run in rs if run["repeat"] == repeat]
    rows = config.batch_size * max((run.get("query_tokens", 0) for run in this), default=0) or config.batch_size * 48
    m = config.bench_preset.model
    sizes = sorted({r["kv_bytes_read"] for r in this} - {0})
    return {"repeat": repeat, "memcpy_gib_s": {str(n): memcpy_gib_s(n) for n in sizes},
            "gemm": {"shape": [rows, m.hidden_size, m.intermediate_size],
                     "gflops": gemm_gflops(rows, m.hidden_size, m.intermediate_size)}}


# ---------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------


def _spread(values) -> dict[str, float]:
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _scaled(run: dict, candidates: int) -> dict:
    """A run's times scaled from the pairs it measured to all candidates (only (a) may measure fewer)."""
    scale = candidates / run["measured_pairs"]
    stages = {k: run["stages"].get(k, 0.0) * scale for k in STAGES}
    total = run["total_s"] * scale
    return {**{k: v for k, v in run.items() if k not in ("stages", "total_s")}, "scale": scale, "total_s": total,
            "measured_total_s": run["total_s"], "stages_s": stages, "other_s": total - sum(stages.values())}


def _bounds(config: BenchConfig, rs: list[dict], baselines: list[dict], spec: dict, index: dict) -> dict:
    """What bounds a warm rerank: its K/V bytes at the memcpy rate, its FLOPs at the GEMM rate."""
    total = statistics.median(r["total_s"] for r in rs)
    kv_floor = [r["kv_bytes_read"] / (baselines[r["repeat"]]["memcpy_gib_s"][str(r["kv_bytes_read"])] * 2**30)
                for r in rs]
    doc_tokens, model = statistics.median(index["tokens_per_doc"]), config.bench_preset.model
    flops = [sum(warm_rerank_flops(model, RerankSpec.from_dict(spec), r["query_tokens"], r["system_tokens"],
                                   doc_tokens, config.candidates).values()) for r in rs]
    rates = [baselines[r["repeat"]]["gemm"]["gflops"] * 1e9 for r in rs]
    compute_floor = statistics.median(f / g for f, g in zip(flops, rates))
    read = statistics.median(r["stages_s"]["kv_read"] for r in rs)
    return {"kv_read_s": read, "read_gib_s": statistics.median(r["kv_bytes_read"] for r in rs) / read / 2**30,
            "memcpy_gib_s": statistics.median(r["kv_bytes_read"] / f / 2**30 for r, f in zip(rs, kv_floor)),
            "kv_floor_s": statistics.median(kv_floor), "total_over_kv_floor": total / statistics.median(kv_floor),
            "gflop_per_query": statistics.median(flops) / 1e9, "gemm_gflops": statistics.median(rates) / 1e9,
            "compute_floor_s": compute_floor, "total_over_compute_floor": total / compute_floor}


def _system(config: BenchConfig, name: str, bundle: str | None, spec, rs: list[dict], baselines: list[dict],
            index: dict | None, peak: int) -> dict:
    label = LABELS.get(name, LABELS["minireranker"])
    if name.startswith("minireranker"):
        label = label.format(f"{name[len('minireranker'):]} E={spec['exit_layer']} band {spec['band'][0]}-"
                             f"{spec['band'][1]} keep {spec['keep_ratio']:g}")
    out = {"label": label, "spec": spec,
           "measured_pairs": rs[0]["measured_pairs"], "scaled": rs[0]["scale"] != 1.0,
           "total_s": _spread(r["total_s"] for r in rs),
           "stages_s": {k: _spread(r["stages_s"][k] for r in rs) for k in STAGES},
           "other_s": _spread(r["other_s"] for r in rs),
           "query_head_runs_per_query": max(r["query_head_runs"] for r in rs),
           "kv_bytes_read_per_query": int(statistics.median(r["kv_bytes_read"] for r in rs)),
           "contention_max": max((r["contention"] for r in rs if r["contention"] is not None), default=None),
           "peak_rss_bytes": {"serve": peak, "index": index and index["peak_rss_bytes"]},
           "index_one_doc": None, "bounds": None, "runs": rs}
    if index is not None:
        out["index_one_doc"] = {"per_doc_s": _spread(index["per_doc_s"]), "documents": len(index["per_doc_s"]),
                                "stages_s": {k: statistics.median(s.get(k, 0.0) for s in index["stages"])
                                             for k in sorted({k for s in index["stages"] for k in s})},
                                "kv_bytes_per_doc": int(statistics.median(index["kv_bytes_per_doc"])),
                                "tokens_per_doc": int(statistics.median(index["tokens_per_doc"]))}
        out["bounds"] = _bounds(config, rs, baselines, spec, index)
    return out


def _assemble(config: BenchConfig, prep: dict, plan: list, runs: dict[str, list[dict]], indexed: dict[str, dict],
              peaks: dict[str, int], baselines: list[dict], started: _dt.datetime) -> dict:
    systems = {}
    for name, _, _, bundle in plan:
        graphs = "exact" if name == "dense_onnx" else bundle
        spec = prep["bundles"][graphs]["spec"] if graphs else "the exact model on the query-first sequence"
        systems[name] = _system(config, name, bundle, spec, [_scaled(r, config.candidates) for r in runs[name]],
                                baselines, indexed.get(bundle) if bundle else None, peaks[name])
    for s in systems.values():
        for ref in ("dense_transformers", "dense_onnx"):
            s[f"ratio_to_{ref}"] = (s["total_s"]["median"] / systems[ref]["total_s"]["median"]
                                    if ref in systems else None)
    checks = {}
    if {"dense_onnx", "prefix_reuse"} <= set(runs):  # same graphs, same query: the same scores
        checks["exact_scores_max_abs_diff_b_vs_c"] = max(float(np.abs(np.subtract(b["scores"], c["scores"])).max())
                                                         for b, c in zip(runs["dense_onnx"], runs["prefix_reuse"]))
    targets = [{"system": name, "ratio_to_dense_transformers": s["ratio_to_dense_transformers"],
                "target": TARGETS["ratio_to_dense_transformers"], "aim": TARGETS["aim"],
                "ratio_to_dense_onnx": s["ratio_to_dense_onnx"], "kv_floor_target": TARGETS["total_over_kv_floor"],
                "total_over_kv_floor": s["bounds"] and s["bounds"]["total_over_kv_floor"],
                "query_head_runs_per_query": s["query_head_runs_per_query"]}
               for name, s in systems.items() if name.startswith("minireranker")]
    preset = config.bench_preset
    return {"schema_version": SCHEMA_VERSION, "kind": "minireranker-bench",
            "created": started.isoformat(timespec="seconds"),
            "wall_s": (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), "argv": list(sys.argv),
            "machine": machine_info(),
            "preset": {"name": config.preset, "description": preset.description, "page_size": list(preset.page_size),
                       "model": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(preset.model).items()}},
            "settings": {"candidates": config.candidates, "repeats": config.repeats, "batch_size": config.batch_size,
                         "dense_pairs": config.dense_pairs, "precision": config.precision, "seed": config.seed,
                         "validate": config.validate, "systems": list(runs)},
            "queries": prep["queries"], "bundles": prep["bundles"], "baselines": baselines,
            "systems": systems, "checks": checks, "targets": targets}


def machine_info() -> dict:
    """CPU model, cores, memory and the versions of the libraries that do the work."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}
