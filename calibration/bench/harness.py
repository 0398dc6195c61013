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
(a2) ``dense_transformers_batched``: the same model and sequence in left-padded batches with an attention mask
    (a CrossEncoder-style user's run); every size of ``dense_batch_sizes`` (capped at the pairs measured) is
    timed on each query, the size with the best median is the system's time (``batch_size``), each size's
    time is kept (``by_batch_size``). Its scores equal (a)'s (``checks``; the test suite pins 1e-4 in fp32).
(b) ``dense_onnx``: ``Reranker.rerank`` on the exact-spec bundle with a K/V store that declines every
    entry (``max_cache_bytes=1``): preprocess, vision and doc_prefix run for every candidate on every
    query, then band + tail batched. The graphs of (c), without reuse.
(c) ``prefix_reuse``: the exact-spec bundle, every candidate indexed beforehand, warm cache.
(d) ``minireranker``: a spec bundle (early exit, band, pruning), warm cache; one system per spec.

Warm: entries on disk and in the page cache, their CRCs checked by an untimed rerank before timing.
A run also records the share of the machine's CPU other processes took meanwhile (``contention``); the
baselines are re-measured while that share is over 10% and a figure that cannot be a result (a system faster
than its own floor) is flagged (calibration/bench/flags.py). Every ratio is given against (a) and against the
best dense baseline of the run (the fastest of (a), (a2), (b)). ``marginal``: calibration/bench/marginal.py.

``results.json`` (``schema_version`` 1; seconds, bytes; a spread is ``{median, min, max}`` over repeats)::

    created, wall_s, argv, machine (runtime/profiling/telemetry.py machine_info: cpu, cores, memory_bytes, ...)
    preset {name, description, page_size, model}     settings {candidates, repeats, batch_size, dense_pairs, ...}
    queries [one per repeat]    bundles {name: {path, build_s, spec}}
    baselines [{repeat, memcpy_gib_s {bytes: GiB/s}, gemm {shape, gflops},
                quiet {memcpy {bytes: {contention, attempts, quiet}}, gemm {contention, attempts, quiet}}}]
    best_dense {system, total_s}    marginal {...} | null (calibration/bench/marginal.py)
    systems {name: {label, spec, measured_pairs, scaled, total_s, stages_s {STAGES}, other_s (spreads),
                    ratio_to_dense_transformers, ratio_to_dense_onnx, ratio_to_best_dense, query_head_runs_per_query,
                    flags [{flag, detail}], measurement_error, batch_size, by_batch_size {size: spread} ((a2) only),
                    kv_bytes_read_per_query, contention_max, peak_rss_bytes {serve, index},
                    index_one_doc {per_doc_s, documents, stages_s, kv_bytes_per_doc, tokens_per_doc} | null,
                    bounds {kv_read_s, read_gib_s, memcpy_gib_s, kv_floor_s, total_over_kv_floor, gflop_per_query,
                            gemm_gflops, compute_floor_s, total_over_compute_floor} | null      (warm systems)
                    runs [{repeat, total_s, measured_total_s, scale, stages_s, other_s, query_head_runs,
                           kv_bytes_read, cpu_s, contention, scores, ...}]}}
    checks {exact_scores_max_abs_diff_b_vs_c, dense_scores_max_abs_diff_a_vs_a2}
    targets [{system, ratio_to_dense_transformers, target, ratio_to_best_dense, best_dense_target, ...}]
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np

from ...runtime.profiling.telemetry import machine_info
from ...runtime.spec import RerankSpec
from .flags import is_error, measured_quietly, system_flags
from .marginal import measure_marginal, rerank_command, summarize_marginal
from .presets import DENSE_SYSTEMS, BenchConfig, draw_query, write_corpus
# the systems and their worker processes; STAGES, query_first_prompt and _worker_stdio are imported from here too
from .systems import STAGES, _Worker, _worker_stdio, query_first_prompt  # noqa: F401

SCHEMA_VERSION = 1
# issue 12: (d) at most 0.25% of (a) and 0.5% of the best dense baseline, within 2x of its compute floor; the
# marginal cost per candidate at most 1% of dense transformers per pair (aim 0.5%)
TARGETS = {"ratio_to_dense_transformers": 0.0025, "ratio_to_best_dense": 0.005, "total_over_compute_floor": 2.0,
           "total_over_kv_floor": 2.0, "marginal_ratio": 0.01, "marginal_aim": 0.005}
LABELS = {"dense_transformers": "(a) dense transformers, pair by pair (query-first)",
          "dense_transformers_batched": "(a2) dense transformers, padded batches of {} (query-first)",
          "dense_onnx": "(b) dense ONNX Runtime, batched, no reuse",
          "prefix_reuse": "(c) vision-first prefix reuse (exact spec, warm)",
          "minireranker": "(d) miniReranker{} (warm)"}
_WARMUP_SEED = 999_983
_SETTLE_S = 1.0


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
                      candidates: int, instruction_tokens: int = 0) -> dict[str, float]:
    """FLOPs of a warm rerank per stage (the runtime's cost model, :func:`~minireranker.runtime.profiling.cost.
    warm_flops`): linear layers plus attention scores and values (norms, rotary, softmax left out), the yes/no
    rows on each candidate's last token. ``model`` is a TinyPreset; the query head runs once, band and tail
    per candidate; ``query_tokens`` is the whole query segment."""
    from ...runtime.profiling.cost import Workload, decoder_layer_parameters, stage_parameters, warm_flops

    layer = decoder_layer_parameters(model.hidden_size, model.num_attention_heads, model.num_key_value_heads,
                                     model.head_dim, model.intermediate_size, norms=False)
    a, b = spec.band
    w = Workload(
        name="bench", precision="fp32", hidden=model.hidden_size,
        attention_width=model.num_attention_heads * model.head_dim, kv_heads=model.num_key_value_heads,
        head_dim=model.head_dim, band=(a, b), exit_layer=spec.exit_layer, keep_ratio=1.0, guide_layers=None,
        system_tokens=system_tokens, query_overhead_tokens=0, doc_extra_tokens=0,
        params=stage_parameters(layer, (a, b), spec.exit_layer),
        vision_width=model.vision_hidden_size, vision_depth=model.vision_depth, merge_size=model.spatial_merge_size,
        patch_factor=model.patch_size * model.spatial_merge_size, min_pixels=model.min_pixels,
        max_pixels=model.max_pixels, instruction_tokens=instruction_tokens)
    return warm_flops(w, candidates, query_tokens, doc_tokens, last_token_rows=2)  # the yes and no rows


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
    if "dense_transformers_batched" in config.systems:
        plan.append(("dense_transformers_batched", "dense_transformers_batched", {
            "checkpoint": prep["checkpoint"], "pages": prep["pages"], "pairs": config.dense_pairs or config.candidates,
            "warmup": prep["warmup"], "batch_sizes": config.dense_batches}, None))
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
    marginal = _marginal_runs(config, prep, plan, log)
    result = _assemble(config, prep, plan, runs, indexed, peaks, baselines, started)
    result["marginal"] = marginal and _marginal(config, prep, result, marginal)
    from .report import write_results

    write_results(config.out, result, log)
    return result


