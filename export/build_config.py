"""How ``minireranker build`` builds engines: :class:`BuildConfig`, torch-free.

It lives apart from :mod:`.onnx_export` (which imports torch) so that the command line can read its
defaults for ``--help`` on an install without the ``export`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import MiniRerankerError

PRECISIONS = ("fp32", "fp16")          # fp32 for CPU targets, fp16 for GPUs
# MatMul/Softmax at opset 17; ONNX Attention at opset 23; or the band's attention as one custom-domain node per
# layer (minireranker.BandAttention, a TensorRT plugin: engines/band_plugin.py), every other graph portable
ATTENTIONS = ("portable", "fused", "plugin")
WEIGHTS = ("float", "int8")            # the band's and tail's weights: as the precision, or int8 (CPU)


class BuildError(MiniRerankerError):
    """The export failed, or an exported graph disagrees with the torch reference."""


@dataclass(frozen=True)
class BuildConfig:
    """How to build engines. ``precision``: fp32 (CPU targets) or fp16 (GPUs). ``weights``: "int8" stores
    the band's and tail's weight matrices as int8 (ONNX Runtime dynamic quantization, :mod:`.quantize`), an
    option for fp32 bundles run on CPUs; every other graph, the embeddings and the K/V stay float."""

    precision: str = "fp32"
    attention: str = "portable"
    weights: str = "float"
    validate: bool = True
    external_data_threshold: int = 2_000_000_000  # weights past this many bytes: external data (vision: always)
    # each distinct tensor once, in onnx/weights.bin (+ weights.query.bin), for every graph (export/shared_weights.py);
    # False: each graph keeps its own weights (inline, or <graph>.onnx.data above the threshold or for vision)
    share_weights: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BuildError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.attention not in ATTENTIONS:
            raise BuildError(f"attention must be one of {list(ATTENTIONS)}, got {self.attention!r}")
        if self.weights not in WEIGHTS:
            raise BuildError(f"weights must be one of {sorted(WEIGHTS)}, got {self.weights!r}")
        if self.weights == "int8" and self.precision != "fp32":
            raise BuildError(f"int8 weights are a CPU option for fp32 bundles, got precision {self.precision!r}; "
                             "build with precision fp32 and weights int8, or keep float weights for fp16")

    @property
    def opset(self) -> int:
        return 23 if self.attention == "fused" else 17  # plugin: the portable opset, plus its own domain

    @classmethod
    def tiny(cls) -> "BuildConfig":
        return cls()
