"""The demo models' training: its forward is the pipeline's arithmetic, it trains, and what ships loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn", reason="the demo data is generated from sklearn's digits (the dev extra)")

from minireranker.calibration.demo import cards, checkpoints, data, embedder_stage, evaluation, images  # noqa: E402
from minireranker.calibration.demo import pools, reranker_stage, train_config, trainable, vision_stage  # noqa: E402
from minireranker.calibration.demo import train as td  # noqa: E402
from minireranker.export.checkpoint import open_checkpoint  # noqa: E402
from minireranker.export.pruning import EmbedderGuide  # noqa: E402
from minireranker.export.reference import ReferencePipeline  # noqa: E402
from minireranker.export.tiny import PRESETS, build_preprocessor_config, padded_vocab_size  # noqa: E402
from minireranker.runtime.documents import Document  # noqa: E402
from minireranker.runtime.preprocess import PreprocessConfig, preprocess_image  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402
from minireranker.runtime.template import VisionFirstTemplate  # noqa: E402

ASSETS = Path(td.__file__).parent / "assets"
ATOL = 1e-4  # fp32, SDPA (training) against MatMul/Softmax (reference)


@pytest.fixture(scope="module")
def tokenizer():
    return checkpoints.demo_tokenizer()


@pytest.fixture(scope="module")
def digits():
    return images.split_digits(0)


@pytest.fixture(scope="module")
def tiny_reranker(tokenizer, tmp_path_factory):
    """An untrained 4-layer reranker (tiny preset) saved in HF layout, and the trainable model itself."""
    model = checkpoints.new_model(PRESETS["tiny"], tokenizer, seed=3, answers=True)
    path = checkpoints.save_checkpoint(model, PRESETS["tiny"], tokenizer, tmp_path_factory.mktemp("reranker"))
    return model.eval(), path


def _docs(digits) -> list[tuple]:
    composite = data.DocSpec("c", (3, 5), tuple(int(s) for s in digits.of("heldout")[:2]), (32, 0, 0))
    return [(images.render(composite, digits), None), (None, "The handwritten digit seven."),
            (images.render(pools.photo_documents("p")[1], digits), None)]


def test_every_weight_trains_and_maps_back_to_transformers_names(tokenizer):
    model = checkpoints.new_model(PRESETS["tiny"], tokenizer, seed=3, answers=True)
    assert all(p.requires_grad for p in model.parameters())
    vocab = padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True))
    initial = checkpoints._initial_state(PRESETS["tiny"], 3, vocab)
    mapped = model.transformers_state_dict()
    assert set(mapped) == set(initial)
    assert all(torch.equal(mapped[n], initial[n]) for n in initial)


def test_training_forward_scores_like_reference_pipeline(tiny_reranker, tokenizer, digits):
    """Dense and approximate (band, fixed P, pruned) samples in one padded batch, against the pipeline."""
    model, path = tiny_reranker
    spec = RerankSpec(exit_layer=2, band=(1, 1), keep_ratio=0.5, query_position=64)
    dense, approx = ReferencePipeline(path, RerankSpec.exact()), ReferencePipeline(path, spec)
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    preprocess = open_checkpoint(path).preprocess
    query = "a three to the left of a five"
    samples, expected = [], []
    for image, text in _docs(digits):
        doc = Document(image=image, text=text)
        samples.append(reranker_stage.reranker_sample(template, preprocess, query, image, text))
        expected.append((-1, dense.score(query, [dense.index(doc)])[0]))
        sample = reranker_stage.reranker_sample(template, preprocess, query, image, text, reranker_stage.View(band=(1, 1)), 64)
        kept = None
        if image is not None:
            kept = np.arange(0, sample.num_visual, 2)  # every other visual token
            sample.dropped = np.setdiff1d(np.arange(sample.num_visual), kept)
        samples.append(sample)
        expected.append((2, approx.score(query, [approx.index(doc, kept_visual=kept)])[0]))
    with torch.no_grad():
        hidden = model(trainable.collate(samples, 4))[0]
        got = [float(model.score(hidden[layer][i: i + 1])[0]) for i, (layer, _) in enumerate(expected)]
    np.testing.assert_allclose(got, [e for _, e in expected], atol=ATOL, rtol=0)


def test_query_first_training_forward_scores_like_the_trained_order_reference(tiny_reranker, tokenizer, digits):
    """The query-first demo reranker trains on exactly what trained_dense_scores scores (Qwen3-VL-Reranker's
    order): image, text and photo documents in one padded batch."""
    from minireranker.calibration.scoring import LoadedReranker, trained_dense_scores

    model, path = tiny_reranker
    loaded = LoadedReranker(path)
    teacher = loaded.pipeline(loaded.exact_spec())
    assert teacher.spec.trained == "query-first"  # a checkpoint without minireranker.json: Qwen's own order
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    query = "a three to the left of a five"
    docs = _docs(digits)
    samples = [reranker_stage.query_first_sample(template, loaded.ckpt.preprocess, query, image, text)
               for image, text in docs]
    expected = trained_dense_scores(teacher, query, [Document(image=i, text=t, id=str(n))
                                                     for n, (i, t) in enumerate(docs)])
    with torch.no_grad():
        hidden = model(trainable.collate(samples, 4))[0]
        got = model.score(hidden[3]).numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_embedder_sequences_match_the_pruning_guide_and_batch_exactly(tokenizer, digits, tmp_path, tiny_reranker):
    model = checkpoints.new_model(PRESETS["tiny"], tokenizer, seed=4, answers=False)
    path = checkpoints.save_checkpoint(model, PRESETS["tiny"], tokenizer, tmp_path / "embedder")
    guide = EmbedderGuide(str(path), open_checkpoint(tiny_reranker[1]), None)
    embedder = embedder_stage.DemoEmbedder(path)
    image, _ = _docs(digits)[0]
    sample = embedder.template.document(image, "caption")
    grid = (sample.grid[1] // 2, sample.grid[2] // 2)
    assert sample.ids == guide.system_ids + guide.document(grid, "caption").ids
    documents = [Document(image=i, text=t) for i, t in _docs(digits)]
    together = embedder.embed_documents(documents)
    alone = np.concatenate([embedder.embed_documents([d]) for d in documents])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_grounding_marks_each_named_digit_and_where_the_image_shows_it(tokenizer, digits):
    """Query tokens "3" and " five" point at the visual tokens of their cells; banded views get no target."""
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    preprocess = PreprocessConfig.from_dict(build_preprocessor_config(train_config.RERANKER_PRESET))
    doc = data.DocSpec("c", (3, 5), tuple(int(s) for s in digits.of("heldout")[:2]), (32, 0, 0))
    image = images.render(doc, digits)
    labels = vision_stage.token_labels(doc, preprocess_image(image, preprocess)[1])
    query = "3 and a five"
    sample = reranker_stage.reranker_sample(template, preprocess, query, image, None, ground=doc)
    named = [(tokenizer.id_to_token(sample.ids[row]), sorted(set(labels[cols - sample.image_start])))
             for row, cols in sample.ground]
    assert named == [("3", [3]), ("\u0120five", [5])]
    for _, cols in sample.ground:
        assert all(sample.ids[c] == template.image_pad_id for c in cols) and len(cols) == 4  # 2x2 tokens a cell
    banded = reranker_stage.reranker_sample(template, preprocess, query, image, None, reranker_stage.View(band=(1, 1)), 128,
                                ground=doc)
    assert banded.ground == []


def test_grounding_loss_trains_the_attention_of_its_layer(tokenizer, digits, monkeypatch):
    cfg = train_config.TrainConfig.smoke()
    model = checkpoints.new_model(PRESETS["tiny"], tokenizer, seed=5, answers=True)
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    preprocess = PreprocessConfig.from_dict(build_preprocessor_config(PRESETS["tiny"]))
    doc = data.DocSpec("c", (3, 5), tuple(int(s) for s in digits.of("heldout")[:2]), (0, 0, 0))
    image = images.render(doc, digits)
    samples = [reranker_stage.reranker_sample(template, preprocess, q, image, None, ground=doc)
               for q in ("the digit 3", "a seven")]
    assert len(samples[0].ground) == 1 and samples[1].ground == []

    def loss_and_grad(weight: float) -> tuple[float, torch.Tensor]:
        monkeypatch.setattr(reranker_stage, "GROUND_WEIGHT", weight)
        model.zero_grad()
        loss = reranker_stage.reranker_loss(model, samples, [2, 0], [0, 0], cfg)
        loss.backward()
        return loss.item(), model.core.layers[reranker_stage.GROUND_LAYER].q_proj.weight.grad.clone()

    plain, g0 = loss_and_grad(0.0)
    grounded, g1 = loss_and_grad(1.0)
    assert grounded > plain  # minus a log-probability: positive
    assert not torch.allclose(g0, g1)
    # the term is -log(attention mass on the 4 tokens of the 3): near-uniform attention over ~40 keys at
    # the start puts about a tenth there, so the term is near -log(0.1) = 2.3, far above 0
    assert 0.5 < grounded - plain < 6


def test_a_short_training_run_lowers_the_loss(tokenizer, digits):
    """Loss on a fixed batch of held-out groups, before and after a few steps of the real training loop."""
    cfg = train_config.TrainConfig.smoke()
    torch.manual_seed(0)
    model = checkpoints.new_model(PRESETS["tiny"], tokenizer, seed=5, answers=True)
    template = VisionFirstTemplate(tokenizer, RerankSpec())
    preprocess = PreprocessConfig.from_dict(build_preprocessor_config(PRESETS["tiny"]))
    pool = pools.build_pool(digits, "calib", 60, seed=1)
    rng = np.random.default_rng(0)
    samples, grades, groups = [], [], []
    for g in range(6):
        q = pools.sample_query(rng, {"digit": 1.0, "photo": 1.0})
        for doc, grade in pools.select_candidates(q, pool, rng, (1, 1, 1, 1)):
            samples.append(reranker_stage.reranker_sample(template, preprocess, q.text, images.render(doc, digits), doc.text))
            grades.append(grade)
            groups.append(g)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(reranker_stage.reranker_loss(model, samples, grades, groups, cfg))

    before = fixed_loss()
    train_pool = pools.build_pool(digits, "train", cfg.train_composites, seed=0)
    losses = reranker_stage.train_reranker(model, template, preprocess, train_pool, digits, cfg, None, progress=False)
    after = fixed_loss()
    assert len(losses) == cfg.reranker_steps and all(np.isfinite(losses))
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("order, reranker, report_file", [
    ("vision-first", "reranker", "train_report.json"),
    ("query-first", "reranker-query-first", "train_report-query-first.json")])
def test_the_script_writes_loadable_checkpoints_and_cards(tmp_path, order, reranker, report_file, monkeypatch):
    shipped = tmp_path / "shipped_report.json"  # a stand-in for the shipped run's report, with its own loss
    shipped.write_text(json.dumps({"loss": {"embedder": {"last": 1.2345}}}))
    monkeypatch.setattr(cards, "SHIPPED_REPORT", shipped)
    assert td.main([str(tmp_path), "--steps", "2", "--embedder-steps", "2", "--vision-steps", "2", "--no-eval",
                    "--order", order]) == 0
    report = json.loads((tmp_path / report_file).read_text())
    assert report["loss"]["reranker"]["steps"] == 2 and report["config"]["order"] == order
    for kind in (reranker, "embedder"):
        assert "## What was chosen" in (tmp_path / kind / "README.md").read_text()
    if order == "query-first":  # the shipped embedder's loss, read from the shipped run's report
        assert "the shipped embedder's 1.234)" in (tmp_path / reranker / "README.md").read_text()
    assert (tmp_path / "DATA_CARD.md").is_file() and (tmp_path / "eval" / "heldout.jsonl").is_file()
    scores = ReferencePipeline(tmp_path / reranker).rerank("a handwritten seven",
                                                            [Document(text="The handwritten digit seven.")])
    assert np.isfinite(scores).all()
    dtype = json.loads((tmp_path / reranker / "config.json").read_text())["dtype"]
    assert dtype == ("bfloat16" if order == "query-first" else "float32")


def test_card_metrics_are_the_eval_metrics():
    """Cards count the first relevant candidate (grade > 0), as `minireranker eval` does."""
    rows = [{"candidates": [{"relevance": g} for g in grades]} for grades in ([1, 0, 2], [0, 0, 0])]
    m = evaluation._summary(rows, [np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0])])
    assert m["hit@1"] == 1.0 and m["mrr"] == 1.0 and m["queries"] == 1 and m["excluded"] == 1
    ideal = 3 + 1 / np.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 + 3 / np.log2(4)) / ideal, abs=1e-12)


def test_card_metrics_per_query_kind_are_the_metrics_of_each_kind_alone():
    from minireranker.calibration.demo.cards import metrics_table

    rows = [{"candidates": [{"relevance": g} for g in grades], "meta": {"kind": kind}}
            for grades, kind in (([1, 0, 2], "digit"), ([0, 2, 0], "photo"), ([2, 0, 0], "digit"))]
    scores = [np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])]
    m = evaluation._summary(rows, scores)
    assert list(m["by_kind"]) == ["digit", "photo"]
    alone = [evaluation._summary([r], [s])["ndcg@10"] for r, s in ((rows[0], scores[0]), (rows[2], scores[2]))]
    assert m["by_kind"]["digit"]["queries"] == 2
    assert m["by_kind"]["digit"]["ndcg@10"] == pytest.approx(np.mean(alone), abs=1e-12)
    assert m["by_kind"]["photo"]["ndcg@10"] == pytest.approx(1 / np.log2(3), abs=1e-12)  # grade 2 ranked second
    table = metrics_table({"heldout": {evaluation.DENSE_ROW: m}})
    assert "| model / spec | digit (2 q) | photo (1 q) |" in table
    assert (f"| {evaluation.DENSE_ROW} | {m['by_kind']['digit']['ndcg@10']:.3f} | "
            f"{m['by_kind']['photo']['ndcg@10']:.3f} |") in table
    assert "reference: heldout: reranker dense (exact spec)" in table


def test_token_labels_follow_cells_and_margins():
    """Each merged token (32 px) is one digit cell's half or one margin; a resized image is ignored."""
    doc = data.DocSpec("x", (8, 3), (0, 1), (32, 0, 32))       # margin, 8, 3, margin: 192 x 64 pixels
    expected = [vision_stage.BLANK, 8, 8, 3, 3, vision_stage.BLANK]
    np.testing.assert_array_equal(vision_stage.token_labels(doc, (1, 4, 12)), expected * 2)
    assert (vision_stage.token_labels(doc, (1, 2, 6)) == vision_stage.IGNORE).all()  # the grid of a downscaled image