def _baselines(config: BenchConfig, runs: dict[str, list[dict]], repeat: int) -> dict:
    """This repeat's memcpy and GEMM rates, each re-measured while the machine is not quiet (flags.py)."""
    this = [run for rs in runs.values() for run in rs if run["repeat"] == repeat]
    rows = config.batch_size * max((run.get("query_tokens", 0) for run in this), default=0) or config.batch_size * 48
    m = config.bench_preset.model
    sizes = sorted({r["kv_bytes_read"] for r in this} - {0})
    memcpy = {str(n): measured_quietly(lambda n=n: memcpy_gib_s(n)) for n in sizes}
    gflops, gemm_quiet = measured_quietly(lambda: gemm_gflops(rows, m.hidden_size, m.intermediate_size))
    return {"repeat": repeat, "memcpy_gib_s": {n: rate for n, (rate, _) in memcpy.items()},
            "gemm": {"shape": [rows, m.hidden_size, m.intermediate_size], "gflops": gflops},
            "quiet": {"memcpy": {n: q for n, (_, q) in memcpy.items()}, "gemm": gemm_quiet}}


def best_batch(runs: list[dict]) -> tuple[int, list[dict]]:
    """(a2)'s batch size with the best median total over its runs, and the runs with that size's times and
    scores as their totals (each run keeps every size's figures in ``by_batch_size``)."""
    sizes = sorted({size for run in runs for size in run["by_batch_size"]})
    best = min(sizes, key=lambda size: statistics.median(run["by_batch_size"][size]["total_s"] for run in runs))
    chosen = [{**run, **{k: run["by_batch_size"][best][k] for k in ("total_s", "stages", "scores")},
               "batch_size": best} for run in runs]
    return best, chosen


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
                                   doc_tokens, config.candidates, r.get("instruction_tokens", 0)).values())
             for r in rs]
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
    out = {"label": _label(name, spec, rs), "spec": spec,
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
    if "by_batch_size" in rs[0]:  # (a2): every size it timed, scaled like its totals
        out["batch_size"] = rs[0]["batch_size"]
        out["by_batch_size"] = {str(size): _spread(r["by_batch_size"][size]["total_s"] * r["scale"] for r in rs)
                                for size in sorted(rs[0]["by_batch_size"])}
    quiet = all(baselines[r["repeat"]]["quiet"]["gemm"]["quiet"]
                and baselines[r["repeat"]]["quiet"]["memcpy"][str(r["kv_bytes_read"])]["quiet"]
                for r in rs if r["kv_bytes_read"])
    out["flags"] = system_flags(out["total_s"]["median"], out["bounds"], quiet, out["contention_max"])
    out["measurement_error"] = is_error(out["flags"])
    return out


def _label(name: str, spec, rs: list[dict]) -> str:
    label = LABELS.get(name, LABELS["minireranker"])
    if name == "dense_transformers_batched":
        return label.format(rs[0]["batch_size"])
    if name.startswith("minireranker"):
        return label.format(f"{name[len('minireranker'):]} E={spec['exit_layer']} band {spec['band'][0]}-"
                            f"{spec['band'][1]} keep {spec['keep_ratio']:g}")
    return label


def _assemble(config: BenchConfig, prep: dict, plan: list, runs: dict[str, list[dict]], indexed: dict[str, dict],
              peaks: dict[str, int], baselines: list[dict], started: _dt.datetime) -> dict:
    systems = {}
    for name, _, _, bundle in plan:
        graphs = "exact" if name == "dense_onnx" else bundle
        spec = prep["bundles"][graphs]["spec"] if graphs else "the exact model on the query-first sequence"
        raw = best_batch(runs[name])[1] if name == "dense_transformers_batched" else runs[name]
        systems[name] = _system(config, name, bundle, spec, [_scaled(r, config.candidates) for r in raw],
                                baselines, indexed.get(bundle) if bundle else None, peaks[name])
    best = min((n for n in DENSE_SYSTEMS if n in systems), key=lambda n: systems[n]["total_s"]["median"], default=None)
    for s in systems.values():
        for ref in ("dense_transformers", "dense_onnx"):
            s[f"ratio_to_{ref}"] = (s["total_s"]["median"] / systems[ref]["total_s"]["median"]
                                    if ref in systems else None)
        s["ratio_to_best_dense"] = best and s["total_s"]["median"] / systems[best]["total_s"]["median"]
    targets = [_target(name, s) for name, s in systems.items() if name.startswith("minireranker")]
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
            "best_dense": best and {"system": best, "total_s": systems[best]["total_s"]["median"]},
            "systems": systems, "checks": _checks(runs), "targets": targets}


