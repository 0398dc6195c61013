"""``minireranker profile``: per-stage latency distributions of the runtime on this machine, and estimates.

::

    run_profile(bundle, cache, config)
      per provider chain:   Reranker(bundle, cache, providers)  + telemetry samplers (tegrastats / NVML)
        pool                synthetic documents (or the given ones), indexed once, each index timed
        warm   Q x N        rerank(query of Q tokens, N cached ids): warmup, then `repeats` timed calls
        cold   N            unindexed: the N documents' entries deleted first, so rerank indexes them;
                            page-cache: entries cached, their files evicted from the OS page cache first
      -> JSON (profile.json), a table (profile.txt), a PNG (profile.png: latency vs candidates, log-log)

"Cold" is defined in ``COLD_DEFINITION`` (copied into the JSON) and in ``docs/profile.md``: ``unindexed``
(the candidates' entries deleted first, so ``rerank`` indexes each) and ``page-cache`` (entries cached, their
files evicted from the OS page cache with ``posix_fadvise``). Sessions are loaded and warm in both.

Timings are ``Reranker.rerank``'s own ``timings`` (STAGES) and the call's wall time (``total``); ``other`` =
total - sum of stages; finer timings the runtime adds inside a stage go to ``parts``, outside that sum.
Times in the JSON are milliseconds; percentiles interpolate linearly (numpy's default).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..documents import Document
from ..errors import MiniRerankerError
from .estimate import STAGES, compare_with_estimate, estimate, format_comparison, format_estimate, get_device
from .report import pyplot, save_figure, write_report
from .synthetic import Pool, synthetic_query
from .telemetry import evict_page_cache, filesystem_type, machine_info, open_samplers, peak_rss_mb, summarize

SCHEMA_VERSION = 1
COLD_MODES = ("unindexed", "page-cache")
COLD_DEFINITION = {
    "unindexed": "candidates not in the K/V store: rerank indexes each (preprocess, vision, guide, prefix, store "
                 "write) before scoring; engine sessions already loaded and warm",
    "page-cache": "candidates cached, but every file under the cache directory evicted from the OS page cache "
                  "(posix_fadvise DONTNEED) before each call, so K/V is read from disk; the per-process CRC check "
                  "of a first read is not included",
}


class ProfileError(MiniRerankerError):
    """A profile cannot run as asked (bad sweep values, no bundle, no cache directory)."""


def _positive_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ProfileError(f"{name} must be positive integers, got {list(values)}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class ProfileConfig:
    """What to sweep and how often. ``tiny()`` is the preset the tests use."""

    candidates: tuple[int, ...] = (10, 100, 1000)
    query_tokens: tuple[int, ...] = (4, 16, 64)
    repeats: int = 10                          # timed reranks per warm point
    warmup: int = 1                            # untimed reranks before each point (the first one is reported)
    cold: tuple[str, ...] = COLD_MODES         # cold modes to run; () for warm only
    cold_repeats: int = 2                      # timed reranks per cold point (each indexes N documents if unindexed)
    cold_candidates: tuple[int, ...] | None = None   # None: the same as `candidates`
    image_size: tuple[int, int] = (1024, 1024)  # synthetic images (width, height); preprocessing resizes them
    doc_text_words: int = 0                    # words of text after each synthetic image (0: image only)
    providers: tuple[tuple[str, ...], ...] | None = None   # one chain per profile; None: the runtime's default
    batch_size: int = 32
    backend: str = "onnxruntime"               # runtime/backends.py (GPU backends: `minireranker engines` first)
    telemetry: str = "auto"                    # auto | off | tegrastats | nvml
    telemetry_interval_s: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", _positive_tuple("candidates", self.candidates))
        object.__setattr__(self, "query_tokens", _positive_tuple("query_tokens", self.query_tokens))
        if self.cold_candidates is not None:
            object.__setattr__(self, "cold_candidates", _positive_tuple("cold_candidates", self.cold_candidates))
        if max(self.query_tokens) > 512:
            raise ProfileError(f"query_tokens at most 512 (the runtime's limit), got {max(self.query_tokens)}")
        for name in ("repeats", "cold_repeats", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ProfileError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0 or self.doc_text_words < 0:
            raise ProfileError("warmup and doc_text_words must be non-negative integers")
        unknown = [m for m in self.cold if m not in COLD_MODES]
        if unknown:
            raise ProfileError(f"unknown cold mode(s) {unknown}; choose from {list(COLD_MODES)}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ProfileError(f"image_size must be (width, height) in pixels, got {self.image_size!r}")
        if self.telemetry not in ("auto", "off", "tegrastats", "nvml"):
            raise ProfileError(f"telemetry must be auto, off, tegrastats or nvml, got {self.telemetry!r}")
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(tuple(c) for c in self.providers))
        from ..backends import BACKENDS

        if self.backend not in BACKENDS:
            raise ProfileError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")

    @classmethod
    def tiny(cls, **overrides: Any) -> "ProfileConfig":
        return cls(**{"candidates": (2, 5), "query_tokens": (4,), "repeats": 3, "cold_repeats": 1,
                      "image_size": (64, 64), "telemetry": "off", **overrides})


@dataclass
class ProfileReport:
    """The JSON (``data``), the table for people, and the files written (JSON, table, PNG)."""

    data: dict[str, Any]
    table: str
    files: list[Path] = field(default_factory=list)


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """``{"n", "mean", "p50", "p95", "p99", "min", "max"}`` in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(ms.size), "mean": float(ms.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "min": float(ms.min()), "max": float(ms.max())}


