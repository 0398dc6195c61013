"""``minireranker adapt``: self-distillation of a checkpoint into the vision-first format of a spec, with LoRA.

* **Teacher**: the checkpoint itself, dense, in the order it was trained in (``spec.trained``;
  :func:`.scoring.trained_dense_scores`): Qwen3-VL-Reranker's query-first order for a vision-first
  checkpoint. Its scores label every (query, candidate) pair of ``--data`` once (no labels needed);
  they are kept in ``OUT/teacher.json`` so that a resumed run does not recompute them.
* **Student**: the same weights plus LoRA adapters (``peft``, injected into our own torch model, which
  the tests keep equal to transformers': the student is exactly the reference it will be built into)
  on the attention and MLP projections of layers ``0..E``, run as the spec runs: the vision-first
  sequence, the band's mask (query and instruction rows see the document only in layers ``A..B``), the
  fixed query position, the pruned visual tokens (the ones the base model's guide keeps, computed once),
  the score read at layer ``E`` through the final norm and the yes/no rows.
* **Loss** (why): ``MSE(student, teacher)`` keeps each score's scale, which thresholds and probabilities
  read; ``KL(softmax(teacher) || softmax(student))`` over each query's candidates matches the ranking
  distribution, which nDCG reads, and does not mind a shift common to a query's candidates. With labels
  in the file, a listwise softmax loss on the grades (weight ``label_weight``) is added.
* **Output** ``OUT/``: ``model.safetensors`` (LoRA merged, transformers' names: a plain checkpoint every
  command reads) with the base's config, tokenizer and preprocessor files, ``minireranker.json`` (the
  spec, ``"trained"`` now its template), ``README.md`` (the card: data, settings, steps, time, the
  before/after table), ``adapt.json`` (the same as data), ``adapt-state.pt`` (the resumable state:
  step, LoRA weights, optimizer, the sampler's and torch's random states, the latter for ``lora_dropout``'s
  masks; written every ``save_every`` steps by rename, so a kill leaves the previous one whole),
  ``teacher.json``.

Supported: Qwen3-VL checkpoints with the yes/no head (the training forward is
:class:`~.demo.trainable.TrainableQwen3VL`). Trains on the CPU at demo scale, and on a CUDA device where torch
has one (``device``; the teacher's labels and the before/after tables are computed on the CPU reference).
``steps=0`` with ``exit_head`` fits the exit head alone on the base weights: ``calibrate --exit-head``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.spec import HeadSpec, RerankSpec, read_spec
from .data import LabelledSet, load_labelled_set
from .errors import CalibrationError, require_torch

STATE_FILE = "adapt-state.pt"
MIN_PASSES = 5  # fewer passes over the data than this: a note suggests more steps (docs/adapt.md, the sweep)
EXIT_HEAD = "minireranker.exit_head"  # the calibrated exit head's tensors: {EXIT_HEAD}.weight [1, D], .bias [1]
TEACHER_FILE = "teacher.json"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down")  # our DecoderLayer's Linears


@dataclass(frozen=True)
class AdaptConfig:
    """What ``minireranker adapt`` runs; every default is defined here once (docs/adapt.md: the sweep)."""

    checkpoint: str
    data: str
    out: str
    spec: str | None = None             # a minireranker.json file or inline JSON; None: the checkpoint's own
    steps: int = 400                    # the sweep on the demo data (docs/adapt.md): best on the calibration split
    lr: float = 2e-3
    rank: int = 16
    alpha: float = 32.0
    queries_per_step: int = 2
    save_every: int = 50
    label_weight: float = 2.0           # the sweep: 2 beat 0.5 on both held-out splits (docs/adapt.md)
    lora_dropout: float = 0.0           # dropout on the LoRA branch's input while training (none at inference)
    seed: int = 0
    exit_head: bool = False             # also fit a linear exit head to the teacher (EXIT_HEAD tensors)
    resume: bool = True
    threads: int | None = 1
    progress: bool = True
    device: str = "auto"                # "auto": CUDA where torch has it, else the CPU; or "cpu", "cuda", "cuda:1"

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "queries_per_step", "save_every"):
            value = getattr(self, name)
            floor = 0 if name == "steps" and self.exit_head else 1  # 0 steps + exit head: the head alone
            if not isinstance(value, int) or value < floor:
                raise CalibrationError(f"adapt: --{name.replace('_', '-')} must be a positive integer, got {value!r}"
                                       + (" (0 is allowed with --exit-head: fit the head alone)"
                                          if name == "steps" else ""))
        if not self.lr > 0 or not self.alpha > 0 or self.label_weight < 0:
            raise CalibrationError("adapt: --lr and --alpha must be positive and --label-weight non-negative")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise CalibrationError(f"adapt: --lora-dropout must be in [0, 1), got {self.lora_dropout!r}")


def passes(steps: int, queries_per_step: int, queries: int) -> float:
    """How many times ``steps`` of ``queries_per_step`` queries go over ``queries`` queries."""
    return steps * queries_per_step / queries


def passes_note(steps: int, queries_per_step: int, queries: int) -> str | None:
    """A note when ``steps`` pass over the data fewer than :data:`MIN_PASSES` times (None otherwise, and
    for the exit head alone): on the demo data 6-8 passes did best, 4 worse (docs/adapt.md)."""
    made = passes(steps, queries_per_step, queries)
    if not steps or made >= MIN_PASSES:
        return None
    return (f"note: {steps} steps of {queries_per_step} queries pass over the {queries} queries {made:.1f} "
            f"times; on the demo data 6-8 passes did best and 4 did worse (docs/adapt.md): try --steps "
            f"{math.ceil(8 * queries / queries_per_step)}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _teacher_scores(teacher, data: LabelledSet, out: Path, key: str, log: Callable[[str], None],
                    given: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Dense trained-format scores of every pair: ``given`` (the caller computed them: ``calibrate``), else
    from ``teacher.json`` when it was written for ``key``, else computed."""
    from .scoring import trained_dense_scores

    path = out / TEACHER_FILE
    if given is not None:
        shapes = [len(q.candidates) for q in data.queries]
        if [len(s) for s in given] != shapes:
            raise CalibrationError(f"adapt: the teacher scores given hold {[len(s) for s in given]} candidates per "
                                   f"query, {data.path} has {shapes}")
        scores = [np.asarray(s, dtype=np.float64) for s in given]
    elif path.is_file() and (saved := json.loads(path.read_text(encoding="utf-8"))).get("key") == key:
        return [np.asarray(s, dtype=np.float64) for s in saved["scores"]]
    else:
        log(f"labelling {data.num_pairs} pairs with the teacher (dense, {teacher.spec.trained})")
        scores = [trained_dense_scores(teacher, q.query, q.candidates) for q in data.queries]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "scores": [s.tolist() for s in scores]}), encoding="utf-8")
    os.replace(tmp, path)
    return scores


