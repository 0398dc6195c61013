"""A tiny labelled set of real photographs (scikit-image) in the JSONL format of docs/eval.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

PHOTOS = {"astronaut": (70, 45), "chelsea": (128, 100), "coffee": (33, 100), "camera": (90, 120),
          "rocket": (128, 128), "horse": (64, 64)}
QUERIES = [
    ("q-cat", "a cat", {"chelsea": 2, "horse": 1}),
    ("q-cup", "a cup of coffee", {"coffee": 2}),
    ("q-space", "a rocket or an astronaut", {"rocket": 2, "astronaut": 2, "t-space": 1}),
    ("q-photo", "a man with a camera", {"camera": 1}),
    ("q-none", "a submarine", {}),   # no relevant candidate: reported and excluded
]
TEXTS = {"t-space": "a launch pad under a clear sky", "t-tea": "a pot of green tea"}


def write_images(folder: Path) -> None:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name, size in PHOTOS.items():
        array = getattr(data, name)()
        if array.dtype != "uint8":  # horse is boolean
            array = (array.astype("uint8") * 255)
        Image.fromarray(array).resize(size).save(folder / f"{name}.png")


def candidates(grades: dict[str, int], labelled: bool = True) -> list[dict]:
    out = []
    for name in PHOTOS:
        c = {"id": name, "image": f"images/{name}.png", "text": "a photograph" if name == "coffee" else None}
        out.append(c)
    out += [{"id": key, "image": None, "text": text} for key, text in TEXTS.items()]
    if labelled:
        for c in out:
            c["relevance"] = grades.get(c["id"], 0)
    return out


def write_set(path: Path, labelled: bool = True) -> Path:
    write_images(path.parent / "images")
    lines = [json.dumps({"qid": qid, "query": q, "candidates": candidates(g, labelled)}) for qid, q, g in QUERIES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def labelled_set(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("eval-set") / "heldout.jsonl")


@pytest.fixture(scope="session")
def unlabelled_set(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("calib-set") / "calib.jsonl", labelled=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """These tests run tiny models as many small matmuls: one thread, as eval and calibrate use by default
    (restored after each module, so tests elsewhere keep torch's setting). The calibration modules ask for it
    with ``pytestmark``; the demo and bench tests below this folder keep torch's own setting."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
