"""Reading a checkpoint directory (Hugging Face layout, a registered architecture) with clear errors.

A checkpoint directory holds ``config.json``, ``*.safetensors`` (one file, or shards with or without
``model.safetensors.index.json``), ``tokenizer.json``, ``preprocessor_config.json`` and optionally
``minireranker.json`` (the :class:`~minireranker.runtime.spec.RerankSpec`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.errors import CheckpointError, SpecError
from ..runtime.preprocess import PreprocessConfig
from ..runtime.spec import RerankSpec
from .arch import architecture_for
from .config import ModelConfig, parse_model_config

if TYPE_CHECKING:  # torch is only needed once weights are loaded
    import tokenizers
    import torch

SPEC_FILE = "minireranker.json"
INDEX_FILE = "model.safetensors.index.json"


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
    config = parse_model_config(_read_json(path / "config.json"))
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path / 'tokenizer.json'} is missing; copy the model's tokenizer.json there")
    preprocess = PreprocessConfig.from_dict(_read_json(path / "preprocessor_config.json"))
    if preprocess.patch_size != config.vision.patch_size or preprocess.merge_size != config.vision.spatial_merge_size:
        raise CheckpointError(
            f"{path}: preprocessor_config.json (patch {preprocess.patch_size}, merge {preprocess.merge_size}) "
            f"disagrees with config.json (patch {config.vision.patch_size}, merge {config.vision.spatial_merge_size}); "
            "use the preprocessor_config.json that came with these weights"
        )
    if spec is None:
        spec = RerankSpec.from_file(path / SPEC_FILE) if (path / SPEC_FILE).is_file() else RerankSpec()
    try:
        spec = spec.resolve(config.text.num_layers)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
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


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint that the pipeline reads, with its shape (from the architecture's adapter)."""
    return {name: weight.shape for name, weight in architecture_for(config.model_type).weights(config).items()}


def load_state_dict(ckpt: Checkpoint, dtype: "torch.dtype | None" = None) -> dict[str, "torch.Tensor"]:
    """Read every tensor :func:`expected_shapes` names, checking presence and shape."""
    import torch
    from safetensors import SafetensorError, safe_open

    dtype = dtype or torch.float32
    wanted = expected_shapes(ckpt.config)
    tensors: dict[str, torch.Tensor] = {}
    for file in ckpt.weight_files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name in wanted and name not in tensors:
                        tensors[name] = f.get_tensor(name).to(dtype)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{file}: unreadable safetensors file ({exc}); re-download or re-save it") from None
    missing = [n for n in wanted if n not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{ckpt.path}: tensor(s) missing from the weights: {missing[:5]}{more}; the weight files are "
            "incomplete or of another architecture: re-download them"
        )
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