def test_hard_singles_make_single_digits_of_other_labels_the_hard_negatives():
    digits = images.split_digits(0)
    pool = pools.build_pool(digits, "train", 100, 0)
    q = data.QuerySpec("digit", (4,))
    picked = pools.select_candidates(q, pool, np.random.default_rng(0), (1, 1, 5, 0), hard_singles=True)
    negatives = [doc for doc, g in picked if g == 0]
    assert len(negatives) == 5 and all(len(d.digits) == 1 and d.digits != (4,) for d in negatives)


# ---------------------------------------------------------------------------------------------------
# the bundled checkpoints
# ---------------------------------------------------------------------------------------------------
def _heldout_pairs(count: int) -> list[tuple[str, Document]]:
    rows = evaluation.load_labelled(ASSETS / "eval" / "heldout.jsonl")
    picked = [next(c for c in rows[0]["candidates"] if c["image"]), next(c for c in rows[1]["candidates"] if c["text"])]
    return [(rows[i]["query"], c["document"]) for i, c in enumerate(picked[:count])]


@pytest.mark.parametrize("spec", [RerankSpec.exact(), RerankSpec(3, (1, 2), query_position=128)],
                         ids=["exact", "exit3-band1-2-P128"])
def test_bundled_reranker_agrees_with_transformers(spec):
    pytest.importorskip("transformers")
    from minireranker.export.oracle import TransformersOracle

    oracle = TransformersOracle(ASSETS / "reranker", spec)
    pipeline = ReferencePipeline(ASSETS / "reranker", spec)
    for query, doc in _heldout_pairs(2):
        assert abs(oracle.score(query, doc) - pipeline.rerank(query, [doc])[0]) < ATOL