def _checks(runs: dict[str, list[dict]]) -> dict:
    """Scores that must agree: (b) and (c) run the same graphs; (a) and (a2) the same model on the same pairs."""
    checks = {}
    for key, x, y in (("exact_scores_max_abs_diff_b_vs_c", "dense_onnx", "prefix_reuse"),
                      ("dense_scores_max_abs_diff_a_vs_a2", "dense_transformers", "dense_transformers_batched")):
        if {x, y} <= set(runs):
            checks[key] = max(float(np.abs(np.subtract(a["scores"], b["scores"][:len(a["scores"])])).max())
                              for a, b in zip(runs[x], runs[y]))
    if "dense_transformers_batched" in runs:  # every batch size scores alike, not only the best
        checks["dense_scores_max_abs_diff_across_batch_sizes"] = max(
            float(np.abs(np.subtract(by[size]["scores"], by[first]["scores"])).max())
            for run in runs["dense_transformers_batched"] for by in [run["by_batch_size"]]
            for first in [min(by)] for size in by)
    return checks


def _target(name: str, s: dict) -> dict:
    """One miniReranker system against issue 12's targets; ``met`` is None when its figure is a measurement error."""
    bounds = s["bounds"] or {}
    met = None if s["measurement_error"] else bool(
        s["ratio_to_dense_transformers"] is not None and s["ratio_to_dense_transformers"] <= TARGETS[
            "ratio_to_dense_transformers"]
        and s["ratio_to_best_dense"] is not None and s["ratio_to_best_dense"] <= TARGETS["ratio_to_best_dense"]
        and bounds.get("total_over_compute_floor", float("inf")) <= TARGETS["total_over_compute_floor"])
    return {"system": name, "ratio_to_dense_transformers": s["ratio_to_dense_transformers"],
            "target": TARGETS["ratio_to_dense_transformers"], "ratio_to_best_dense": s["ratio_to_best_dense"],
            "best_dense_target": TARGETS["ratio_to_best_dense"], "ratio_to_dense_onnx": s["ratio_to_dense_onnx"],
            "total_over_compute_floor": bounds.get("total_over_compute_floor"),
            "compute_floor_target": TARGETS["total_over_compute_floor"],
            "kv_floor_target": TARGETS["total_over_kv_floor"], "total_over_kv_floor": bounds.get("total_over_kv_floor"),
            "query_head_runs_per_query": s["query_head_runs_per_query"], "measurement_error": s["measurement_error"],
            "met": met}


