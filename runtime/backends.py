"""Which engines run a bundle's graphs, and building the GPU engine sets (``minireranker engines``).

Backends (``Reranker(..., backend=...)``, ``--backend``):

=======================  ==========================================================================
``onnxruntime``          the ONNX graphs in ONNX Runtime, providers as chosen (TensorRT, CUDA, CPU
                         where present, or ``providers=[...]``); nothing to build (the default)
``onnxruntime-cuda``     ONNX Runtime's CUDA EP with IO binding: the system K/V is copied to the GPU
                         once per session, not per call
``onnxruntime-tensorrt`` ONNX Runtime's TensorRT EP with explicit profiles and the engine and timing
                         caches in ``BUNDLE/engines/onnxruntime-tensorrt/``
``tensorrt``             native TensorRT plans built by polygraphy (``BUNDLE/engines/tensorrt/*.plan``)
=======================  ==========================================================================

The three GPU backends need ``minireranker engines BUNDLE --backend NAME`` first: it writes
``engines.json`` (engines/manifest.py) with the profiles the engines were built for. Their defaults
(:func:`default_axes`) cover every query and image the runtime accepts (documents: see doc_len): ``batch``
up to the reranker's batch size, ``query_len`` up to the 512-token query limit and its closing tokens,
``doc_len`` up to a largest image (``preprocess.max_pixels``) plus :data:`DOC_TEXT_TOKENS` of text, capped by
the model's positions; ``opt`` is a 1024x1024 image with a short caption and a 32-token query. A reranker on
a GPU backend refuses a longer document or query than its engines take, in one line, before any engine runs.

Everything on the GPU paths is unverified on hardware (docs/engines.md).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engines import BaseRunner, EngineError, choose_providers, open_runner
from ..engines.device import cuda_device
from ..engines.manifest import (BACKENDS as GPU_BACKENDS, check_manifest, check_plan, engines_folder, read_manifest,
                                sha256_file, write_manifest)
from ..engines.onnxrt import OnnxRuntimeRunner, import_onnxruntime, tensorrt_provider_options
from ..engines.profiles import AxisRange, ShapeRange, apply_overrides, graph_profile, parse_overrides
from .bundle import Bundle, load_bundle
from .graph_io import GRAPH_IO
from .weights import SharedWeights

BACKENDS = ("onnxruntime",) + GPU_BACKENDS
BATCH_SIZE = 32           # the Reranker's default candidates per band/tail call
DOC_TEXT_TOKENS = 512     # text tokens a document may add to its largest image in the default profiles
OPT_IMAGE_SIDE = 1024     # pixels: the image the profiles' opt sizes are for
OPT_QUERY_TOKENS = 32
RESIDENT_INPUTS = ("system_k", "system_v")  # the same bundle arrays in every call (IO binding keeps them)
IO_BINDING_DEVICE = "cuda"  # where onnxruntime-cuda binds them (tests run the same path with "cpu")

Opener = Callable[[str, dict], BaseRunner]  # (graph key, bundle.json's graph record) -> runner


@dataclass(frozen=True)
class EngineBuildConfig:
    """How ``minireranker engines`` builds a GPU engine set. ``profiles``: ``NAME=MIN:OPT:MAX`` overrides
    (engines/profiles.py); ``workspace_mib``: TensorRT's workspace pool limit (None: its default)."""

    backend: str
    fp16: bool = False
    int8: bool = False
    workspace_mib: int | None = None
    profiles: tuple[str, ...] = field(default_factory=tuple)
    batch_size: int = BATCH_SIZE
    strip_weights: bool = True  # tensorrt: weight-stripped plans, refitted from the bundle's ONNX when loaded

    def __post_init__(self) -> None:
        if self.backend not in GPU_BACKENDS:
            raise EngineError(f"--backend must be one of {list(GPU_BACKENDS)}, got {self.backend!r} "
                              "(the onnxruntime backend needs no engines)")
        if self.workspace_mib is not None and (not isinstance(self.workspace_mib, int) or self.workspace_mib < 1):
            raise EngineError(f"--workspace must be a positive number of MiB, got {self.workspace_mib!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise EngineError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        parse_overrides(self.profiles)  # a bad --profile fails before anything is built


def query_segment_limit(template) -> int:
    """Tokens of the longest query segment the runtime accepts (the query and its closing tokens)."""
    from .reranker import MAX_QUERY_TOKENS

    return MAX_QUERY_TOKENS + len(template.query_text(""))


def default_axes(bundle: Bundle, query_tokens: int, document_tokens: int,
                 batch_size: int = BATCH_SIZE) -> dict[str, dict[str, AxisRange]]:
    """Per graph key (``band``, ``embedder/vision``...), the range of each of its axes (module docstring).
    ``query_tokens``: the longest query segment; ``document_tokens``: the runtime's document limit."""
    p = bundle.preprocess
    merge = p.merge_size ** 2
    max_patches = p.max_pixels // p.patch_size ** 2
    opt_patches = min(max(merge, (OPT_IMAGE_SIDE // p.patch_size) ** 2), max_patches)
    image_tokens = max_patches // merge
    doc_max = max(1, min(document_tokens, image_tokens + DOC_TEXT_TOKENS))
    keep = bundle.spec.keep_ratio
    doc_opt = min(doc_max, opt_patches // merge + 16)
    kept_opt = min(doc_max, max(1, math.ceil(keep * (opt_patches // merge))) + 16)
    query = AxisRange(1, min(OPT_QUERY_TOKENS, query_tokens), query_tokens)
    axes = {"vision": {"patches": AxisRange(merge, opt_patches, max_patches)},
            "guide": {"doc_len": AxisRange(1, doc_opt, doc_max)},
            "doc_prefix": {"doc_len": AxisRange(1, kept_opt, doc_max)},
            "query_head": {"query_len": query},
            "band": {"batch": AxisRange(1, batch_size, batch_size), "hidden_batch": AxisRange(1, 1, batch_size),
                     "doc_len": AxisRange(1, kept_opt, doc_max), "query_len": query},
            "tail": {"batch": AxisRange(1, batch_size, batch_size), "query_len": query}}
    out = {key: axes[key] for key in bundle.graphs}
    if bundle.guide and bundle.guide.get("kind") == "embedder":
        out.update({f"embedder/{key}": axes[key] for key in bundle.guide["graphs"]})
    return out


def graph_records(bundle: Bundle) -> dict[str, dict]:
    """Every graph of the bundle by key: the reranker's (``band``) and the embedder's (``embedder/vision``)."""
    records = dict(bundle.graphs)
    if bundle.guide and bundle.guide.get("kind") == "embedder":
        records.update({f"embedder/{k}": v for k, v in bundle.guide["graphs"].items()})
    return records


def profiles_of(bundle: Bundle, axes: dict[str, dict[str, AxisRange]]) -> dict[str, dict[str, ShapeRange]]:
    """Each graph's input shape ranges (engines/profiles.py), from the graph I/O table and bundle.json."""
    out = {}
    for key, record in graph_records(bundle).items():
        kind = key.split("/")[-1]
        table = {t.name: t.dims for t in GRAPH_IO[kind].inputs}
        out[key] = graph_profile(key, table, record["inputs"], axes[key])
    return out


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("tensorrt", "polygraphy", "onnxruntime", "onnxruntime-gpu", "minireranker"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def build_engines(bundle_dir: str | Path, config: EngineBuildConfig,
                  log: Callable[[str], None] = print) -> Path:
    """Build ``config.backend``'s engines for the bundle on this machine's GPU; returns engines.json's path.

    Refuses in one line, before building anything, when the backend's library or a GPU is missing.
    """
    from .reranker import Reranker

    bundle = load_bundle(bundle_dir)
    backend = config.backend
    qdq = bundle.data.get("weights") == "int8-qdq"  # explicit Q/DQ band and tail (calibration/qdq.py)
    if config.int8 and not qdq:
        raise EngineError(f"--int8 needs explicit Q/DQ graphs (TensorRT 11 has no implicit calibration): write "
                          f"them with `minireranker quantize {bundle.path} --data FILE -o OUT`, then build OUT's "
                          "engines")
    if backend == "tensorrt":
        from ..engines.tensorrt import import_tensorrt, tensorrt_major

        trt = import_tensorrt()
        if bundle.data.get("attention") == "plugin":  # the parser builds BandAttention nodes from it
            from ..engines.band_plugin import register_band_plugin

            register_band_plugin()
    else:
        provider = {"onnxruntime-cuda": "CUDAExecutionProvider",
                    "onnxruntime-tensorrt": "TensorrtExecutionProvider"}[backend]
        available = import_onnxruntime().get_available_providers()
        if provider not in available:
            raise EngineError(f"ONNX Runtime here has no {provider} (it has {available}); install "
                              "onnxruntime-gpu (pip install \"minireranker[gpu]\"; on a Jetson NVIDIA's wheel)")
    device = cuda_device()
    if device is None:
        raise EngineError("no NVIDIA GPU was found (no CUDA driver answered): engines are built on the GPU that "
                          "runs them")
    template = Reranker.template_of(bundle)
    axes = apply_overrides(default_axes(bundle, query_segment_limit(template), Reranker.document_limit_of(
        bundle, template).tokens, config.batch_size), parse_overrides(config.profiles))
    profiles = profiles_of(bundle, axes)
    folder = engines_folder(bundle.path, backend)
    folder.mkdir(parents=True, exist_ok=True)
    # fp16 bundles carry fp16 types already, and TensorRT 11 builds strongly typed networks only
    strongly_typed = backend == "tensorrt" and (bundle.precision == "fp16" or tensorrt_major(trt.__version__) >= 11)
    if backend == "tensorrt" and config.fp16 and strongly_typed and bundle.precision != "fp16":
        raise EngineError("TensorRT 11 builds strongly typed networks only: build an fp16 bundle "
                          "(minireranker build --precision fp16) instead of --fp16 on an fp32 one")
    fp16_flag = config.fp16 and not strongly_typed and bundle.precision != "fp16"
    int8_flag = qdq and not strongly_typed  # a Q/DQ bundle implies --int8 (weakly typed TensorRT 10 needs it)
    graphs: dict[str, dict[str, Any]] = {}
    for key, record in graph_records(bundle).items():
        onnx_path = bundle.graph_path(record)
        entry = {"onnx": record["file"], "onnx_sha256": bundle.data.get("sha256", {}).get(record["file"]),
                 "profile": {name: r.to_dict() for name, r in profiles[key].items()}}
        log(f"building {backend} engine for {key}")
        if backend == "tensorrt":
            from ..engines.tensorrt import plan_loader

            plan = folder / (key + ".plan")
            plan.parent.mkdir(parents=True, exist_ok=True)
            plan_loader(onnx_path, plan, profiles[key], strongly_typed, fp16=fp16_flag, int8=int8_flag,
                        workspace_bytes=(config.workspace_mib or 0) << 20 or None,
                        timing_cache=folder / "timing.cache", strip_weights=config.strip_weights)()
            entry.update({"file": plan.relative_to(folder).as_posix(), "sha256": sha256_file(plan),
                          "weights": "stripped" if config.strip_weights else "included"})
        elif backend == "onnxruntime-tensorrt":
            with _tensorrt_ep_runner(key, onnx_path, folder, profiles[key], config, fp16_flag, int8_flag) as runner:
                runner.infer(_feed_at(runner, profiles[key], "opt"))  # builds the engine into the cache
        graphs[key] = entry
    manifest = {"backend": backend, "bundle_fingerprint": bundle.fingerprint,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(), "device": device,
                "precision": {"bundle": bundle.precision, "fp16_flag": fp16_flag, "int8_flag": int8_flag,
                              "qdq": qdq, "strongly_typed": strongly_typed},
                "workspace_mib": config.workspace_mib, "batch_size": config.batch_size,
                "axes": {key: {axis: r.to_list() for axis, r in ranges.items()} for key, ranges in axes.items()},
                "graphs": graphs}
    path = write_manifest(folder, manifest)
    log(f"engines written to {folder} ({len(graphs)} graphs, {device['name']})")
    return path


def _tensorrt_ep_runner(key: str, onnx_path: Path, folder: Path, profile: dict[str, ShapeRange],
                        config: EngineBuildConfig, fp16: bool, int8: bool) -> OnnxRuntimeRunner:
    options = tensorrt_provider_options(profile, folder, fp16=fp16, int8=int8,
                                        workspace_bytes=(config.workspace_mib or 0) << 20 or None,
                                        prefix=key.replace("/", "_"))
    return OnnxRuntimeRunner(key, onnx_path, [("TensorrtExecutionProvider", options), "CUDAExecutionProvider",
                                              "CPUExecutionProvider"])


def _feed_at(runner: BaseRunner, profile: dict[str, ShapeRange], which: str) -> dict[str, np.ndarray]:
    """Zeros of the profile's ``which`` shapes (a call that makes the TensorRT EP build its engine)."""
    meta = runner.input_metadata()
    return {name: np.zeros(getattr(r, which), dtype=meta[name].dtype or np.float32) for name, r in profile.items()
            if name in meta}


def graph_opener(bundle: Bundle, backend: str = "onnxruntime", providers: list[str] | None = None,
                 threads: int | None = None) -> tuple[Opener, dict | None]:
    """The runner factory for ``backend`` and, for a GPU backend, its checked engines.json."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if bundle.data.get("attention") == "plugin" and backend != "tensorrt":
        raise EngineError(f"{bundle.path} was built with the TensorRT plugin attention form (its band holds "
                          "minireranker.BandAttention nodes, which ONNX Runtime cannot run): use --backend tensorrt, "
                          "or build it again with --attention portable")
    if backend == "onnxruntime":
        return _shared_opener(bundle, providers, threads), None
    if providers:
        raise EngineError(f"--provider applies to the onnxruntime backend only; the {backend} backend chooses "
                          "its own (leave --provider out)")
    manifest = read_manifest(bundle.path, backend)
    versions = _versions() if backend == "tensorrt" else {}
    check_manifest(manifest, bundle.path, bundle.fingerprint, bundle.data.get("sha256", {}),
                   {"tensorrt": versions.get("tensorrt")} if backend == "tensorrt" else {}, cuda_device())
    folder = engines_folder(bundle.path, backend)
    graphs = manifest["graphs"]

    def entry(key: str) -> dict:
        if key not in graphs:
            raise EngineError(f"the {backend} engines of {bundle.path} have no graph '{key}'; rebuild them with "
                              f"`minireranker engines {bundle.path} --backend {backend}`")
        return graphs[key]

    if backend == "tensorrt":
        from ..engines.tensorrt import TensorRTRunner

        def open_plan(key: str, record: dict) -> BaseRunner:
            plan = check_plan(folder, key, entry(key), bundle.path, backend)
            stripped = entry(key).get("weights") == "stripped"  # refitted from the graph the manifest checked
            return TensorRTRunner(key, plan, refit_from=bundle.graph_path(record) if stripped else None)
        return open_plan, manifest
    if backend == "onnxruntime-cuda":
        return (lambda key, record: OnnxRuntimeRunner(key, bundle.graph_path(record), ["CUDAExecutionProvider",
                "CPUExecutionProvider"], threads, io_binding=IO_BINDING_DEVICE, resident=RESIDENT_INPUTS)), manifest
    config = EngineBuildConfig(backend, workspace_mib=manifest.get("workspace_mib"))

    def open_ep(key: str, record: dict) -> BaseRunner:
        profile = {name: ShapeRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"]))
                   for name, r in entry(key)["profile"].items()}
        return _tensorrt_ep_runner(key, bundle.graph_path(record), folder, profile, config,
                                   manifest["precision"]["fp16_flag"], manifest["precision"]["int8_flag"])
    return open_ep, manifest


def _shared_opener(bundle: Bundle, providers: list[str] | None, threads: int | None) -> Opener:
    """The onnxruntime backend's opener: on the CPU, a graph's weights are views of the bundle's shared
    weight files, mapped once for every graph (runtime/weights.py); elsewhere each session reads its own."""
    on_cpu = choose_providers(providers)[0] == "CPUExecutionProvider"
    mapped: dict[Path, SharedWeights] = {}

    def open_graph(key: str, record: dict) -> BaseRunner:
        path = bundle.graph_path(record)
        views = None
        if on_cpu and record.get("initializers"):
            views = mapped.setdefault(path.parent, SharedWeights(path.parent)).views(record["initializers"])
        return open_runner(key.split("/")[-1], path, providers, threads, initializers=views)
    return open_graph


def engine_limits(manifest: dict | None) -> dict[str, int]:
    """The largest batch, query segment and document an engine set takes ({} for the onnxruntime backend)."""
    if not manifest:
        return {}
    limits: dict[str, int] = {}
    for ranges in manifest["axes"].values():
        for axis in ("batch", "query_len", "doc_len"):
            if axis in ranges:
                limits[axis] = min(limits.get(axis, ranges[axis][2]), ranges[axis][2])
    return limits