def test_bundled_query_first_reranker_is_a_stock_bfloat16_checkpoint_scored_as_transformers_does():
    """reranker-query-first: bfloat16 weights, no minireranker.json (read as trained query-first), and its
    trained-order dense score equal to transformers' query-first forward (1e-4) on held-out pairs."""
    pytest.importorskip("transformers")
    from safetensors import safe_open

    from minireranker.calibration.scoring import LoadedReranker, trained_dense_scores
    from minireranker.export.oracle import TransformersOracle

    path = ASSETS / "reranker-query-first"
    assert not (path / "minireranker.json").exists()
    with safe_open(path / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    loaded = LoadedReranker(path)
    teacher = loaded.pipeline(loaded.exact_spec())
    assert teacher.spec.trained == "query-first"
    oracle = TransformersOracle(path, RerankSpec.exact())
    for query, doc in _heldout_pairs(2):
        assert abs(oracle.score_query_first(query, doc) - trained_dense_scores(teacher, query, [doc])[0]) < ATOL


def test_bundled_embedder_guides_the_bundled_reranker():
    spec = RerankSpec(3, (1, 2), 0.5, f"embedder:{ASSETS / 'embedder'}", query_position=128)
    pipeline = ReferencePipeline(ASSETS / "reranker", spec)
    query, doc = _heldout_pairs(1)[0]
    entry = pipeline.index(doc)
    prep = pipeline.prepare(doc)
    assert len(entry.kept_visual) == int(np.ceil(0.5 * len(prep.visual_rows)))
    assert np.isfinite(pipeline.score(query, [entry])).all()
    embeddings = embedder_stage.DemoEmbedder(ASSETS / "embedder").embed_queries([query])
    assert embeddings.shape == (1, train_config.EMBEDDER_PRESET.hidden_size)


def test_training_embedder_and_calibration_embedder_agree_on_the_bundled_model():
    """The batched training-forward embedder (cards' metrics) and calibration's (eval, demo) are one model."""
    from minireranker.calibration.embedder import Embedder

    query, doc = _heldout_pairs(1)[0]
    docs = [doc, Document(text="a handwritten seven")]
    batched = embedder_stage.DemoEmbedder(ASSETS / "embedder")
    plain = Embedder(ASSETS / "embedder")
    np.testing.assert_allclose(batched.embed_documents(docs), np.stack([plain.embed_document(d) for d in docs]),
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.embed_queries([query])[0], plain.embed_text(query), atol=1e-5, rtol=0)