class _Session:
    """One provider chain's measurements: a Reranker, its document pool, a progress bar."""

    def __init__(self, reranker: Any, pool: Pool, config: ProfileConfig, bar: Any, notes: list[str]) -> None:
        self.r, self.pool, self.config, self.bar, self.notes = reranker, pool, config, bar, notes
        self.index_seconds: list[float] = []

    def index_pool(self, n: int) -> None:
        """Index the warm pool's first ``n`` documents, timing each one indexed here."""
        self.bar.set_description("indexing the document pool")
        for i in range(self.pool.size(n)):
            if self.r.key(Document(id=self.pool.warm_id(i))) not in self.r.store:
                doc = self.pool.warm(i)
                t0 = time.perf_counter()
                report = self.r.index([doc])
                if report.failed:
                    raise ProfileError(f"cannot index document {doc.label}: {report.failed[0].error}")
                self.index_seconds.append(time.perf_counter() - t0)
            self.bar.update(1)

    def _timed(self, query: str, docs: list, before: Callable[[], None] | None = None) -> tuple[dict, float, float]:
        if before is not None:
            before()
        bytes_before = self.r.stats.get("kv_bytes_read", 0.0)
        t0 = time.perf_counter()
        out = self.r.rerank(query, docs)
        total = time.perf_counter() - t0
        if out.failed:
            raise ProfileError(f"document {out.failed[0].document} failed during the profile: {out.failed[0].error}")
        self.bar.update(1)
        return out.timings, total, self.r.stats.get("kv_bytes_read", 0.0) - bytes_before

    def run_point(self, cache: str, n: int, q: int, query: str, repeats: int, warmup: int,
                  docs: Callable[[], list], before: Callable[[], None] | None) -> dict[str, Any]:
        self.bar.set_description(f"{cache} N={n} Q={q}")
        start, first = time.perf_counter(), None
        for _ in range(warmup):
            _, total, _ = self._timed(query, docs(), before)
            first = total if first is None else first
        samples = [self._timed(query, docs(), before) for _ in range(repeats)]
        stages = {s: [t.get(s, 0.0) for t, _, _ in samples] for s in STAGES}
        totals = [total for _, total, _ in samples]
        other = [max(0.0, total - sum(t.get(s, 0.0) for s in STAGES)) for t, total, _ in samples]
        parts = sorted(set().union(*(t for t, _, _ in samples)) - set(STAGES))  # finer splits the runtime reports
        return {"cache": cache, "candidates": n, "candidates_distinct": self.pool.size(n), "query_tokens": q,
                "query_segment_tokens": len(self.r.query_ids(query)), "repeats": repeats,
                "first_call_ms": None if first is None else 1e3 * first,
                "stages": {s: latency_stats(v) for s, v in stages.items()}, "total": latency_stats(totals),
                "other": latency_stats(other),
                "parts": {k: latency_stats([t.get(k, 0.0) for t, _, _ in samples]) for k in parts},
                "kv_bytes_read_per_query": float(np.mean([b for _, _, b in samples])),
                "_window": (start, time.perf_counter())}


