"""Reading a checkpoint directory (Hugging Face layout, a registered architecture) with clear errors.

A checkpoint directory holds ``config.json``, ``*.safetensors`` (one file, or shards with or without
``model.safetensors.index.json``), ``tokenizer.json``, ``preprocessor_config.json`` and optionally
``minireranker.json`` (the :class:`~minireranker.runtime.spec.RerankSpec`).

Tensor names are those of transformers 5 (the adapter's :meth:`~.arch.Architecture.weights` table); the
older layout of transformers < 4.52 is renamed on reading by :func:`current_weight_name`, the one place
that knows it. A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) is not a
checkpoint: :func:`checkpoint_for_build` merges it into its base first (see docs/checkpoints.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..runtime.errors import CheckpointError, SpecError
from ..runtime.preprocess import PreprocessConfig
from ..runtime.spec import RerankSpec
from .arch import architecture_for
from .arch.common import TEXT, VISUAL  # the current prefixes, shared by the Qwen2-VL, 2.5-VL and 3-VL adapters
from .config import ModelConfig, parse_model_config
from .heads_registry import default_template, replaces_lm_head

if TYPE_CHECKING:  # torch is only needed once weights are loaded
    import tokenizers
    import torch

SPEC_FILE = "minireranker.json"
# the spec fields that describe the model's format rather than a deployment's trade-offs
FORMAT_FIELDS = ("template", "system", "instruction", "yes_token", "no_token", "head", "trained")
INDEX_FILE = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# transformers < 4.52 kept the vision tower at the top level and the language model as ``model``
# (``model.embed_tokens``, ``model.layers.N``, ``model.norm``); 4.52 nested both under ``model``.
LEGACY_PREFIXES = (("visual.", VISUAL), ("model.", TEXT))
# what a merged adapter takes from its base besides the weights (open_checkpoint needs the first and last)
BASE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint directory; weights are read lazily by :func:`load_state_dict`."""

    path: Path
    config: ModelConfig
    spec: RerankSpec
    preprocess: PreprocessConfig
    weight_files: tuple[Path, ...]
    weight_map: dict[str, str] | None  # tensor name -> file name, from the index when there is one

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def load_tokenizer(self) -> "tokenizers.Tokenizer":
        import tokenizers

        try:
            return tokenizers.Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
            raise CheckpointError(f"{self.tokenizer_path}: not a readable tokenizer.json ({exc})") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; a Hugging Face checkpoint directory needs it: copy it from the model's files"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it from the model's files") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; restore it from the model's files")
    return data


