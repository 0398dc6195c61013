"""Score heads: what turns the exit layer's hidden state into one score per candidate.

A head is a torch module over the hidden state of the last token at layer ``E`` (before the final
norm): it applies the model's final norm, then

* ``yes_no``: the LM head's rows of the two answer tokens, score = logit(yes) - logit(no);
* ``classifier``: Linear -> activation -> Linear (jina-reranker-m0's ``score`` MLP), its weights read
  from the checkpoint under their own names (:class:`~minireranker.runtime.spec.HeadSpec`).

The tail graph holds the head, so every engine carries it, and the reference and the calibration score
through the same module. Early exit applies the head at layer ``E`` exactly as at the last layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.errors import CheckpointError
from ..runtime.spec import HeadSpec

if TYPE_CHECKING:
    from ..runtime.template import VisionFirstTemplate
    from .checkpoint import Checkpoint
    from .modeling import TorchModel

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu, "identity": lambda x: x}


class YesNoHead(nn.Module):
    """logit(yes) - logit(no) through the final norm: the LM head's two rows [2, D], nothing else."""

    def __init__(self, norm: nn.Module, rows: Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.rows = nn.Parameter(rows.detach().clone(), requires_grad=False)

    def forward(self, hidden: Tensor) -> Tensor:
        # hidden: [B, D] at the exit layer -> [B]
        logits = self.norm(hidden) @ self.rows.T.to(hidden.dtype)
        return logits[:, 0] - logits[:, 1]


class ClassifierHead(nn.Module):
    """``linear2(act(linear1(norm(h))))[:, 0]``: a score MLP on the last token's normed hidden state."""

    def __init__(self, norm: nn.Module, weights: dict[str, Tensor], spec: HeadSpec) -> None:
        super().__init__()
        self.norm = norm
        self.act = _ACTIVATIONS[spec.activation]
        self.linear1 = _linear(weights, spec.linear1)
        self.linear2 = _linear(weights, spec.linear2) if spec.kind == "classifier" else None

    def forward(self, hidden: Tensor) -> Tensor:
        x = self.linear1(self.norm(hidden))
        if self.linear2 is None:  # the "linear" kind: one Linear, no activation
            return x[:, 0]
        return self.linear2(self.act(x))[:, 0]


def _linear(weights: dict[str, Tensor], prefix: str) -> nn.Linear:
    w, b = weights[prefix + ".weight"], weights.get(prefix + ".bias")
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    layer.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
    if b is not None:
        layer.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
    return layer


def classifier_tensor_names(spec: HeadSpec) -> list[str]:
    """The checkpoint tensors a classifier or linear head reads (biases included: jina's Linears have them)."""
    prefixes = (spec.linear1, spec.linear2) if spec.kind == "classifier" else (spec.linear1,)
    return [f"{p}.{kind}" for p in prefixes for kind in ("weight", "bias")]


def build_head(model: "TorchModel", template: "VisionFirstTemplate", ckpt: "Checkpoint") -> nn.Module:
    """The head the template's spec names, over ``model``'s final norm (and LM head rows or the checkpoint's
    classifier weights). A head that cannot be read is one CheckpointError naming what to set."""
    spec = template.head
    if spec.kind == "yes_no":  # a class that replaced its LM head was refused when the checkpoint was opened
        return YesNoHead(model.norm, model.lm_head[[template.yes_id, template.no_id]])
    from .checkpoint import read_tensors

    weights = read_tensors(ckpt, classifier_tensor_names(spec))
    d = model.config.text.hidden_size
    w1 = weights[spec.linear1 + ".weight"]
    if spec.kind == "linear":
        if tuple(w1.shape) != (1, d):
            raise CheckpointError(f"{ckpt.path}: linear head {spec.linear1} has shape {tuple(w1.shape)}, need "
                                  f"(1, {d}); check 'head' in minireranker.json")
        return ClassifierHead(model.norm, weights, spec)
    w2 = weights[spec.linear2 + ".weight"]
    if w1.dim() != 2 or w1.shape[1] != d or w2.dim() != 2 or w2.shape[1] != w1.shape[0] or w2.shape[0] != 1:
        raise CheckpointError(
            f"{ckpt.path}: classifier head {spec.linear1} {tuple(w1.shape)} -> {spec.linear2} {tuple(w2.shape)} "
            f"does not map the hidden size {d} to a score; check 'head' in minireranker.json")
    return ClassifierHead(model.norm, weights, spec)