def _student_spec(loaded, config: AdaptConfig) -> RerankSpec:
    given = read_spec(config.spec) if config.spec is not None else None
    spec = loaded.spec if given is None else loaded.with_template(given.spec, set(given.given))
    spec = spec.resolve(loaded.num_layers)
    if spec.head.kind != "yes_no":
        raise CalibrationError("adapt trains the yes/no head's model; a classifier-head checkpoint is not supported")
    if spec.trained == spec.template and spec.is_exact(loaded.num_layers):
        raise CalibrationError("the checkpoint was trained in the format it runs, and the spec is exact: there is "
                               "nothing to adapt; give an approximate --spec (early exit, band, pruning)")
    return spec


def run_adapt(config: AdaptConfig, log: Callable[[str], None] = print,
              after_step: Callable[[int], None] | None = None, teacher: list[np.ndarray] | None = None) -> dict:
    """Train, merge and write ``config.out`` (module docstring); returns the report (``adapt.json``).

    ``teacher``: the dense trained-format scores of ``config.data``'s pairs, one array per query, when the
    caller has them (``calibrate --exit-head``): they are not computed again.

    ``after_step(step)`` is called after every step, once its state is saved when it is a save step
    (the tests stop a run there, as a kill would, and resume it).
    """
    require_torch("adapt")
    from .scoring import LoadedReranker, torch_threads

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_labelled_set(config.data, require_labels=False)
    if not data.queries:
        raise CalibrationError(f"{config.data}: no queries to adapt on")
    if (note := passes_note(config.steps, config.queries_per_step, len(data.queries))) is not None:
        log(note)
    with torch_threads(config.threads):
        loaded = LoadedReranker(config.checkpoint)
        if loaded.ckpt.config.model_type != "qwen3_vl":
            raise CalibrationError(f"adapt supports Qwen3-VL checkpoints; {config.checkpoint} is "
                                   f"{loaded.ckpt.config.model_type}")
        spec = _student_spec(loaded, config)
        device = _device(config.device)
        dense = loaded.pipeline(loaded.exact_spec())
        data_key = hashlib.sha256(Path(config.data).read_bytes()).hexdigest()
        key = _digest(str(Path(config.checkpoint).resolve()), data_key, json.dumps(dense.spec.to_dict()))
        targets = _teacher_scores(dense, data, out, key, log, teacher)
        student_base = loaded.pipeline(spec)
        before = _fidelity(student_base, data, targets)
        model, samples = _student(loaded, spec, student_base, data, config)
        model.to(device)
        if config.steps:
            losses, step0 = _train(model, samples, targets, data, spec, config, out, key, log, after_step)
        else:  # the exit head alone, on the base body (`calibrate --exit-head`)
            losses, step0 = [], 0
        merged = _merge(model)
        head = _fit_exit_head(merged, samples, targets, spec) if config.exit_head else None
        _write_checkpoint(loaded, merged, spec, out, head, trained_body=config.steps > 0)
        adapted = LoadedReranker(out)
        after = _fidelity(adapted.pipeline(adapted.spec), data, targets)
        if head is not None:  # the same body with the yes/no rows, for the table
            rows = dataclasses.replace(adapted.spec, head=HeadSpec("yes_no"))
            after_yes_no = _fidelity(adapted.pipeline(rows), data, targets)
    report = {
        "schema_version": 1, "checkpoint": config.checkpoint, "data": config.data, "pairs": data.num_pairs,
        "queries": len(data.queries), "spec": spec.to_dict(), "teacher": dense.spec.trained,
        "settings": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress",)},
        "resumed_from_step": step0, "loss_first": float(np.mean(losses[:5])) if losses else None,
        "loss_last": float(np.mean(losses[-5:])) if losses else None, "losses": losses,
        "wall_s": time.perf_counter() - started, "device": str(device), "before": before, "after": after,
        "after_yes_no": after_yes_no if config.exit_head else None, "exit_head": EXIT_HEAD if config.exit_head else None,
    }
    (out / "adapt.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_card(report), encoding="utf-8")
    log(f"adapted checkpoint written to {out}: spec fidelity to the teacher {before['mean_abs']:.4f} -> "
        f"{after['mean_abs']:.4f} mean |score difference|, Spearman {before['spearman']:.3f} -> "
        f"{after['spearman']:.3f}")
    return report


def _device(name: str):
    """The torch device of ``--device``: "auto" is CUDA where torch has it, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CalibrationError(f"adapt: --device {name!r} is not a torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CalibrationError(f"adapt: --device {name} asked for, but this torch has no CUDA device "
                               f"(torch {torch.__version__}); use --device cpu")
    return device


def _fidelity(pipeline, data: LabelledSet, targets: list[np.ndarray]) -> dict:
    """How the spec's scores follow the teacher's: mean |difference|, mean per-query Spearman, and with
    labels nDCG@10 of the spec and of the teacher."""
    from .metrics import ndcg_at, spearman

    diffs, squares, ranks, mine, theirs = [], [], [], [], []
    for q, target in zip(data.queries, targets):
        scores = pipeline.rerank(q.query, q.candidates)
        diffs.append(np.abs(scores - target).mean())
        squares.append(((scores - target) ** 2).sum())
        if len(scores) > 1:
            ranks.append(spearman(scores, target))
        if q.grades is not None and q.grades.max() > 0:
            mine.append(ndcg_at(scores, q.grades, 10))
            theirs.append(ndcg_at(target, q.grades, 10))
    out = {"mean_abs": float(np.mean(diffs)), "rmse": float(np.sqrt(np.sum(squares) / data.num_pairs)),
           "spearman": float(np.mean(ranks)) if ranks else float("nan")}
    if mine:
        out.update({"ndcg@10": float(np.mean(mine)), "teacher_ndcg@10": float(np.mean(theirs))})
    return out


def _student(loaded, spec: RerankSpec, base, data: LabelledSet, config: AdaptConfig):
    """The LoRA student and every pair's training sequence (vision-first, the spec's band, position and kept
    tokens: those the base model's guide keeps, as the runtime would at index time)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from ..export.checkpoint import load_state_dict
    from .demo.reranker_stage import View, reranker_sample
    from .demo.trainable import TrainableQwen3VL

    template = base.template
    model = TrainableQwen3VL(loaded.ckpt.config, load_state_dict(loaded.ckpt), (template.yes_id, template.no_id))
    model.requires_grad_(False)
    layers = "|".join(str(i) for i in range(spec.exit_layer + 1))
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout, bias="none",
                      target_modules=rf"layers\.({layers})\.({'|'.join(PROJECTIONS)})")
    torch.manual_seed(config.seed)
    inject_adapter_in_model(lora, model.core)
    pruned = spec.keep_ratio < 1.0
    # with a fixed query position the band's mask applies (A > 0 requires one); without, band = [0, E]: no cut
    band = spec.band if spec.query_position is not None else None
    samples, kept_of = [], {}  # kept tokens per document: indexed once however many queries it serves
    for q in data.queries:
        row = []
        for doc in q.candidates:
            image = None if doc.image is None else _load(doc)
            sample = reranker_sample(template, loaded.ckpt.preprocess, q.query, image, doc.text, View(band),
                                     spec.query_position or 0)
            if pruned and image is not None:
                key = doc.id if doc.id is not None else id(doc)
                if key not in kept_of:
                    kept_of[key] = base.index(doc).kept_visual
                kept = kept_of[key]
                sample.dropped = np.setdiff1d(np.arange(sample.num_visual), kept)
            row.append(sample)
        samples.append(row)
    return model, samples