def open_checkpoint(path: str | Path, spec: RerankSpec | None = None) -> Checkpoint:
    """Open and validate a checkpoint directory; ``spec`` overrides its ``minireranker.json``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist or is not a directory")
    raw_config = _read_json(path / "config.json")
    own = RerankSpec.from_file(path / SPEC_FILE) if (path / SPEC_FILE).is_file() else RerankSpec()
    config = parse_model_config(raw_config, head_declared=own.head is not None)
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path / 'tokenizer.json'} is missing; copy the model's tokenizer.json there")
    preprocess = PreprocessConfig.from_dict(_read_json(path / "preprocessor_config.json"))
    if preprocess.patch_size != config.vision.patch_size or preprocess.merge_size != config.vision.spatial_merge_size:
        raise CheckpointError(
            f"{path}: preprocessor_config.json (patch {preprocess.patch_size}, merge {preprocess.merge_size}) "
            f"disagrees with config.json (patch {config.vision.patch_size}, merge {config.vision.spatial_merge_size}); "
            "use the preprocessor_config.json that came with these weights"
        )
    # A spec given for this run (layers, pruning) keeps the checkpoint's format: the template, its strings
    # and the head are how the model was trained, so each one the given spec leaves unset comes from the
    # checkpoint's minireranker.json, and then from its architecture (a ranking class has its own).
    spec = own if spec is None else inherit_format(spec, own)
    try:
        spec = spec.resolve(config.text.num_layers, default_template(raw_config))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    if spec.head.kind == "yes_no" and replaces_lm_head(raw_config):
        raise CheckpointError(
            f"{path}: config.json's class {raw_config.get('architectures')} replaces the LM head, so the yes/no "
            "rows would score with weights it was never trained to use; remove \"head\" from minireranker.json "
            "(the class's own head is the default) or set it to the checkpoint's classifier")
    weight_map = None
    if (path / INDEX_FILE).is_file():
        index = _read_json(path / INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{path / INDEX_FILE} has no weight_map; restore it, or delete it to read every *.safetensors file"
            )
        files = tuple(path / name for name in sorted(set(weight_map.values())))
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards named in {INDEX_FILE} are missing: {missing}; copy them there")
    else:
        files = tuple(sorted(path.glob("*.safetensors")))
        if not files:
            raise CheckpointError(f"{path} holds no *.safetensors weights; copy the model's weight files there")
    return Checkpoint(path, config, spec, preprocess, files, weight_map)


def inherit_format(spec: RerankSpec, own: RerankSpec) -> RerankSpec:
    """``spec`` with each format field it leaves unset (None) taken from ``own`` (the checkpoint's spec); an exit
    head bound to a layer (``HeadSpec.layer``) only when ``spec`` exits there."""
    import dataclasses

    taken = {f: getattr(own, f) for f in FORMAT_FIELDS if getattr(spec, f) is None}
    if taken.get("head") is not None and not taken["head"].fits(spec.exit_layer):
        del taken["head"]  # the format's own head (the yes/no rows) is read instead
    return dataclasses.replace(spec, **taken)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint that the pipeline reads, with its shape (from the architecture's adapter)."""
    return {name: weight.shape for name, weight in architecture_for(config.model_type).weights(config).items()}


def current_weight_name(name: str) -> str:
    """The transformers 5 name of a tensor named ``name`` in a checkpoint of either layout.

    Checkpoints saved by transformers < 4.52 (Qwen2-VL, Qwen2.5-VL and their fine-tunes such as
    jina-reranker-m0) name the vision tower ``visual.*`` and the language model ``model.*``; the current
    layout nests them under the adapters' ``VISUAL`` and ``TEXT`` prefixes (:data:`LEGACY_PREFIXES`), the
    lm_head unchanged. This is the rule transformers 5 applies to such a Qwen2-VL checkpoint. A name already
    in the current layout, or in neither (a score head's ``score.0.weight``), is returned as is, so applying
    this twice changes nothing.
    """
    if name.startswith((VISUAL, TEXT)):
        return name
    for old, new in LEGACY_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _unreadable(file: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{file}: unreadable safetensors file ({exc}); re-download or re-save it")


def _tensor_sources(ckpt: Checkpoint) -> dict[str, tuple[Path, str]]:
    """Current name -> (weight file, name stored there), from the files' headers only.

    A tensor stored under its current name wins over one renamed onto it; otherwise the first file wins.
    """
    from safetensors import SafetensorError, safe_open

    sources: dict[str, tuple[Path, str]] = {}
    for file in ckpt.weight_files:
        try:
            with safe_open(str(file), framework="pt") as f:
                stored = list(f.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable(file, exc) from None
        for name in stored:
            current = current_weight_name(name)
            if current not in sources or (current == name and sources[current][1] != current):
                sources[current] = (file, name)
    return sources


def _read(sources: dict[str, tuple[Path, str]], names: list[str], dtype: "torch.dtype") -> dict[str, "torch.Tensor"]:
    """Read ``names`` (all in ``sources``) as ``dtype``, opening each file once."""
    from safetensors import SafetensorError, safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(sources[name][0], []).append(name)
    tensors = {}
    for file, wanted in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in wanted:
                    tensors[name] = f.get_tensor(sources[name][1]).to(dtype)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable(file, exc) from None
    return {name: tensors[name] for name in names}


def _missing_message(ckpt: Checkpoint, missing: list[str]) -> str:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"{ckpt.path}: tensor(s) missing from the weights: {missing[:5]}{more}"


def load_state_dict(ckpt: Checkpoint, dtype: "torch.dtype | None" = None,
                    config: ModelConfig | None = None) -> dict[str, "torch.Tensor"]:
    """Read every tensor :func:`expected_shapes` names, checking presence and shape.

    Either weight layout loads (:func:`current_weight_name`); tensors the table does not name are ignored
    (:func:`read_tensors` reads those). ``config``: read the tensors of this config instead of the
    checkpoint's (:meth:`~.config.ModelConfig.first_layers`: the layers up to a spec's exit only).
    """
    import torch

    wanted = expected_shapes(config or ckpt.config)
    sources = _tensor_sources(ckpt)
    missing = [n for n in wanted if n not in sources]
    if missing:
        raise CheckpointError(
            f"{_missing_message(ckpt, missing)}; the weight files are incomplete or of another architecture: "
            "re-download them"
        )
    tensors = _read(sources, list(wanted), dtype or torch.float32)
    for name, shape in wanted.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{ckpt.path}: tensor {name} has shape {tuple(tensors[name].shape)}, config.json implies {shape}; "
                "use the config.json that came with these weights"
            )
    if ckpt.config.tie_word_embeddings:
        for name, shared in architecture_for(ckpt.config.model_type).tied:
            tensors[name] = tensors[shared]
    return tensors


def read_tensors(ckpt: Checkpoint, names: Iterable[str]) -> dict[str, "torch.Tensor"]:
    """Tensors by current name (:func:`current_weight_name`), float32, including ones outside the adapter's
    table such as a score head's (``score.0.weight``); a name in no weight file is an error."""
    import torch

    names = list(dict.fromkeys(names))
    sources = _tensor_sources(ckpt)
    missing = [n for n in names if n not in sources]
    if missing:
        raise CheckpointError(
            f"{_missing_message(ckpt, missing)}; check the names, or use the checkpoint that has these tensors"
        )
    return _read(sources, names, torch.float32)


# -- PEFT adapter folders -------------------------------------------------------------------------
def is_adapter_dir(path: str | Path) -> bool:
    """True for a PEFT adapter folder (peft's ``save_pretrained`` layout: ``adapter_config.json`` beside
    ``adapter_model.safetensors``), which builds only once merged into its base (:func:`merge_adapter`)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str | Path, base: str | Path | None = None) -> Path:
    """The base checkpoint of an adapter: ``base`` when given, else the adapter config's
    ``base_model_name_or_path`` when that is an existing local directory (a Hub name is not fetched)."""
    adapter_dir = Path(adapter_dir)
    if base is not None:
        if not Path(base).is_dir():
            raise CheckpointError(f"base checkpoint directory {base} does not exist or is not a directory")
        return Path(base)
    named = _read_json(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path")
    if isinstance(named, str) and named and Path(named).expanduser().is_dir():
        return Path(named).expanduser()
    raise CheckpointError(
        f"{adapter_dir} is a PEFT adapter over {named!r}, which is not a local directory: pass the base "
        "checkpoint directory with --base DIR"
    )


def _import_peft():
    try:
        import peft
    except ImportError:
        raise CheckpointError(
            'merging a PEFT adapter needs peft, which is not installed: pip install "minireranker[export]"'
        ) from None
    return peft


def _stage_adapter(adapter_dir: Path, staged: Path) -> set[str]:
    """Copy the adapter into ``staged`` with its tensors renamed to the current layout; returns their names.

    peft 0.21 with transformers 5 does not rename an adapter trained on transformers < 4.52 (MonoQwen2-VL's
    ``base_model.model.model.layers.N...``): it warns and leaves those LoRA weights at their initial values,
    so the rename is done here, by the same rule as for checkpoints (:func:`current_weight_name`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; a PEFT adapter folder needs it: copy the adapter's files there")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(weights, exc) from None
    prefix = "base_model.model."  # peft's prefix of a tuner adapter's tensors (LoRA and kin)
    renamed = {(prefix + current_weight_name(n[len(prefix):]) if n.startswith(prefix) else n): t
               for n, t in tensors.items()}
    staged.mkdir(parents=True)
    shutil.copyfile(adapter_dir / ADAPTER_CONFIG, staged / ADAPTER_CONFIG)
    save_file(renamed, str(staged / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return set(renamed)


def _load_base(base_dir: Path, model_type: str):
    """transformers' model of the base (the class its adapter names), float32; refuses a partial load,
    which transformers allows with random weights."""
    import torch
    import transformers

    model_class = getattr(transformers, architecture_for(model_type).transformers_class)
    model, info = model_class.from_pretrained(base_dir, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{base_dir}: transformers found no weights for {missing[:3]} ({len(missing)} in all); "
                              "use a base checkpoint transformers loads completely")
    return model.eval()


def _merged_model(adapter_dir: Path, base_dir: Path, model_type: str, scratch: Path):
    """The base with the adapter merged in; every adapter tensor must land on a module of the base."""
    peft = _import_peft()
    from peft.utils import get_peft_model_state_dict

    stored = _stage_adapter(adapter_dir, scratch / "adapter")
    base = _load_base(base_dir, model_type)
    try:
        with warnings.catch_warnings():  # a missing key is an error here, checked below
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            model = peft.PeftModel.from_pretrained(base, str(scratch / "adapter"))
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:  # peft: config or shapes do not fit the base
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__  # torch's size report spans lines
        raise CheckpointError(f"{adapter_dir} does not fit the base {base_dir} ({reason}); pass the --base "
                              "the adapter was trained on") from None
    # peft only warns when a stored tensor lands nowhere (its LoRA weights then keep their initial values)
    expected = set(get_peft_model_state_dict(model))
    unmatched = sorted(stored - expected) or sorted(expected - stored)
    if unmatched:
        raise CheckpointError(f"{adapter_dir}: {len(unmatched)} adapter tensor(s) match no module of the base "
                              f"{base_dir}, e.g. {unmatched[:2]}; pass the --base the adapter was trained on")
    try:
        return model.merge_and_unload()
    except (AttributeError, ValueError, NotImplementedError) as exc:  # prompt tuning and kin have nothing to merge
        raise CheckpointError(f"{adapter_dir}: this {model.peft_config['default'].peft_type} adapter cannot be "
                              f"merged into its base ({exc}); only weight adapters such as LoRA can") from None


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a PEFT adapter folder into its base checkpoint and write the result to ``out_dir`` (new) as a
    checkpoint directory that :func:`open_checkpoint` opens; returns ``out_dir``.

    The base must load completely in transformers (the class its adapter names). The merged weights are
    float32: rounding W + BA back to a bf16 base's dtype would drop much of the LoRA delta, which is small
    against W. They are written by transformers 5's ``save_pretrained``, which keeps the layout it loaded:
    current names for a current base, transformers < 4.52's for a Qwen2-VL base saved that way (either
    loads, :func:`current_weight_name`). Besides ``config.json`` and the weights, ``out_dir`` gets the
    base's tokenizer and preprocessor files (:data:`BASE_FILES`) and the adapter's ``minireranker.json``,
    else the base's, when there is one. A failed merge leaves no ``out_dir``.
    """
    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise CheckpointError(f"{adapter_dir} is not a PEFT adapter folder (no {ADAPTER_CONFIG}); build it directly")
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; give merge_adapter a new directory")
    base = open_checkpoint(base_dir)  # its files are checked before seconds of loading
    with tempfile.TemporaryDirectory(prefix="minireranker-adapter-") as scratch:
        model = _merged_model(adapter_dir, base_dir, base.config.model_type, Path(scratch))
        try:
            model.save_pretrained(str(out_dir))
            for name in BASE_FILES:
                if (base_dir / name).is_file():
                    shutil.copyfile(base_dir / name, out_dir / name)
            spec = next((d / SPEC_FILE for d in (adapter_dir, base_dir) if (d / SPEC_FILE).is_file()), None)
            if spec is not None:
                shutil.copyfile(spec, out_dir / SPEC_FILE)
            open_checkpoint(out_dir)  # what save_pretrained wrote must read back as a checkpoint
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
    return out_dir


@contextlib.contextmanager
def checkpoint_for_build(path: str | Path, base: str | Path | None = None,
                         log: Callable[[str], None] = print) -> Iterator[Path]:
    """The checkpoint directory to build from: ``path`` itself, or, for a PEFT adapter folder, the adapter
    merged into its base (:func:`adapter_base`) in a temporary directory removed when the block exits.

    The merged checkpoint is float32, so the temporary directory (under ``$TMPDIR``) needs about 4 bytes
    per parameter of the base (some 9 GB for a 2B model) while the build runs.
    """
    path = Path(path)
    if not is_adapter_dir(path):
        if base is not None:
            raise CheckpointError(f"{path} is not a PEFT adapter folder (no {ADAPTER_CONFIG}), so a base does not "
                                  "apply: drop --base, or give the adapter folder")
        yield path
        return
    base_dir = adapter_base(path, base)
    with tempfile.TemporaryDirectory(prefix="minireranker-merged-") as tmp:
        log(f"merging the PEFT adapter {path} into {base_dir}")
        yield merge_adapter(path, base_dir, Path(tmp) / "checkpoint")


def checkpoint_digest(ckpt: Checkpoint) -> str:
    """sha256 over the checkpoint's config, tokenizer, preprocessor and every weight file's bytes."""
    h = hashlib.sha256()
    files = [ckpt.path / "config.json", ckpt.tokenizer_path, ckpt.path / "preprocessor_config.json",
             *ckpt.weight_files]
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()
