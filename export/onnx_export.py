"""``minireranker build``: checkpoint + spec -> bundle of ONNX engines, validated before it reports success.

Each engine segment of :mod:`minireranker.export.graphs` is exported once with dynamic axes (candidates,
document length, query length, image patches), its inputs, outputs and dynamic axes named by the graph
I/O table (:mod:`minireranker.runtime.graph_io`, which the runtime reads too), then run in ONNX Runtime
(an :mod:`minireranker.engines` runner on the CPU) on *fresh* inputs (other image
sizes, other lengths, another batch size than the export trace) and compared with the torch fp32
reference (:mod:`.validation`: the checks, their tolerances and why).

The plugin attention form (``attention="plugin"``) writes the band's attention as one
``minireranker.BandAttention`` node per layer (export/plugin_attention.py; the TensorRT plugin is
engines/band_plugin.py); every other graph, and the rest of the band, is the portable form. Its band graph is
validated like the others, at the fp32 tolerance (fp16: the fp16 tolerance, the node itself computed in
float32), with the node run by onnxruntime-extensions on the CPU. The end-to-end check is recorded as skipped:
the runtime opens graphs without onnxruntime-extensions (it needs a session-options hook first).

A failing check raises :class:`BuildError` naming the graph and the output, and no bundle.json is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import itertools
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..engines import BaseRunner
from ..runtime.bundle import BUNDLE_FILE, SCHEMA_VERSION, load_bundle, meta_checksum, sha256_file
from ..runtime.spec import RerankSpec
from . import weights_as_inputs
from .build_config import BuildConfig, BuildError  # torch-free, so that `build --help` can read its defaults
from .checkpoint import Checkpoint, checkpoint_digest, open_checkpoint
from .graphs import BandGraph
from .onnx_files import stored_bytes, stream_to_one_file
from .plugin_attention import DOMAIN, DOMAIN_VERSION, register_symbolic
from .quantize import quantize_weights
from .shared_weights import share_weights
from .reference import ReferencePipeline
from .validation import check_outputs, cpu_runner, io_for, reference_outputs, sample_documents, validate_end_to_end
from .trt_compat import decompose_rmsnorm

EXPORT_VERSION = 2  # 2: the instruction segment is computed with the document (a new entry layout)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
QUANTIZED_GRAPHS = ("band", "tail")  # with int8 weights; query_head runs once per query and stays float
PLUGIN_END_TO_END = ("the runtime cannot open a BandAttention node on the CPU yet (ONNX Runtime needs "
                     "onnxruntime-extensions registered on its session options); the band graph was validated alone")


class _Recorder(nn.Module):
    """Wraps a graph and keeps a copy of the arguments of every call (the export/validation samples)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph, self.calls = graph, []

    def forward(self, *args):
        self.calls.append(tuple(a.clone() if isinstance(a, Tensor) else a for a in args))
        return self.graph(*args)


def record_samples(pipeline: ReferencePipeline, seed: int) -> dict[str, list[tuple]]:
    """Run the reference on sample documents and one query; return each graph's call arguments."""
    targets: dict[str, tuple[Any, str]] = {name: (pipeline.graphs, name) for name in pipeline.graphs}
    if pipeline.guide is not None:
        targets["embedder/vision"] = (pipeline.guide, "vision_graph")
        targets["embedder/guide"] = (pipeline.guide, "graph")
    recorders = {}
    for key, (owner, attr) in targets.items():
        graph = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
        recorders[key] = _Recorder(graph)
        _assign(owner, attr, recorders[key])
    try:
        pipeline.rerank("which image is it?" if seed == 0 else "a longer query, with seven words", sample_documents(seed))
    finally:
        for key, (owner, attr) in targets.items():
            _assign(owner, attr, recorders[key].graph)
    return {k: r.calls for k, r in recorders.items()}


def _assign(owner: Any, attr: str, value: nn.Module) -> None:
    if isinstance(owner, dict):
        owner[attr] = value
    else:
        setattr(owner, attr, value)