def _load(doc):
    from ..runtime.preprocess import load_image

    return load_image(doc.image)


def _loss(model, rows, targets, grades, spec: RerankSpec, label_weight: float):
    """MSE to the teacher + listwise KL per query (+ listwise label loss): see the module docstring."""
    import torch
    import torch.nn.functional as F

    from .demo.trainable import collate

    flat = [s for row in rows for s in row]
    batch = collate(flat, spec.exit_layer + 1)
    hidden, _ = model(batch, layers=spec.exit_layer + 1)
    scores = model.score(hidden[spec.exit_layer])
    teacher = torch.tensor(np.concatenate(targets), dtype=scores.dtype, device=scores.device)
    loss = F.mse_loss(scores, teacher)
    start, kl, labels = 0, [], []
    for row, target, grade in zip(rows, targets, grades):
        part, t = scores[start: start + len(row)], teacher[start: start + len(row)]
        start += len(row)
        kl.append(F.kl_div(F.log_softmax(part, 0), F.log_softmax(t, 0), log_target=True, reduction="sum"))
        if grade is not None and grade.max() > 0:
            gains = torch.tensor(2.0 ** grade - 1, dtype=scores.dtype, device=scores.device)
            labels.append(-(F.log_softmax(part, 0) * gains).sum() / gains.sum())
    loss = loss + torch.stack(kl).mean()
    if labels and label_weight:
        loss = loss + label_weight * torch.stack(labels).mean()
    return loss