def _sweep(session: _Session, config: ProfileConfig, cache_dir: Path) -> list[dict[str, Any]]:
    """Warm points for every (Q, N), then cold points for every N at the middle query length."""
    tokenizer = session.r.encoder.tokenizer
    queries = {q: synthetic_query(tokenizer, q)[0] for q in config.query_tokens}
    runs = []
    for q in config.query_tokens:
        for n in config.candidates:
            ids = [Document(id=session.pool.warm_id(i)) for i in range(n)]
            runs.append(session.run_point("warm", n, q, queries[q], config.repeats, config.warmup, lambda: ids, None))
    q = config.query_tokens[len(config.query_tokens) // 2]
    for mode in config.cold:
        runs.extend(_cold_points(session, config, cache_dir, mode, q, queries[q]))
    return runs


def _cold_points(session: _Session, config: ProfileConfig, cache_dir: Path, mode: str, q: int,
                 query: str) -> list[dict[str, Any]]:
    out = []
    for n in config.cold_candidates or config.candidates:
        if mode == "unindexed":
            docs = [session.pool.cold(i) for i in range(n)]
            if any(d is None for d in docs):
                session.notes.append("cold 'unindexed' skipped: documents given by id only cannot be indexed again")
                return out
            keys = [session.r.key(d) for d in docs]

            def forget(keys=keys) -> None:
                for key in keys:
                    session.r.store.delete(key)

            run = session.run_point("cold-unindexed", n, q, query, config.cold_repeats, 0, lambda docs=docs: docs,
                                    forget)
            forget()  # leave no cold-only entries behind in the user's cache
        else:
            if not hasattr(os, "posix_fadvise"):
                session.notes.append("cold 'page-cache' skipped: this OS has no posix_fadvise")
                return out
            ids = [Document(id=session.pool.warm_id(i)) for i in range(n)]
            run = session.run_point("cold-page-cache", n, q, query, config.cold_repeats, 0, lambda ids=ids: ids,
                                    lambda: evict_page_cache(cache_dir))
        out.append(run)
    return out


def _profile_chain(bundle: Any, cache_dir: Path, chain: tuple[str, ...] | None, config: ProfileConfig,
                   pool: Pool, bar: Any, notes: list[str]) -> dict[str, Any]:
    from ..reranker import Reranker

    samplers = open_samplers(config.telemetry, config.telemetry_interval_s)
    with Reranker(bundle, cache_dir, providers=list(chain) if chain else None, batch_size=config.batch_size,
                  backend=config.backend) as r, \
            ExitStack() as stack:
        for sampler in samplers:
            stack.enter_context(sampler)
        session = _Session(r, pool, config, bar, notes)
        session.index_pool(max(config.candidates + (config.cold_candidates or ())))
        runs = _sweep(session, config, cache_dir)
        providers = getattr(r.encoder.runners["band"], "providers", [r.backend])  # a TensorRT plan has none
    samples = [s for sampler in samplers for s in sampler.samples]
    for run in runs:
        window = run.pop("_window")
        summary = summarize(samples, *window)
        if summary:
            run["telemetry"] = summary
    return {"providers": list(chain) if chain else r.providers, "session_providers": providers,
            "index_per_document": latency_stats(session.index_seconds),
            "telemetry": {"sources": [s.source for s in samplers], "summary": summarize(samples)},
            "runs": runs}


def _progress_total(config: ProfileConfig, pool: Pool, chains: int) -> int:
    warm = len(config.query_tokens) * len(config.candidates) * (config.warmup + config.repeats)
    cold = len(config.cold) * len(config.cold_candidates or config.candidates) * config.cold_repeats
    return chains * (warm + cold + pool.size(max(config.candidates + (config.cold_candidates or ()))))


def profile_bundle(bundle: str | Path, cache_dir: str | Path, config: ProfileConfig | None = None,
                   documents: Sequence[Document] | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure the runtime on ``bundle`` with the K/V store in ``cache_dir``; returns the profile JSON."""
    from ..progress import progress_bar

    from ..bundle import load_bundle
    from .estimate import workload_from_bundle

    config = config or ProfileConfig()
    b = load_bundle(bundle)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pool, notes = Pool(config, documents), []
    fs = filesystem_type(cache_dir)
    if "page-cache" in config.cold and fs in ("tmpfs", "ramfs"):
        notes.append(f"the cache directory is on {fs}: page-cache eviction has no effect there")
    chains = list(config.providers) if config.providers else [None]
    w = workload_from_bundle(b)
    with progress_bar(_progress_total(config, pool, len(chains)), "profiling", "call",
                      disable=not progress) as bar:
        results = [_profile_chain(b, cache_dir, chain, config, pool, bar, notes) for chain in chains]
    cfg = dataclasses.asdict(config)
    return {"schema_version": SCHEMA_VERSION, "kind": "minireranker-profile", "time_unit": "ms",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {**machine_info(), "peak_rss_mb": peak_rss_mb()},
            "bundle": {"path": str(b.path), "fingerprint": b.fingerprint, "precision": b.precision,
                       "spec": b.data["spec"], "model": b.model},
            "config": cfg, "cache": {"directory": str(cache_dir), "filesystem": fs},
            "cold_definition": {m: COLD_DEFINITION[m] for m in config.cold},
            "documents": {"source": "given" if documents else "synthetic", "pool": pool.size(max(config.candidates)),
                          "image_size": list(config.image_size) if not documents else None,
                          "image_tokens": w.image_tokens(*config.image_size) if not documents else None,
                          "kv_bytes_per_token": w.kv_bytes_per_token},
            "providers": results, "notes": notes}


def format_table(profile: dict[str, Any]) -> str:
    """The table for people: p50 per stage, and total p50/p95/p99, in ms, one line per run."""
    machine = profile["machine"]
    lines = [f"profile of {profile['bundle']['path']} ({profile['bundle']['precision']}) on "
             f"{machine.get('jetson_model') or machine.get('cpu') or machine['machine']}"]
    head = f"{'cache':<15} {'cands':>6} {'qtok':>5} " + " ".join(f"{s:>10}" for s in STAGES)
    head += f" {'other':>8} {'total p50':>10} {'p95':>9} {'p99':>9} {'n':>4}"
    for chain in profile["providers"]:
        lines += ["", f"providers: {', '.join(chain['providers'])}  "
                      f"(sessions on {', '.join(chain['session_providers'])})"]
        ix = chain["index_per_document"]
        if ix["n"]:
            lines.append(f"index one document: p50 {ix['p50']:.2f} ms, p95 {ix['p95']:.2f} ms (n={ix['n']})")
        lines.append(head)
        for run in chain["runs"]:
            t = run["total"]
            lines.append(f"{run['cache']:<15} {run['candidates']:>6} {run['query_tokens']:>5} "
                         + " ".join(f"{run['stages'][s]['p50']:>10.3f}" for s in STAGES)
                         + f" {run['other']['p50']:>8.3f} {t['p50']:>10.3f} {t['p95']:>9.3f} {t['p99']:>9.3f}"
                         + f" {t['n']:>4}")
            if run["parts"]:
                lines.append("    within: " + ", ".join(f"{k} {v['p50']:.3f}" for k, v in run["parts"].items()))
        summary = chain["telemetry"]["summary"]
        if summary:
            lines.append(f"telemetry ({', '.join(chain['telemetry']['sources'])}), mean / max over the profile:")
            lines += [f"  {k:<28} {v['mean']:>10.1f} {v['max']:>10.1f}" for k, v in summary.items()]
        else:
            lines.append("telemetry: none (no tegrastats on PATH, no NVML GPU, or --telemetry off)")
    lines.append("(milliseconds; stage columns are p50; cold runs use the middle query length)")
    for note in profile.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


STAGE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per stage, so coinciding lines stay told apart


def _plot_panel(ax: Any, runs: list[dict[str, Any]], colors: dict[str, Any]) -> int:
    """One panel's lines; returns the query length the stages are drawn at (the middle one).

    ``total`` goes underneath as a wide translucent band and every stage over it with its own marker, so a
    stage that is nearly all of the total (``index`` on a cold call) shows as a line inside the band rather
    than vanishing under it."""
    qs = sorted({r["query_tokens"] for r in runs})
    mid = qs[len(qs) // 2]

    def points(stage: str, q: int) -> list[tuple[int, float]]:
        pts = sorted((r["candidates"], (r["total"] if stage == "total" else r["stages"][stage])["p50"])
                     for r in runs if r["query_tokens"] == q)
        return [(n, v) for n, v in pts if v > 0]  # log axes: a stage that did not run is left out

    ax.plot(*zip(*points("total", mid)), color="black", alpha=0.25, linewidth=7, solid_capstyle="round",
            zorder=1, label=f"total (wall), q={mid}")
    for q in (q for q in qs if q != mid):
        ax.plot(*zip(*points("total", q)), color="0.45", linestyle="--", linewidth=1, marker="x", zorder=2,
                label=f"total, q={q}")
    for stage, marker in zip(STAGES, STAGE_MARKERS):
        if pts := points(stage, mid):
            ax.plot(*zip(*pts), marker=marker, markersize=5, color=colors[stage], linewidth=1.5, zorder=3,
                    label=stage)
    return mid


def profile_figure(profile: dict[str, Any]) -> Any:
    """Latency (p50) vs candidates per stage, log-log, one panel per provider chain and cache mode; ``total``
    as a grey band under the stages. The matplotlib figure, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    panels = [(c, mode) for c in profile["providers"] for mode in dict.fromkeys(r["cache"] for r in c["runs"])]
    colors = dict(zip(STAGES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1.4, 4.2), squeeze=False, layout="constrained")
    for ax, (chain, mode) in zip(axes[0], panels):
        runs = [r for r in chain["runs"] if r["cache"] == mode]
        mid = _plot_panel(ax, runs, colors)
        ax.set_xscale("log")
        ax.set_yscale("log")
        counts = sorted({r["candidates"] for r in runs})
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_xlabel("candidates")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"{chain['providers'][0].replace('ExecutionProvider', '')} {mode} (stages at query {mid} tokens)",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
    order = [k for k in handles if k not in STAGES] + [k for k in STAGES if k in handles]  # totals, then stages
    fig.legend([handles[k] for k in order], order, fontsize=8, loc="outside right center")
    return fig


def plot_profile(profile: dict[str, Any], path: Path) -> Path | None:
    """profile.png: :func:`profile_figure` as a PNG; None (and nothing written) without matplotlib."""
    fig = profile_figure(profile)
    return None if fig is None else save_figure(fig, path)


def run_profile(bundle: str | Path | None, cache_dir: str | Path | None = None, config: ProfileConfig | None = None,
                *, documents: Sequence[Document] | None = None, estimate_device: str | None = None,
                out_dir: str | Path | None = None, progress: bool = True, spec: Any = None,
                log: Callable[[str], None] = print) -> ProfileReport:
    """``minireranker profile``: measure, estimate, or both, and write profile.json / .txt / .png to ``out_dir``.

    * no ``estimate_device``: profile ``bundle`` with the cache in ``cache_dir`` (both required);
    * ``estimate_device="this-cpu"`` with a bundle: profile on CPUExecutionProvider (in ``cache_dir``, or a
      temporary directory), estimate for this CPU from micro-measured peaks, and compare per stage;
    * any other device: the estimate only (``bundle`` optional: Qwen3-VL-2B's shapes under ``spec`` without).
    """
    config = config or ProfileConfig()
    local = estimate_device is not None and estimate_device.strip().lower() in ("this-cpu", "cpu")
    if estimate_device is None and bundle is None:
        raise ProfileError("give a BUNDLE to profile (only --estimate DEVICE works without one)")
    data: dict[str, Any] = {}
    with ExitStack() as stack:
        if estimate_device is None or (local and bundle is not None):
            if local:
                config = dataclasses.replace(config, providers=(("CPUExecutionProvider",),))
            if cache_dir is None:
                if not local:
                    raise ProfileError("give --cache DIR: the K/V cache directory the profile indexes into")
                cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="minireranker-profile-"))
            data = profile_bundle(bundle, cache_dir, config, documents, progress)
        if estimate_device is not None:
            extra = tuple(c for c in config.cold_candidates or () if c not in config.candidates)
            candidates = config.candidates + extra
            predicted = estimate(get_device(estimate_device), bundle, candidates, config.query_tokens,
                                 config.image_size, config.batch_size, spec)
            data = data or {"schema_version": SCHEMA_VERSION, "kind": "minireranker-estimate", "time_unit": "ms",
                            "notes": [] if cache_dir is None else
                            [f"--estimate {estimate_device} predicts another device: nothing is measured here"]}
            data["estimate"] = predicted
            if "providers" in data:
                data["comparison"] = compare_with_estimate(data, predicted)
    parts = [format_table(data) if "providers" in data else "\n".join(f"note: {n}" for n in data["notes"]),
             format_estimate(data["estimate"]) if "estimate" in data else "", format_comparison(data.get("comparison"))]
    table = "\n\n".join(p for p in parts if p)
    return ProfileReport(data, table, _write_outputs(data, table, out_dir, log))


def _write_outputs(data: dict[str, Any], table: str, out_dir: str | Path | None,
                   log: Callable[[str], None]) -> list[Path]:
    if out_dir is None:
        return []
    out = Path(out_dir)
    plot = plot_profile if "providers" in data else None  # an estimate alone has nothing measured to plot
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = write_report(out, data, table + "\n", "profile.json", "profile.txt", "profile.png", plot)
    except OSError as exc:
        raise ProfileError(f"cannot write the profile to {out} ({exc.strerror or exc}); choose another --out") from None
    if written.plot_asked and written.png is None:
        log("note: matplotlib is not installed, so no profile.png; pip install 'minireranker[plot]' for it")
    return written.files
