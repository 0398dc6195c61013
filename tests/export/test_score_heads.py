"""Score heads and template formats end to end: reference == transformers (the oracle), the bundle == reference.

The checkpoint is the tiny Qwen3-VL one with a classifier head added (``score.0`` Linear -> ReLU ->
``score.2``, as jina-reranker-m0 has) and jina-reranker-m0's format selected in minireranker.json: it has
no system segment (S = 0) and appends a score token after the query, the two shapes the default format
never has. A second checkpoint keeps the LM head and selects MonoQwen2-VL's format (True/False answers).
Tolerance: |score difference| <= 1e-4, fp32 (the issue's acceptance); documents of different lengths are
scored together in one batch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from minireranker.export.oracle import TransformersOracle  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tokenizer_factory import build_tokenizer, write_tokenizer  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.errors import CheckpointError  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

TOLERANCE = 1e-4
APPROX = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5, query_position=64)


def add_classifier(directory, hidden: int, seed: int = 3) -> None:
    """score.0 [D, D] + bias, score.2 [1, D] + bias in their own safetensors file, as a ranking checkpoint has."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {"score.0.weight": torch.randn(hidden, hidden, generator=g) / hidden**0.5,
               "score.0.bias": 0.1 * torch.randn(hidden, generator=g),
               "score.2.weight": torch.randn(1, hidden, generator=g) / hidden**0.5,
               "score.2.bias": 0.1 * torch.randn(1, generator=g)}
    save_file(tensors, str(directory / "score.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def jina_checkpoint(tmp_path_factory, checkpoint_factory):
    path = tmp_path_factory.mktemp("jina-format") / "ckpt"
    shutil.copytree(checkpoint_factory("tiny"), path)
    add_classifier(path, json.loads((path / "config.json").read_text())["text_config"]["hidden_size"])
    (path / "minireranker.json").write_text(json.dumps({"template": "jina-reranker-m0"}))
    return path


@pytest.fixture(scope="module")
def mono_checkpoint(tmp_path_factory, checkpoint_factory):
    path = tmp_path_factory.mktemp("mono-format") / "ckpt"
    shutil.copytree(checkpoint_factory("tiny"), path)
    # the tokenizer must keep True and False whole (MonoQwen2-VL's answers): retrain with them at line start
    write_tokenizer(path, build_tokenizer(tuple(f"{a}\n{b}" for a, b in [("True", "False"), ("False", "True")] * 20)))
    (path / "minireranker.json").write_text(json.dumps({"template": "monoqwen2-vl"}))
    return path


def corpus(images) -> list[Document]:
    return [Document(image=images["astronaut_70x45"]), Document(text="A cat sleeps on a warm mat."),
            Document(image=images["chelsea_128x100"], text="a photo of a cat"), Document(text="7")]


def scores_vs_oracle(path, spec, images, query="is there a cat?"):
    pipeline = ReferencePipeline(path, spec, batch_size=3)
    oracle = TransformersOracle(path, pipeline.spec)
    docs = corpus(images)
    ours = pipeline.rerank(query, docs)
    if pipeline.spec.keep_ratio < 1.0:
        entries = [pipeline.index(d) for d in docs]
        theirs = np.array([oracle.score(query, d, e.kept_visual) for d, e in zip(docs, entries)])
    else:
        theirs = np.array([oracle.score(query, d) for d in docs])
    return pipeline, ours, theirs


@pytest.mark.parametrize("which", ["jina", "mono"])
@pytest.mark.parametrize("spec", [RerankSpec.exact(), APPROX], ids=["exact", "approx"])
def test_format_and_head_equal_transformers(which, spec, request, images):
    path = request.getfixturevalue(f"{which}_checkpoint")
    pipeline, ours, theirs = scores_vs_oracle(path, spec, images)
    assert pipeline.spec.template == {"jina": "jina-reranker-m0", "mono": "monoqwen2-vl"}[which]
    assert np.abs(ours - theirs).max() <= TOLERANCE, (ours, theirs)
    assert np.ptp(ours) > 1e-3  # the documents are told apart: the comparison can fail


def test_classifier_scores_are_not_the_yes_no_scores(jina_checkpoint, images):
    """The head is really read: the same body with the yes/no head scores differently."""
    docs = corpus(images)
    head = ReferencePipeline(jina_checkpoint, RerankSpec.exact()).rerank("a cat", docs)
    yes_no = ReferencePipeline(jina_checkpoint, RerankSpec(template="jina-reranker-m0", head="yes_no",
                                                           yes_token="yes", no_token="no")).rerank("a cat", docs)
    assert np.abs(head - yes_no).max() > 1e-2


def test_missing_classifier_weights_is_one_clear_error(checkpoint_factory, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("tiny"), path)
    (path / "minireranker.json").write_text(json.dumps({"template": "jina-reranker-m0"}))
    with pytest.raises(CheckpointError, match="score.0"):
        ReferencePipeline(path, RerankSpec.exact())


@pytest.mark.parametrize("spec", [RerankSpec.exact(), APPROX], ids=["exact", "approx"])
def test_bundle_carries_the_format_and_head(jina_checkpoint, spec, images, tmp_path):
    """build -> bundle.json records them -> the torch-free runtime scores as transformers does (1e-4)."""
    import math

    from minireranker.export.onnx_export import BuildConfig, build_bundle
    from minireranker.runtime.reranker import Reranker

    out = tmp_path / "bundle"
    build_bundle(jina_checkpoint, out, spec, BuildConfig(precision="fp32"), log=lambda message: None)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["template"]["format"] == "jina-reranker-m0" and meta["template"]["score_ids"] == [100]
    assert meta["template"]["system_ids"] == [] and meta["spec"]["head"]["kind"] == "classifier"
    docs = corpus(images)
    with Reranker(out, tmp_path / "cache") as reranker:
        result = reranker.rerank("is there a cat?", docs)
    _, _, theirs = scores_vs_oracle(jina_checkpoint, spec, images)
    got = np.array([r.score for r in sorted(result.results, key=lambda r: r.index)])
    assert np.abs(got - theirs).max() <= TOLERANCE, (got, theirs)
    for r in result.results:  # the probability carries jina's offset: sigmoid(score - 2.65)
        assert r.probability == pytest.approx(1 / (1 + math.exp(-(r.score - 2.65))), abs=1e-12)
