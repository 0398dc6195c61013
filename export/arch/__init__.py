"""Architectures as registered adapters: config.json's ``model_type`` -> the one module that knows the model.

An adapter (one module per architecture: :mod:`.qwen3_vl`, :mod:`.qwen2_vl`, :mod:`.qwen2_5_vl`; what they
share is in :mod:`.common` and, for the torch side, :mod:`.decoder_torch`) is the single source of that model's

* config.json mapping, both ways: :meth:`Architecture.parse_config` (config.json -> :class:`ModelConfig`)
  and :meth:`Architecture.tiny_config` (a tiny preset -> the config.json transformers reads);
* Hugging Face weight names and shapes, in transformers' state-dict order (:meth:`Architecture.weights`),
  which tensors are tied (:attr:`Architecture.tied`), and the transformers class the oracle loads;
* torch modules (:meth:`Architecture.build_model`, imported lazily: this package needs no torch).

Everything else asks the registry: the checkpoint check (``checkpoint.expected_shapes``), the tiny-checkpoint
factory (``tiny.py``) and the training name map (``calibration/demo/trainable.py``) derive from the adapter.
Adding an architecture means one new module (and its torch modules) and one entry in ``_registered``
below, plus its tiny preset in ``tiny.PRESETS``; ``tests/export/test_adapters.py`` fails until that preset
builds and loads, or when a weight name is written outside ``export/arch/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...runtime.errors import CheckpointError

if TYPE_CHECKING:  # the adapters' modules are torch modules; the registry itself is torch-free
    from torch import Tensor

    from ..config import ModelConfig
    from ..modeling import TorchModel
    from ..tiny import TinyPreset


@dataclass(frozen=True)
class Weight:
    """One tensor of a checkpoint: its shape, and how a tiny checkpoint draws it at random.

    ``init`` is ``("matrix", fan_in)`` (noise / sqrt(fan_in)), ``("embed", std)``, ``("norm",)``
    (1 + noise) or ``("bias",)`` (small noise); only :mod:`..tiny` reads it.
    """

    shape: tuple[int, ...]
    init: tuple


class Architecture:
    """The adapter interface; one subclass per architecture overrides every method."""

    model_type: str = ""                   # config.json's "model_type"
    hf_architectures: tuple[str, ...] = ()  # accepted config.json "architectures" entries
    transformers_class: str = ""           # the transformers class the oracle loads the checkpoint with
    tiny_preset: str = ""                  # the name in tiny.PRESETS of this architecture's tiny fixture
    tied: tuple[tuple[str, str], ...] = ()  # with tie_word_embeddings: (tensor, the tensor it shares)
    # the image normalization of the architecture's published preprocessor_config.json (tiny checkpoints' too)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def parse_config(self, raw: dict[str, Any]) -> "ModelConfig":
        """config.json (already known to be this model_type) -> the architecture-neutral config."""
        raise NotImplementedError

    def weights(self, config: "ModelConfig") -> dict[str, Weight]:
        """Every tensor the pipeline reads, in transformers' state-dict order (tied ones left out)."""
        raise NotImplementedError

    def tiny_config(self, preset: "TinyPreset", token_ids: dict[str, int], vocab_size: int) -> dict[str, Any]:
        """The config.json of a tiny checkpoint; ``token_ids`` maps Qwen's special token strings to ids."""
        raise NotImplementedError

    def build_model(self, config: "ModelConfig", state_dict: dict[str, "Tensor"]) -> "TorchModel":
        """The export-friendly torch model (see :class:`..modeling.TorchModel`) over these weights."""
        raise NotImplementedError


def _registered() -> dict[str, Architecture]:
    # imported here, once Architecture and Weight exist: the adapters subclass and use them
    from .qwen2_5_vl import Qwen2_5_VL
    from .qwen2_vl import Qwen2VL
    from .qwen3_vl import Qwen3VL

    adapters = (Qwen3VL(), Qwen2VL(), Qwen2_5_VL())
    return {arch.model_type: arch for arch in adapters}


ARCHITECTURES: dict[str, Architecture] = _registered()  # config.json's model_type -> its adapter


def architecture_for(model_type: str) -> Architecture:
    """The adapter registered for ``model_type``."""
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"architecture {model_type!r} is not registered; registered: {sorted(ARCHITECTURES)} "
            "(export/arch/__init__.py lists them)"
        )
    return ARCHITECTURES[model_type]
