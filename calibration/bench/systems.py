"""The systems ``minireranker bench`` times, each inside a worker process of its own (see harness.py).

The parent (:class:`_Worker`) spawns ``python -c "from minireranker.calibration.bench.systems import
_worker_stdio; _worker_stdio()"``, sends ``(kind, setup)`` pickled on the worker's stdin, then ``run`` requests
(one timed query each) and ``finish`` (the worker's peak RSS). A fresh interpreter, so the worker's peak RSS
covers its own model, warm-up and timed queries only.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
import traceback

from ...export.arch import architecture_for
from ...runtime.spec import RerankSpec
from .presets import BenchError

STAGES = ("preprocess", "vision", "guide", "doc_prefix", "lm", "query_head", "kv_read", "band", "tail")


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
        import transformers
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from ...export.checkpoint import open_checkpoint

        ckpt = open_checkpoint(checkpoint, RerankSpec.exact())  # the checkpoint's strings, the exact layers
        self.torch, self.spec = torch, ckpt.spec
        model_class = getattr(transformers, architecture_for(ckpt.config.model_type).transformers_class)
        self.model = model_class.from_pretrained(checkpoint, dtype=torch.float32).eval()
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


class _DenseTransformersBatched(_DenseTransformers):
    """(a2): the same model and query-first sequence in padded batches, as a CrossEncoder-style user runs it:
    left padding with an attention mask, so every row's last real token is the batch's last column (transformers'
    rope index places each row's positions by the mask). Each query is timed at every size of ``batch_sizes``;
    the harness keeps the size with the best median (:func:`~minireranker.calibration.bench.harness.best_batch`)."""

    def __init__(self, checkpoint: str, pages: list[str], pairs: int, warmup: str,
                 batch_sizes: tuple[int, ...]) -> None:
        super().__init__(checkpoint, pages, pairs, warmup)
        self.batch_sizes, self._calls = tuple(batch_sizes), 0
        self.score_batch(warmup, pages[:2], {})  # the masked path, warmed

    def score_batch(self, query: str, pages: list[str], stages: dict) -> list[float]:
        """Scores of ``pages`` for ``query`` in one padded forward."""
        from PIL import Image

        torch, t0 = self.torch, time.perf_counter()
        images = []
        for page in pages:
            with Image.open(page) as image:
                images.append(image.convert("RGB"))
        feats = self.processor(images=images, return_tensors="pt")
        merge = self.model.config.vision_config.spatial_merge_size
        counts = (feats["image_grid_thw"].prod(-1) // merge**2).tolist()
        rows = [self.tokenizer(query_first_prompt(self.spec, query, int(n)), add_special_tokens=False)["input_ids"]
                for n in counts]
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [B, S], left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
        image_rows = ((ids == self.model.config.image_token_id) & mask.bool()).int()  # a pad id is never an image
        t1, vision_before = time.perf_counter(), self._vision_s
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, pixel_values=feats["pixel_values"],
                                image_grid_thw=feats["image_grid_thw"], mm_token_type_ids=image_rows,
                                logits_to_keep=1).logits[:, -1]  # [B, vocab]: each row's last real token
        t2, vision = time.perf_counter(), self._vision_s - vision_before
        for stage, seconds in (("preprocess", t1 - t0), ("vision", vision), ("lm", t2 - t1 - vision)):
            stages[stage] = stages.get(stage, 0.0) + seconds
        return (logits[:, self.yes] - logits[:, self.no]).tolist()

    def run(self, query: str) -> dict:
        """Every batch size on this query, in an order that rotates per call; the best of them as the totals."""
        k, self._calls = self._calls % len(self.batch_sizes), self._calls + 1
        by_size = {}
        for size in self.batch_sizes[k:] + self.batch_sizes[:k]:
            stages: dict[str, float] = {}
            t0 = time.perf_counter()
            scores = [s for i in range(0, len(self.pages), size)
                      for s in self.score_batch(query, self.pages[i:i + size], stages)]
            by_size[size] = {"total_s": time.perf_counter() - t0, "stages": stages, "scores": scores}
        best = min(by_size, key=lambda size: by_size[size]["total_s"])
        return {**by_size[best], "batch_size": best, "by_batch_size": by_size, "measured_pairs": len(self.pages),
                "query_head_runs": 0, "kv_bytes_read": 0}


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
                "query_tokens": len(r.query_ids(query)), "system_tokens": len(r.template.system_ids),
                "instruction_tokens": len(r.template.instruction_ids)}


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
                # what a rerank feeds the band and tail per candidate: the band K/V and the instruction's K/V
                kv = [entry.k, entry.v, getattr(entry, "instruction_k", None), getattr(entry, "instruction_v", None)]
                info["kv_bytes_per_doc"].append(sum(int(a.nbytes) for a in kv if a is not None))
                info["tokens_per_doc"].append(int(entry.k.shape[2]))
        self.info = info


_KINDS = {"dense_transformers": _DenseTransformers, "dense_transformers_batched": _DenseTransformersBatched,
          "onnx": _OnnxSystem, "index": _Indexer}


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
            [sys.executable, "-c", "from minireranker.calibration.bench.systems import _worker_stdio; _worker_stdio()"],
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
