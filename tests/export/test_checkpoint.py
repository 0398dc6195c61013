"""Checkpoint directories: every way a checkpoint can be broken gives a clear CheckpointError or SpecError.

Each negative case starts from a good tiny checkpoint and breaks one thing. Messages must name the file
(or field) at fault and say what to do; nothing may escape as a bare KeyError/TypeError traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from minireranker.export.checkpoint import (  # noqa: E402
    INDEX_FILE,
    SPEC_FILE,
    expected_shapes,
    load_state_dict,
    open_checkpoint,
)
from minireranker.export.arch import architecture_for  # noqa: E402
from minireranker.export.config import parse_model_config  # noqa: E402
from minireranker.export.tiny import PRESETS, write_tiny_checkpoint  # noqa: E402
from minireranker.runtime.errors import CheckpointError, SpecError  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402

EMBED = "model.language_model.embed_tokens.weight"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One good checkpoint per preset, written once; tests work on copies."""
    root = tmp_path_factory.mktemp("pristine")
    return {name: write_tiny_checkpoint(root / name, name, seed=0) for name in sorted(PRESETS)}


def copy_of(pristine: dict[str, Path], tmp_path: Path, preset: str = "tiny") -> Path:
    return Path(shutil.copytree(pristine[preset], tmp_path / preset))


@pytest.fixture
def ckpt(pristine, tmp_path) -> Path:
    """A fresh copy of the single-file, untied, rope_scaling-form tiny checkpoint."""
    return copy_of(pristine, tmp_path)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def edit_config(directory: Path, change: Callable[[dict], None]) -> None:
    config = read_json(directory / "config.json")
    change(config)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")


def all_tensors(directory: Path) -> dict:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(str(file)))
    return tensors


def assert_message(exc: BaseException, *parts: str) -> None:
    message = str(exc)
    missing = [p for p in parts if p not in message]
    assert not missing, f"message {message!r} lacks {missing}"


# -- config.json --------------------------------------------------------------------------------
def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(tmp_path / "nowhere")
    assert_message(info.value, str(tmp_path / "nowhere"), "does not exist")


def test_config_missing(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt / "config.json"), "missing", "copy it")


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]"])
def test_config_not_json_object(ckpt, text):
    (ckpt / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt / "config.json"), "JSON", "restore it")


def test_unsupported_model_type(ckpt):
    edit_config(ckpt, lambda c: c.update(model_type="llava"))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "model_type", "'llava'", "qwen3_vl")


def test_unsupported_architecture(ckpt):
    edit_config(ckpt, lambda c: c.update(architectures=["Qwen3VLForSequenceClassification"]))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "Qwen3VLForSequenceClassification",
                   "Qwen3VLForConditionalGeneration")


@pytest.mark.parametrize("preset", ["tiny", "gqa3_odd_head"])  # rope_scaling and rope_parameters forms
def test_mrope_section_not_half_head_dim(pristine, tmp_path, preset):
    directory = copy_of(pristine, tmp_path, preset)

    def change(c):
        tc = c["text_config"]
        rope = tc.get("rope_scaling") or tc["rope_parameters"]
        rope["mrope_section"] = [s + 1 for s in rope["mrope_section"]]

    edit_config(directory, change)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(directory)
    assert_message(info.value, "config.json", "mrope_section", "head_dim", "fix text_config")


def test_mrope_section_wrong_length(ckpt):
    edit_config(ckpt, lambda c: c["text_config"]["rope_scaling"].update(mrope_section=[4, 4]))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "mrope_section")


def test_vision_out_hidden_size_differs_from_text_hidden(ckpt):
    edit_config(ckpt, lambda c: c["vision_config"].update(out_hidden_size=48))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "out_hidden_size=48", "hidden_size=64", "fix vision_config")


def test_non_square_position_embeddings(ckpt):
    edit_config(ckpt, lambda c: c["vision_config"].update(num_position_embeddings=15))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "num_position_embeddings=15", "square", "fix vision_config")


def test_deepstack_index_past_vision_depth(ckpt):
    depth = read_json(ckpt / "config.json")["vision_config"]["depth"]
    edit_config(ckpt, lambda c: c["vision_config"].update(deepstack_visual_indexes=[0, depth]))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "deepstack_visual_indexes", str(depth), f"0..{depth - 1}",
                   "fix vision_config")


@pytest.mark.parametrize("section, key", [("text_config", "hidden_size"), ("vision_config", "depth"),
                                          (None, "text_config")])
def test_config_missing_required_key(ckpt, section, key):
    edit_config(ckpt, lambda c: (c[section] if section else c).pop(key))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", key)


def test_config_malformed_value(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(num_hidden_layers="four"))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "four")


# -- tokenizer and preprocessor -------------------------------------------------------------------
def test_tokenizer_missing(ckpt):
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "tokenizer.json", "missing", "copy")