def _marginal_runs(config: BenchConfig, prep: dict, plan: list, log: Callable[[str], None]) -> dict | None:
    """Time ``rerank`` through the command line on the (d) bundle's warm cache (marginal.py); None when off."""
    n = config.marginal_candidates
    setup = next((setup for name, _, setup, _ in plan if name == "minireranker"), None)
    if not n or setup is None:
        return None
    log(f"marginal cost: `minireranker rerank` on {n} candidates against 1, warm, {config.repeats} repeats")
    runs = measure_marginal(setup["bundle"], setup["cache"], prep["ids"][:n], prep["queries"], prep["warmup"], log)
    return {"runs": runs, "candidates": n, "bundle": setup["bundle"], "cache": setup["cache"]}


def _marginal(config: BenchConfig, prep: dict, result: dict, raw: dict) -> dict:
    """The marginal section of results.json: the figures against each dense system per pair, with the setup."""
    systems, n = result["systems"], raw["candidates"]
    dense = {name: systems[name]["total_s"]["median"] / config.candidates for name in DENSE_SYSTEMS if name in systems}
    out = summarize_marginal(raw["runs"], n, dense)
    d = systems["minireranker"]
    command = rerank_command("BUNDLE", "CACHE", "QUERY", ["IDS"])
    command[0] = "minireranker" if command[0].endswith("minireranker") else command[0]
    return {"command": command, "configuration": {
        "system": "minireranker", "bundle": raw["bundle"], "spec": d["spec"], "candidates": n,
        "tokens_per_doc": d["index_one_doc"]["tokens_per_doc"], "repeats": config.repeats,
        "preset": config.preset, "warm": True}, **out,
        "target": TARGETS["marginal_ratio"], "aim": TARGETS["marginal_aim"]}