def _lora_parameters(model):
    return {n: p for n, p in model.core.named_parameters() if "lora_" in n}


def _train(model, samples, targets, data: LabelledSet, spec: RerankSpec, config: AdaptConfig, out: Path, key: str,
           log: Callable[[str], None], after_step: Callable[[int], None] | None) -> tuple[list[float], int]:
    """AdamW on the LoRA weights, cosine learning rate, gradients clipped to 1; resumable (module docstring)."""
    import torch

    from ..runtime.progress import progress_bar
    from .demo.train_config import lr_factor

    params = _lora_parameters(model)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    step0, losses = 0, []
    state_path = out / STATE_FILE
    if config.resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        if state.get("key") != key or state.get("settings") != _resumable(config):
            raise CalibrationError(f"{state_path} was written by another run (checkpoint, data or settings differ); "
                                   "delete it or pass --no-resume")
        for name, value in state["lora"].items():
            params[name].data.copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])  # --lora-dropout's masks continue as the unbroken run's
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step0, losses = state["step"], list(state["losses"])
        log(f"resuming from step {step0} ({state_path})")
    bar = progress_bar(total=config.steps - step0, desc="adapt", unit="step", disable=not config.progress)
    try:
        for step in range(step0, config.steps):
            picked = rng.choice(len(samples), size=min(config.queries_per_step, len(samples)), replace=False)
            loss = _loss(model, [samples[i] for i in picked], [targets[i] for i in picked],
                         [data.queries[i].grades for i in picked], spec, config.label_weight)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(step, config.steps, max(1, config.steps // 20))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            losses.append(float(loss.item()))
            bar.update(1)
            if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
                _save_state(state_path, {"key": key, "settings": _resumable(config), "step": step + 1,
                                         "lora": {n: p.detach().cpu().clone() for n, p in params.items()},
                                         "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                                         "torch_rng": torch.get_rng_state(),
                                         "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                                         else None, "losses": losses})
            if after_step is not None:
                after_step(step + 1)
    finally:
        bar.close()
    return losses, step0


def _resumable(config: AdaptConfig) -> dict:
    """The settings a resumed run must share with the one that saved the state."""
    return {k: getattr(config, k) for k in ("spec", "steps", "lr", "rank", "alpha", "queries_per_step", "seed",
                                            "label_weight", "lora_dropout")}


def _save_state(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the previous state whole


def _merge(model):
    """The LoRA weights merged into their Linears (W + alpha/r * B A), the adapters removed: peft's merge."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.core.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.core.get_submodule(parent_name) if parent_name else model.core, child,
                    module.get_base_layer())
    return model


def _fit_exit_head(model, samples, targets, spec: RerankSpec) -> dict:
    """Least squares (ridge 1e-4 of the mean feature energy) of the teacher's scores on layer E's normed
    hidden state, run as the spec runs: the calibrated exit head's weight [1, D] and bias [1]."""
    import torch

    from .demo.trainable import collate

    features = []
    with torch.no_grad():
        for row in samples:
            hidden, _ = model(collate(row, spec.exit_layer + 1), layers=spec.exit_layer + 1)
            features.append(model.core.norm(hidden[spec.exit_layer]).double().cpu())
    x, t = torch.cat(features), torch.tensor(np.concatenate(targets), dtype=torch.float64)
    xm, tm = x.mean(0), t.mean()
    xc = x - xm
    gram = xc.T @ xc
    ridge = 1e-4 * torch.trace(gram) / gram.shape[0]
    w = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ (t - tm))
    return {f"{EXIT_HEAD}.weight": w[None].float(), f"{EXIT_HEAD}.bias": (tm - xm @ w)[None].float()}


def _write_checkpoint(loaded, model, spec: RerankSpec, out: Path, head: dict | None = None,
                      trained_body: bool = True) -> None:
    """A plain Hugging Face checkpoint: merged weights under transformers' names (and the exit head's), the
    base's other files. ``trained_body``: the body was trained in the spec's format (its ``trained`` becomes the
    template); without, only a head was fitted and the body keeps the order it was trained in."""
    from safetensors.torch import save_file

    state = model.transformers_state_dict()
    if head is not None:
        state.update(head)
        spec = dataclasses.replace(spec, head=HeadSpec("linear", EXIT_HEAD, layer=spec.exit_layer))
    if loaded.ckpt.config.tie_word_embeddings:  # a tied tensor is not stored twice (the adapter names it)
        from ..export.arch import architecture_for

        for name, _ in architecture_for(loaded.ckpt.config.model_type).tied:
            state.pop(name, None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "preprocessor_config.json"):
        if (loaded.ckpt.path / name).is_file():
            shutil.copyfile(loaded.ckpt.path / name, out / name)
    adapted = dataclasses.replace(spec, trained=spec.template) if trained_body else spec  # it now runs as trained
    adapted.save(out / "minireranker.json")


def _card(report: dict) -> str:
    b, a, s = report["before"], report["after"], report["settings"]
    rows = [("mean abs score difference to the teacher", "mean_abs", ".4f"),
            ("mean per-query Spearman with the teacher", "spearman", ".3f")]
    if "ndcg@10" in a:
        rows.append(("nDCG@10 (the teacher's: %.3f)" % a["teacher_ndcg@10"], "ndcg@10", ".3f"))
    y = report.get("after_yes_no")
    header = "| on the adaptation data | before | after |" + (" after, yes/no rows |" if y else "")
    rule = "|---|---:|---:|" + ("---:|" if y else "")
    table = "\n".join(f"| {label} | {b[k]:{fmt}} | {a[k]:{fmt}} |" + (f" {y[k]:{fmt}} |" if y else "")
                      for label, k, fmt in rows)
    head = (f"- Exit head: a linear head on layer {report['spec']['exit_layer']}'s normed hidden state fitted to the "
            f"teacher's scores (tensors `{report['exit_head']}.weight`/`.bias`), used by minireranker.json; the "
            "last column scores the same body with the yes/no rows.\n") if y else ""
    student = (f"Student: the same weights plus LoRA (rank {s['rank']}, alpha {s['alpha']}) on the attention and MLP "
               f"projections of layers 0..{report['spec']['exit_layer']}, merged into the weights here."
               if s["steps"] else "Body: the base weights, unchanged.")
    if s["steps"]:
        made = passes(s["steps"], s["queries_per_step"], report["queries"])
        training = (f"Training: {s['steps']} steps of {s['queries_per_step']} queries ({made:.1f} passes over the "
                    f"data), learning rate {s['lr']}, label weight {s['label_weight']:g}, LoRA dropout "
                    f"{s['lora_dropout']:g}, seed {s['seed']}; loss {report['loss_first']:.4f} (first 5 steps) -> "
                    f"{report['loss_last']:.4f} (last 5). The defaults, and the sweep on the bundled demo data they "
                    "came from, are in docs/adapt.md")
    else:
        training = ("Training: none; the exit head alone was fitted on the base weights (`--steps 0 --exit-head`), "
                    "and the body keeps its trained order")
    return f"""# Adapted checkpoint (minireranker adapt)

Self-distillation of `{report['checkpoint']}` into its spec's vision-first format (calibration/adapt.py).

- Teacher: the checkpoint, dense, {report['teacher']} order. {student}
- Spec: exit {report['spec']['exit_layer']}, band {report['spec']['band']}, keep {report['spec']['keep_ratio']},
  query position {report['spec']['query_position']}.
- Data: `{report['data']}`, {report['queries']} queries, {report['pairs']} pairs (the teacher labels them).
- {training}; {report['wall_s']:.0f} s.
{head}
{header}
{rule}
{table}
"""