def _cast(args: tuple, dtype: torch.dtype) -> tuple:
    """Floating tensors to ``dtype``; integer and boolean inputs stay as they are."""
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def export_graph(graph: nn.Module, kind: str, args: tuple, path: Path, config: BuildConfig) -> None:
    """Export one segment in the build's precision with dynamic axes (portable: TorchScript exporter,
    opset 17; fused: dynamo exporter, opset 23, which turns SDPA into ONNX ``Attention``; plugin: as portable,
    with the band's attention one ``minireranker.BandAttention`` node per layer)."""
    dtype = TORCH_DTYPES[config.precision]
    plugin = config.attention == "plugin" and isinstance(graph, BandGraph)
    module = (graph.with_plugin() if plugin else graph).eval()
    if plugin:
        register_symbolic()
    args = _cast(tuple(a for a in args if a is not None), dtype)
    inputs, outputs, axes = io_for(kind, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter writes a graph past 2 GB as one file per tensor beside it: a scratch folder of its own
    scratch = path.parent / f".{path.name}.export"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        _export(module, kind, args, scratch / path.name, config, dtype, plugin, inputs, outputs, axes)
        finalize_onnx(scratch / path.name, kind, config.external_data_threshold, fused=config.attention == "fused",
                      target=path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export(module: nn.Module, kind: str, args: tuple, path: Path, config: BuildConfig, dtype: torch.dtype,
            plugin: bool, inputs: list[str], outputs: list[str], axes: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad(), cast_in_place(module, dtype):
        warnings.simplefilter("ignore")
        try:
            if config.attention == "fused":
                from torch.export import Dim

                shapes = tuple({axis: Dim.DYNAMIC for axis in axes[name]} if name in axes else None
                               for name in inputs)
                torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                                  dynamic_shapes=shapes, opset_version=config.opset, dynamo=True, verbose=False)
            elif kind in weights_as_inputs.KINDS and not plugin:  # no copy of the weights in the exporter
                weights_as_inputs.export(module, args, path, inputs, outputs, axes, config.opset)
            else:
                torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                                  dynamic_axes=axes, opset_version=config.opset, dynamo=False,
                                  do_constant_folding=True, **({"custom_opsets": {DOMAIN: DOMAIN_VERSION}}
                                                               if plugin else {}))
        except Exception as exc:  # the exporters raise many types; all mean the same to the user
            raise BuildError(f"exporting graph '{kind}' to ONNX failed: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def cast_in_place(module: nn.Module, dtype: torch.dtype):
    """``module.to(dtype)`` for the duration of the block, then its own tensors back: what a deep copy cast
    to ``dtype`` would export, without copying the reference (a graph holds the whole model: a copy of a
    2B model per graph was 8 GB). Only the modules the graph reads are cast (``used_modules``: a tail's
    layers, not the vision tower), and the cast tensors are freed after the block. A module marked
    ``keeps_float32`` (the rotary's angles) keeps its buffers: it casts its own outputs."""
    # a graph names the modules its export reads (export/graphs.py): the rest of the model is never cast
    parts = module.used_modules() if hasattr(module, "used_modules") else [module]
    tensors = [t for part in parts for t in itertools.chain(part.parameters(), part.buffers())]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        yield module
        return
    params = list({id(p): (p, p.data) for part in parts for p in part.parameters()}.values())
    buffers = [(m, name, b) for part in parts for m in part.modules() for name, b in m._buffers.items()
               if b is not None]
    for part in parts:
        part.to(dtype)
    for m, name, b in buffers:  # a module that computes in float32 whatever the graph's type (TextRotary)
        if getattr(m, "keeps_float32", False):
            m._buffers[name] = b
    try:
        yield module
    finally:
        for p, data in params:
            p.data = data
        for m, name, b in buffers:
            m._buffers[name] = b


def finalize_onnx(path: Path, kind: str, threshold: int, fused: bool = False, target: Path | None = None) -> None:
    """Run the ONNX checker; move the weights to ``<graph>.onnx.data`` when they exceed ``threshold``
    bytes (protobuf cannot hold more than 2 GB, so the default threshold is just under that). ``fused``:
    write RMSNormalization back as basic ops, so TensorRT 10.14 parses the graph (export/trt_compat.py).
    ``target``: write the graph there (the exporter's output at ``path`` is left for its caller to remove).

    The weights are never all in memory: a graph over the threshold is read as structure only and its
    tensors copied one by one (export/onnx_files.py); an inline graph the exporter wrote alone, with nothing
    to rewrite, is moved as it is, and so is a graph with the one data file that export/weights_as_inputs.py
    writes, whatever its size. (Loading and re-saving the exact spec's 2B ``doc_prefix`` held 5.2 GiB beside
    the torch reference.)"""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    target = Path(target or path)
    if not fused and target != path and _written_alone(path, threshold):
        data = path.with_name(path.name + ".data")
        if data.exists():  # its locations name the file, and target keeps the graph's name
            assert target.name == path.name, (target, path)
            os.replace(data, target.with_name(data.name))
        os.replace(path, target)
    else:
        model = onnx.load(str(path), load_external_data=False)
        rewritten = fused and decompose_rmsnorm(model) > 0
        external = any(uses_external_data(t) for t in model.graph.initializer)
        weights = sum(stored_bytes(t, path.parent) for t in model.graph.initializer)
        if weights > threshold:
            for f in target.parent.glob(target.name + ".data*"):
                if not (target == path and f.name == target.name + ".data"):  # the file read from stays until done
                    f.unlink()
            stream_to_one_file(model, path.parent, target.with_name(target.name + ".data"), min_bytes=1024)
            onnx.save_model(model, str(target))
        elif rewritten or target != path:
            if external:  # within the limit again (int8 weights are a quarter of the bytes): inline
                load_external_data_for_model(model, str(path.parent))
            onnx.save_model(model, str(target))
            for f in target.parent.glob(target.name + ".data*"):
                f.unlink()
        del model
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and others
        raise BuildError(f"graph '{kind}' fails the ONNX checker: {exc}") from None


def _written_alone(path: Path, threshold: int) -> bool:
    """The export is in its final form: the graph alone, inline and within ``threshold``, or the graph and
    the one data file beside it that export/weights_as_inputs.py writes (the TorchScript exporter writes
    one file per tensor beside a graph past 2 GB)."""
    names = sorted(p.name for p in path.parent.iterdir())
    if names == [path.name]:
        return path.stat().st_size <= threshold
    return names == [path.name, path.name + ".data"]


def _describe(runner: BaseRunner) -> dict:
    """bundle.json's record of a graph's inputs and outputs, as the backend reads the exported file."""
    def io(values):
        return [{"name": v.name, "dtype": v.dtype.name if v.dtype is not None else None,
                 "shape": [d if isinstance(d, int) else str(d) for d in v.shape]} for v in values.values()]

    return {"inputs": io(runner.input_metadata()), "outputs": io(runner.output_metadata())}


def _count_parameters(path: Path) -> int:
    """Number of weights the graph carries (its initializers), read back from the ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def _model_info(pipeline_model, config) -> dict:
    """bundle.json's "model" (runtime/bundle.py documents it). "window_size" is written only for a tower
    with window attention, so a Qwen3-VL bundle reads as before; "side" 0 means no learned position table."""
    t, v = config.text, config.vision
    vision = {"patch_size": v.patch_size, "merge_size": v.spatial_merge_size, "side": v.position_side,
              "head_dim": v.head_dim, "rope_theta": v.rope_theta, "depth": v.depth, "hidden_size": v.hidden_size,
              "num_heads": v.num_heads, "intermediate_size": v.intermediate_size}
    if v.window_size:
        vision["window_size"] = v.window_size
    return {"hidden_size": t.hidden_size, "num_layers": t.num_layers, "num_attention_heads": t.num_heads,
            "num_kv_heads": t.num_kv_heads, "head_dim": t.head_dim, "intermediate_size": t.intermediate_size,
            "vocab_size": t.vocab_size, "num_deepstack": len(v.deepstack_indexes),
            "max_position_embeddings": t.max_position_embeddings, "vision": vision}


def _save_array(path: Path, array: Tensor, precision: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array.to(TORCH_DTYPES[precision]).numpy())


def _prepare_output(output: Path) -> Path:
    if output.exists() and not output.is_dir():
        raise BuildError(f"output {output} exists and is not a directory; choose another -o")
    if output.is_dir() and any(output.iterdir()) and not (output / BUNDLE_FILE).is_file():
        raise BuildError(f"output {output} is a non-empty directory that is not a bundle; choose another -o")
    staging = output.parent / f".{output.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def build_bundle(checkpoint: str | Path, output: str | Path, spec: RerankSpec | None = None,
                 config: BuildConfig | None = None, log: Callable[[str], None] = print,
                 source: dict | None = None):
    """Export, validate and write a bundle; returns the loaded :class:`~minireranker.runtime.bundle.Bundle`.

    ``source`` adds to bundle.json's "source" record (a merged PEFT adapter: {"adapter", "base"}, since
    the merged checkpoint itself is a temporary directory).

    The bundle is assembled in a staging directory and moved into place only after every graph passed
    validation, so a failed build never leaves a half bundle behind.

    The torch reference and ONNX Runtime never hold their weights at once (docs/memory.md). While the
    reference is loaded, every graph is exported and its reference outputs on the fresh samples recorded;
    the reference is then freed, and each graph is checked in ONNX Runtime against those outputs; the
    end-to-end check runs the runtime first and opens the reference again for its side.
    """
    config = config or BuildConfig()
    output = Path(output)
    ckpt = open_checkpoint(checkpoint, spec)
    # the plugin form's reference is the portable one: export_graph swaps the band's attention alone
    attention = "portable" if config.attention == "plugin" else config.attention

    def open_reference() -> ReferencePipeline:
        return ReferencePipeline(ckpt, spec, attention=attention, up_to_exit=True)

    staging = _prepare_output(output)
    try:
        pipeline = open_reference()
        exported = _export_graphs(pipeline, staging, config, log)
        _write_arrays(pipeline, staging, config.precision)
        meta = _bundle_meta(ckpt, pipeline, config, source)
        del pipeline
        gc.collect()  # the reference's weights go before ONNX Runtime opens a graph
        graphs, validation = _check_graphs(exported, staging, config)
        shared = _share_weights(staging, graphs, log) if config.share_weights else None
        meta = _finish_meta(meta, graphs, validation, staging)
        if shared is not None:
            meta["shared_weights"] = shared
            meta["meta_sha256"] = meta_checksum(meta)
        (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if config.validate and config.attention == "plugin":
            meta["validation"]["end_to_end"] = {"skipped": PLUGIN_END_TO_END}
            (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        elif config.validate:
            log("validating end to end: the runtime on the new engines vs the torch reference")
            meta["validation"]["end_to_end"] = validate_end_to_end(open_reference, staging, config.precision,
                                                                   config.weights)
            (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    log(f"bundle written to {output} (fingerprint {meta['fingerprint'][:12]})")
    return load_bundle(output)


# One exported graph waiting for its check: where it lies, how to check it, and what the reference gave.
_Exported = dict


def _export_graphs(pipeline: ReferencePipeline, staging: Path, config: BuildConfig,
                   log: Callable[[str], None]) -> dict[str, _Exported]:
    """Export every graph of ``pipeline`` into ``staging`` (int8 weights where asked), with the reference's
    outputs on the fresh samples for its check: {key: {"file", "kind", "weights", "plugin", "samples",
    "expected"}}."""
    log(f"recording sample inputs ({len(pipeline.graphs)} graphs)")
    trace, fresh = record_samples(pipeline, seed=0), record_samples(pipeline, seed=1)
    exported: dict[str, _Exported] = {}
    for key, calls in trace.items():
        kind = key.split("/")[-1]
        graph = (pipeline.graphs[key] if "/" not in key else
                 getattr(pipeline.guide, "vision_graph" if kind == "vision" else "graph"))
        rel = f"{key.rsplit('/', 1)[0]}/onnx/{kind}.onnx" if "/" in key else f"onnx/{kind}.onnx"
        log(f"exporting {key} ({config.precision}, {config.attention} attention, opset {config.opset})")
        export_graph(graph, kind, calls[-1], staging / rel, config)
        weights = "int8" if config.weights == "int8" and key in QUANTIZED_GRAPHS else "float"
        if weights == "int8":
            log(f"quantizing {key} to int8 weights")
            quantize_weights(staging / rel, kind, config.external_data_threshold)
            finalize_onnx(staging / rel, kind, config.external_data_threshold)  # the ONNX checker again
        exported[key] = {"file": rel, "kind": kind, "weights": weights,
                         "plugin": config.attention == "plugin" and key == "band", "samples": fresh[key],
                         "expected": reference_outputs(graph, fresh[key]) if config.validate else None}
    return exported


def _check_graphs(exported: dict[str, _Exported], staging: Path, config: BuildConfig) -> tuple[dict, dict]:
    """Open each exported graph in ONNX Runtime, one session at a time, check it against the reference's
    outputs (when the build validates), and describe it: (bundle.json's graph records, validation)."""
    graphs: dict[str, dict] = {}
    validation: dict[str, dict] = {}
    for key, e in exported.items():
        path = staging / e["file"]
        runner = cpu_runner(e["kind"], path, e["plugin"])
        if config.validate:  # the quantized graph, when it is, against the torch fp32 reference
            validation[key] = check_outputs(e["kind"], e["samples"], e["expected"], runner, config.precision,
                                            e["weights"])
        graphs[key] = {"file": e["file"], **_describe(runner), "parameters": _count_parameters(path)}
        runner.close()
        del runner
    return graphs, validation


def build_and_load(checkpoint: str | Path, output: str | Path, spec: RerankSpec | None = None,
                   config: BuildConfig | None = None, cache_dir: str | Path | None = None,
                   log: Callable[[str], None] = print, **options):
    """Build the bundle of ``checkpoint`` into ``output`` (as :func:`build_bundle`: a bundle already there is
    replaced), then open it: returns :meth:`Reranker.from_pretrained(output, cache_dir, **options)
    <minireranker.runtime.reranker.Reranker.from_pretrained>`, ready for ``rank``."""
    from ..runtime.reranker import Reranker

    build_bundle(checkpoint, output, spec, config, log=log)
    return Reranker.from_pretrained(output, cache_dir, **options)


def _share_weights(staging: Path, graphs: dict[str, dict], log: Callable[[str], None]) -> dict:
    """Each graph folder's weights into shared files (export/shared_weights.py); records each graph's
    initializers in its bundle.json record. Returns bundle.json's "shared_weights": per folder, the files
    and the distinct and referenced bytes."""
    folders: dict[str, dict[str, Path]] = {}
    for key, record in graphs.items():
        folders.setdefault(str(Path(record["file"]).parent), {})[key] = staging / record["file"]
    out = {}
    for folder, files in folders.items():
        names = {key.split("/")[-1]: path for key, path in files.items()}
        report = share_weights(staging / folder, names, log)
        for key in files:
            graphs[key]["initializers"] = report["graphs"][key.split("/")[-1]]
        out[folder] = {"files": {f"{folder}/{name}": size for name, size in report["files"].items()},
                       "bytes": report["bytes"], "referenced_bytes": report["referenced_bytes"]}
    return out


def _write_arrays(pipeline: ReferencePipeline, staging: Path, precision: str) -> None:
    shutil.copyfile(pipeline.ckpt.tokenizer_path, staging / "tokenizer.json")
    _save_array(staging / "embed_tokens.npy", pipeline.model.embed, precision)
    _save_array(staging / "system_k.npy", pipeline.system_k, precision)
    _save_array(staging / "system_v.npy", pipeline.system_v, precision)
    _save_array(staging / "instruction_hidden.npy", pipeline.instruction_hidden, precision)
    _save_array(staging / "instruction_k.npy", pipeline.instruction_k, precision)
    _save_array(staging / "instruction_v.npy", pipeline.instruction_v, precision)
    if pipeline.guide is not None:
        guide = pipeline.guide
        shutil.copyfile(guide.ckpt.tokenizer_path, staging / "embedder" / "tokenizer.json")
        _save_array(staging / "embedder" / "embed_tokens.npy", guide.model.embed, precision)
        _save_array(staging / "embedder" / "system_k.npy", guide.system_k, precision)
        _save_array(staging / "embedder" / "system_v.npy", guide.system_v, precision)


def _bundle_meta(ckpt: Checkpoint, pipeline: ReferencePipeline, config: BuildConfig,
                 source: dict | None = None) -> dict:
    """bundle.json's records the reference knows (read before it is freed); :func:`_finish_meta` adds the
    graphs, the validation and the files."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        mr_version = version("minireranker")
    except PackageNotFoundError:
        mr_version = "unknown"
    spec = pipeline.spec.to_dict()
    # config.weights is left out on purpose: int8 weights change only the band and tail, never the K/V an
    # entry holds (doc_prefix and the guide stay float), so a float and an int8 bundle share K/V entries.
    settings = {"spec": spec, "precision": config.precision, "attention": config.attention,
                "export_version": EXPORT_VERSION}
    digest = hashlib.sha256(checkpoint_digest(ckpt).encode() + json.dumps(settings, sort_keys=True).encode())
    guide = None
    if pipeline.guide is not None:
        g = pipeline.guide
        digest.update(checkpoint_digest(g.ckpt).encode())
        guide = {"kind": "embedder", "layer": g.layer, "dir": "embedder", "source": str(g.ckpt.path),
                 "system_ids": g.system_ids, "image_pad_id": g.ckpt.config.image_token_id,
                 "model": _model_info(g.model, g.ckpt.config), "preprocess": g.ckpt.preprocess.to_dict(),
                 "graphs": None}
    elif pipeline.guide_layer is not None:
        guide = {"kind": "self", "layer": pipeline.guide_layer}
    t = pipeline.template
    meta = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": digest.hexdigest(),
        "minireranker_version": mr_version,
        "export_version": EXPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"checkpoint": str(ckpt.path), "model_type": ckpt.config.model_type, **(source or {})},
        "spec": spec,
        "template": {"format": t.format.name, "system_ids": t.system_ids, "instruction_ids": t.instruction_ids,
                     "score_ids": t.score_ids, "head": t.head.kind, "yes_id": t.yes_id, "no_id": t.no_id,
                     "image_pad_id": t.image_pad_id, "vision_start_id": t.vision_start_id,
                     "vision_end_id": t.vision_end_id},
        "model": _model_info(pipeline.model, ckpt.config),
        "preprocess": ckpt.preprocess.to_dict(),
        "precision": config.precision,
        "attention": config.attention,
        "weights": config.weights,
        "opset": config.opset,
        "graphs": None,
        "guide": guide,
        "validation": None,
    }
    return meta


def _finish_meta(meta: dict, graphs: dict, validation: dict, staging: Path) -> dict:
    """:func:`_bundle_meta`'s record completed: each graph's record, the validation, every file's size and
    checksum, and the record's own checksum."""
    meta["graphs"] = {k: v for k, v in graphs.items() if "/" not in k}
    if meta["guide"] is not None and meta["guide"]["kind"] == "embedder":
        meta["guide"]["graphs"] = {k.split("/")[1]: v for k, v in graphs.items() if k.startswith("embedder/")}
    meta["validation"] = validation
    files = [p for p in sorted(staging.rglob("*")) if p.is_file()]
    meta["files"] = {str(p.relative_to(staging)): p.stat().st_size for p in files}
    meta["sha256"] = {str(p.relative_to(staging)): sha256_file(p) for p in files}
    meta["meta_sha256"] = meta_checksum(meta)  # "validation" is left out: build_bundle adds to it afterwards
    return meta