def test_tokenizer_unreadable(ckpt):
    (ckpt / "tokenizer.json").write_text("{not a tokenizer", encoding="utf-8")
    checkpoint = open_checkpoint(ckpt)  # only existence is checked when opening
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_tokenizer()
    assert_message(info.value, "tokenizer.json")


def test_preprocessor_config_missing(ckpt):
    (ckpt / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt / "preprocessor_config.json"), "missing", "copy it")


@pytest.mark.parametrize("key, value, word", [("patch_size", 14, "patch 14"), ("merge_size", 1, "merge 1")])
def test_preprocessor_disagrees_with_config(ckpt, key, value, word):
    path = ckpt / "preprocessor_config.json"
    data = read_json(path)
    data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "preprocessor_config.json", "config.json", word, "use the preprocessor_config.json")


# -- weight files ---------------------------------------------------------------------------------
def test_no_safetensors(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt), "*.safetensors", "copy the model's weight files")


def test_index_names_missing_shard(pristine, tmp_path):
    directory = copy_of(pristine, tmp_path, "gqa3_odd_head")
    shard = sorted(set(read_json(directory / INDEX_FILE)["weight_map"].values()))[-1]
    (directory / shard).unlink()
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(directory)
    assert_message(info.value, INDEX_FILE, shard, "missing", "copy them")


def test_index_without_weight_map(pristine, tmp_path):
    directory = copy_of(pristine, tmp_path, "gqa3_odd_head")
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {}}), encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(directory)
    assert_message(info.value, INDEX_FILE, "weight_map", "delete it")


def test_tensor_missing(ckpt):
    tensors = all_tensors(ckpt)
    dropped = "model.language_model.layers.1.mlp.up_proj.weight"
    del tensors[dropped]
    safetensors_torch.save_file(tensors, str(ckpt / "model.safetensors"))
    checkpoint = open_checkpoint(ckpt)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(checkpoint)
    assert_message(info.value, str(ckpt), "missing", dropped, "re-download")


def test_tensor_wrong_shape(ckpt):
    tensors = all_tensors(ckpt)
    name = "model.language_model.layers.0.self_attn.k_proj.weight"
    good = tuple(tensors[name].shape)
    tensors[name] = torch.zeros(good[0] + 1, good[1])
    safetensors_torch.save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(open_checkpoint(ckpt))
    assert_message(info.value, name, str((good[0] + 1, good[1])), str(good), "config.json", "use the config.json")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_safetensors(ckpt, damage):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 64, "empty": b""}[damage])
    checkpoint = open_checkpoint(ckpt)  # weights are read lazily
    with pytest.raises(CheckpointError) as info:
        load_state_dict(checkpoint)
    assert_message(info.value, str(path), "safetensors", "re-download or re-save")


# -- minireranker.json ----------------------------------------------------------------------------
def test_spec_file_not_json(ckpt):
    (ckpt / SPEC_FILE).write_text("{oops", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt / SPEC_FILE), "JSON")


def test_spec_file_unknown_field(ckpt):
    (ckpt / SPEC_FILE).write_text(json.dumps({"exit": 2}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt / SPEC_FILE), "'exit'", "exit_layer")


@pytest.mark.parametrize("spec, field", [
    ({"exit_layer": 4}, "exit_layer"),          # the tiny model has layers 0..3
    ({"band": [0, 4]}, "band"),
    ({"band": [1, 5], "exit_layer": 5, "query_position": 64}, "exit_layer"),
])
def test_spec_out_of_range_for_the_model_names_the_checkpoint(ckpt, spec, field):
    (ckpt / SPEC_FILE).write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, str(ckpt), field)


def test_spec_argument_out_of_range_names_the_checkpoint(ckpt):
    with pytest.raises(SpecError) as info:
        open_checkpoint(ckpt, RerankSpec(exit_layer=9))
    assert_message(info.value, str(ckpt), "exit_layer=9", "0..3")


def test_spec_argument_overrides_the_file(ckpt):
    (ckpt / SPEC_FILE).write_text(json.dumps({"exit_layer": 1}), encoding="utf-8")
    assert open_checkpoint(ckpt).spec.exit_layer == 1
    assert open_checkpoint(ckpt, RerankSpec.exact()).spec.exit_layer == 3


def test_spec_written_by_tiny_is_read(tmp_path):
    directory = write_tiny_checkpoint(tmp_path / "c", "tiny", seed=0, spec=RerankSpec.tiny().to_dict())
    assert open_checkpoint(directory).spec == RerankSpec.tiny().resolve(4)


