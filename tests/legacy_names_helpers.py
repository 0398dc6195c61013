"""Checkpoints rewritten with the weight names transformers < 4.52 saved (by hand: not the code under test)."""

from __future__ import annotations

import json
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"


def old_name(name: str) -> str:
    """transformers 5 name -> the name transformers < 4.52 saved."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def rewrite_with_old_names(directory: Path, extra: dict | None = None) -> None:
    """Every weight file (and the index, if any) of ``directory`` renamed in place; ``extra`` joins the first."""
    from safetensors import torch as safetensors_torch

    files = sorted(directory.glob("*.safetensors"))
    for i, file in enumerate(files):
        tensors = {old_name(n): t for n, t in safetensors_torch.load_file(str(file)).items()}
        if i == 0 and extra:
            tensors.update(extra)
        safetensors_torch.save_file(tensors, str(file), metadata={"format": "pt"})
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
        index["weight_map"] = {old_name(n): f for n, f in index["weight_map"].items()}
        if extra:
            index["weight_map"].update({n: files[0].name for n in extra})
        (directory / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
