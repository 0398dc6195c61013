"""Qwen2-VL and Qwen2.5-VL bundles (exact spec, fp32, portable attention): bundle.json carries what the
runtime needs for their towers ("side" 0: no position table; "window_size" only with windows), the vision
graph takes ``window_id`` only where the tower has windows (and never the position-table inputs it does
not read), and the runtime's scores equal the torch reference (|difference| <= 1e-4)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from minireranker.export.validation import compare_runtime  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tiny import PRESETS  # noqa: E402
from minireranker.runtime.bundle import load_bundle  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.graph_io import VISION  # noqa: E402
from minireranker.runtime.reranker import Reranker  # noqa: E402

TOLERANCE = 1e-4


@pytest.mark.parametrize("preset", ["qwen2_vl_tiny", "qwen2_5_vl_tiny"])
def test_bundle_runs_the_tower_as_the_reference(bundle_factory, images, tmp_path, preset):
    bundle = load_bundle(bundle_factory(preset))  # the exact spec: the same build as tests/runtime's parity
    vision, window = bundle.model["vision"], PRESETS[preset].window_size
    assert vision["side"] == 0 and vision["patch_size"] == 14
    assert vision.get("window_size", 0) == window
    inputs = [i["name"] for i in bundle.graphs["vision"]["inputs"]]
    assert set(inputs) <= set(VISION.input_names) and {"pixel_values", "rot_cos", "rot_sin"} <= set(inputs)
    assert ("window_id" in inputs) == bool(window)  # pos_index/pos_weight: unread, the exporter may drop them
    docs = [Document(image=images["chelsea_128x100"], text="a cat", id="cat"), Document(text="seven", id="seven"),
            Document(image=images["camera_grey_90x120"], id="camera")]
    reference = ReferencePipeline(bundle.data["source"]["checkpoint"], bundle.spec)
    with Reranker(bundle, tmp_path / "cache") as runtime:
        report = compare_runtime(reference, runtime, docs, ["is there a cat?", "7"])
    assert report["max_abs_diff"] <= TOLERANCE, report