# -- good checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_opens_and_loads_exactly_the_expected_tensors(pristine, preset):
    checkpoint = open_checkpoint(pristine[preset])
    p = PRESETS[preset]  # the format: minireranker.json's, else the class's (JinaVLForRanking), else vision-first
    template = p.template or ("jina-reranker-m0" if p.score_head else "vision-first")
    assert checkpoint.spec == RerankSpec(template=template).resolve(p.num_hidden_layers)
    tensors = load_state_dict(checkpoint)
    wanted = expected_shapes(checkpoint.config)
    assert set(tensors) == set(wanted) | {"lm_head.weight"}
    assert all(tuple(tensors[n].shape) == s for n, s in wanted.items())
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_sharded_with_index(pristine):
    directory = pristine["gqa3_odd_head"]
    checkpoint = open_checkpoint(directory)
    assert len(checkpoint.weight_files) == PRESETS["gqa3_odd_head"].shards == 2
    assert checkpoint.weight_map is not None
    loaded = load_state_dict(checkpoint)
    on_disk = all_tensors(directory)
    assert set(on_disk) <= set(loaded)
    for name, tensor in on_disk.items():
        assert torch.equal(loaded[name], tensor), name  # exact: a copy, no arithmetic


@pytest.mark.parametrize("preset", ["gqa3_odd_head", "mha_deep_stack3"])
def test_sharded_without_index_reads_every_shard(pristine, tmp_path, preset):
    directory = copy_of(pristine, tmp_path, preset)
    (directory / INDEX_FILE).unlink()
    checkpoint = open_checkpoint(directory)
    assert checkpoint.weight_map is None
    assert len(checkpoint.weight_files) == PRESETS[preset].shards
    loaded = load_state_dict(checkpoint)
    indexed = load_state_dict(open_checkpoint(pristine[preset]))
    assert set(loaded) == set(indexed)
    assert all(torch.equal(loaded[n], indexed[n]) for n in indexed)


def test_tied_embeddings_have_no_lm_head_on_disk(pristine):
    directory = pristine["gqa3_odd_head"]
    assert PRESETS["gqa3_odd_head"].tie_word_embeddings
    assert "lm_head.weight" not in all_tensors(directory)
    checkpoint = open_checkpoint(directory)
    assert checkpoint.config.tie_word_embeddings
    assert "lm_head.weight" not in expected_shapes(checkpoint.config)
    tensors = load_state_dict(checkpoint)
    assert torch.equal(tensors["lm_head.weight"], tensors[EMBED])


def test_untied_lm_head_is_its_own_tensor(pristine):
    checkpoint = open_checkpoint(pristine["tiny"])
    assert not checkpoint.config.tie_word_embeddings
    tensors = load_state_dict(checkpoint)
    assert not torch.equal(tensors["lm_head.weight"], tensors[EMBED])


def test_tied_checkpoint_missing_embedding(pristine, tmp_path):
    directory = copy_of(pristine, tmp_path, "gqa3_odd_head")
    (directory / INDEX_FILE).unlink()
    for file in directory.glob("*.safetensors"):
        tensors = safetensors_torch.load_file(str(file))
        if EMBED in tensors:
            del tensors[EMBED]
            safetensors_torch.save_file(tensors, str(file))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(open_checkpoint(directory))
    assert_message(info.value, EMBED, "re-download")


def test_both_rope_forms_parse_the_same(pristine):
    raw = read_json(pristine["tiny"] / "config.json")
    tc = raw["text_config"]
    assert "rope_scaling" in tc and "rope_parameters" not in tc
    scaling_form = parse_model_config(raw)

    rope = dict(tc.pop("rope_scaling"), rope_theta=tc.pop("rope_theta"))
    tc["rope_parameters"] = rope
    parameters_form = parse_model_config(raw)
    assert parameters_form == scaling_form
    assert scaling_form.text.mrope_section == PRESETS["tiny"].mrope_section
    assert scaling_form.text.rope_theta == PRESETS["tiny"].rope_theta


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_rope_read_from_each_preset(pristine, preset):
    config = open_checkpoint(pristine[preset]).config
    assert config.text.mrope_section == PRESETS[preset].mrope_section
    assert config.text.rope_theta == PRESETS[preset].rope_theta


def test_presets_cover_both_rope_forms():
    assert {p.rope_style for p in PRESETS.values()} == {"rope_scaling", "rope_parameters"}


def test_unsupported_rope_type(ckpt):
    edit_config(ckpt, lambda c: c["text_config"]["rope_scaling"].update(rope_type="yarn"))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(ckpt)
    assert_message(info.value, "config.json", "rope_type", "yarn")


# -- expected_shapes == transformers --------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_expected_shapes_match_transformers(pristine, preset):
    transformers = pytest.importorskip("transformers")
    directory = pristine[preset]
    config = open_checkpoint(directory).config
    model_class = getattr(transformers, architecture_for(config.model_type).transformers_class)
    hf_config = model_class.config_class.from_pretrained(directory)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = model_class(hf_config)
    hf_shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        assert hf_shapes.pop("lm_head.weight") == hf_shapes[EMBED]
    assert expected_shapes(config) == hf_shapes
