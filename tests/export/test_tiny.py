"""Tiny checkpoints of every registered architecture: transformers loads every preset exactly (with the class
its adapter names) and runs it; the tokenizer is Qwen-like."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minireranker.export.arch import ARCHITECTURES, architecture_for  # noqa: E402
from minireranker.export.tiny import (  # noqa: E402
    PRESETS,
    TinyPreset,
    build_preprocessor_config,
    main,
    parameter_specs,
    preset_names,
    write_tiny_checkpoint,
)
from minireranker.export.tokenizer_factory import (  # noqa: E402
    QWEN_SPECIAL_TOKENS,
    RERANKER_INSTRUCTION,
    RERANKER_SYSTEM_PROMPT,
    _trained_tokenizer_json,
    build_tokenizer,
    write_tokenizer,
)
from minireranker.runtime.errors import CheckpointError  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

QUERIES = ("a red bus", "the price of milk")


@pytest.fixture(scope="module", params=sorted(PRESETS))
def loaded(request, tmp_path_factory):
    """(preset name, checkpoint dir, model, loading info) for each preset, built once per module."""
    model_class = getattr(transformers, architecture_for(PRESETS[request.param].model_type).transformers_class)
    directory = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=0)
    model, info = model_class.from_pretrained(directory, output_loading_info=True)
    return request.param, directory, model.eval(), info


def weight_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def file_tensors(directory: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def reranker_inputs(directory: Path, query: str, image_seed: int) -> dict:
    """A vision-first reranker sequence with one 64x64 image, built from the checkpoint's own files."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = json.loads((directory / "preprocessor_config.json").read_text())
    settings.pop("image_processor_type")
    pixels = np.random.default_rng(image_seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Qwen2VLImageProcessorPil(**settings)(images=[Image.fromarray(pixels)], return_tensors="pt")
    config = json.loads((directory / "config.json").read_text())
    merge = config["vision_config"]["spatial_merge_size"]
    image_tokens = int(image["image_grid_thw"].prod()) // merge**2

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    ids = (
        encode(f"<|im_start|>system\n{RERANKER_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
        + encode("<Document>:<|vision_start|>")
        + [config["image_token_id"]] * image_tokens
        + encode("<|vision_end|>\n")
        + encode(f"<Instruct>: {RERANKER_INSTRUCTION}\n<Query>:{query}<|im_end|>\n<|im_start|>assistant\n")
    )
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "mm_token_type_ids": (input_ids == config["image_token_id"]).int(),  # text 0, image 1
        "pixel_values": image["pixel_values"],
        "image_grid_thw": image["image_grid_thw"],
    }


# ---------------------------------------------------------------------------------------------------
# checkpoints, every preset
# ---------------------------------------------------------------------------------------------------


def test_preset_sizes_stay_tiny():
    for name, preset in PRESETS.items():
        assert preset.hidden_size <= 128 and preset.vision_hidden_size <= 128, name
        assert 2 <= preset.num_hidden_layers <= 5 and 2 <= preset.vision_depth <= 4, name


def test_transformers_loads_with_no_missing_or_unexpected_keys(loaded):
    name, directory, model, info = loaded
    # a ranking checkpoint's score head is no part of transformers' class (jina's is remote code): those
    # four tensors, and nothing else, are unexpected
    head = {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} if PRESETS[name].score_head else set()
    found = {key: sorted(value) for key, value in info.items() if value}
    assert found == ({"unexpected_keys": sorted(head)} if head else {})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if PRESETS[name].tie_word_embeddings:
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
        del expected["lm_head.weight"]
    assert {k: v for k, v in file_tensors(directory).items() if k not in head} == expected
    specs = {k: v for k, v in parameter_specs(name, model.config.text_config.vocab_size).items() if k not in head}
    assert list(specs) == [k for k in model.state_dict() if k in expected]  # same order as transformers


def test_config_matches_tokenizer_and_preset(loaded):
    name, directory, model, _ = loaded
    preset, config = PRESETS[name], json.loads((directory / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert config["image_token_id"] == tokenizer.token_to_id("<|image_pad|>")
    assert config["video_token_id"] == tokenizer.token_to_id("<|video_pad|>")
    assert config["vision_start_token_id"] == tokenizer.token_to_id("<|vision_start|>")
    assert config["vision_end_token_id"] == tokenizer.token_to_id("<|vision_end|>")
    # Qwen2-VL/2.5-VL with rope_style "rope_scaling": the released flat layout, the text fields at the top
    text = config.get("text_config", config)
    assert ("text_config" in config) != (preset.model_type != "qwen3_vl" and preset.rope_style == "rope_scaling")
    assert text["vocab_size"] >= tokenizer.get_vocab_size(with_added_tokens=True)
    rope_key = "rope_scaling" if preset.rope_style == "rope_scaling" else "rope_parameters"
    assert rope_key in text
    assert model.config.text_config.rope_parameters["mrope_section"] == list(preset.mrope_section)
    assert model.config.text_config.rope_parameters["rope_theta"] == preset.rope_theta
    assert model.config.text_config.hidden_size == preset.hidden_size
    assert model.config.tie_word_embeddings == preset.tie_word_embeddings
    vision = model.config.vision_config
    assert list(getattr(vision, "deepstack_visual_indexes", ())) == list(preset.deepstack_visual_indexes)
    if preset.window_size:  # Qwen2.5-VL
        assert (vision.window_size, list(vision.fullatt_block_indexes)) == (
            preset.window_size, list(preset.fullatt_block_indexes))
    processor = json.loads((directory / "preprocessor_config.json").read_text())
    arch = ARCHITECTURES[preset.model_type]
    assert (processor["image_mean"], processor["image_std"]) == (list(arch.image_mean), list(arch.image_std))
    assert processor["patch_size"] == preset.patch_size == vision.patch_size


def test_forward_with_image_gives_finite_order_one_logits(loaded):
    _, directory, model, _ = loaded
    inputs = reranker_inputs(directory, QUERIES[0], image_seed=0)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    # "O(1)": loose bounds, the point is neither vanishing nor exploding activations
    assert 0.1 < out.logits[0, -1].std().item() < 10.0
    assert all(h.abs().max().item() < 100.0 for h in out.hidden_states)


def test_yes_no_difference_depends_on_the_input(loaded):
    _, directory, model, _ = loaded
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    yes, no = tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")
    scores = []
    for index, query in enumerate(QUERIES):
        for image_seed in (0, 1):
            with torch.no_grad():
                logits = model(**reranker_inputs(directory, query, image_seed)).logits[0, -1]
            scores.append((logits[yes] - logits[no]).item())
    # the spread between inputs is O(0.1..1) for the presets; 0.02 only rules out a constant score
    assert max(scores) - min(scores) > 0.02, scores


def test_weight_files_and_shard_index(loaded):
    name, directory, _, _ = loaded
    shards, index_path = PRESETS[name].shards, directory / "model.safetensors.index.json"
    if shards == 1:
        assert [p.name for p in weight_files(directory)] == ["model.safetensors"]
        assert not index_path.exists()
        return
    index = json.loads(index_path.read_text())
    files = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    assert [p.name for p in weight_files(directory)] == files
    assert sorted(set(index["weight_map"].values())) == files
    total = 0
    for file_name in files:
        with safe_open(str(directory / file_name), framework="pt") as handle:
            names = set(handle.keys())
            total += sum(handle.get_tensor(n).numel() * 4 for n in names)  # float32
        assert names == {n for n, f in index["weight_map"].items() if f == file_name}
    assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_same_seed_same_bytes_other_seed_other_weights(name, tmp_path):
    first = write_tiny_checkpoint(tmp_path / "a", name, seed=7)
    again = write_tiny_checkpoint(tmp_path / "b", name, seed=7)
    other = write_tiny_checkpoint(tmp_path / "c", name, seed=8)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for file_name in files:
        assert (first / file_name).read_bytes() == (again / file_name).read_bytes(), file_name
    for path in weight_files(first):
        assert path.read_bytes() != (other / path.name).read_bytes(), path.name


# ---------------------------------------------------------------------------------------------------
# preset validation, spec file, command line
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"mrope_section": (4, 2, 1)},  # does not sum to head_dim / 2
        {"num_position_embeddings": 15},  # not a square
        {"num_key_value_heads": 3},  # 4 heads are not a multiple of 3 kv heads
        {"vision_hidden_size": 40, "vision_num_heads": 4},  # vision head dim 10, not divisible by 4
        {"vision_hidden_size": 33},  # not divisible by the 2 vision heads
        {"deepstack_visual_indexes": (0, 3)},  # the vision tower has 3 blocks
        {"rope_style": "yarn"},
        {"shards": 0},
        {"window_size": -1},
        {"fullatt_block_indexes": (3,)},  # the vision tower has 3 blocks
        {"fullatt_block_indexes": (1, 0)},  # not increasing
    ],
)
def test_invalid_preset_is_refused(change):
    fields = {**PRESETS["tiny"].__dict__, **change}
    with pytest.raises(CheckpointError, match="invalid TinyPreset"):
        TinyPreset(**fields)


def test_unknown_preset_name_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="unknown tiny preset"):
        write_tiny_checkpoint(tmp_path, "huge")


def test_spec_is_written_only_when_given(tmp_path):
    spec = {"schema_version": 1, "exit_layer": 2, "band": [0, 2], "keep_ratio": 0.5}
    assert not (write_tiny_checkpoint(tmp_path / "plain") / "minireranker.json").exists()
    written = write_tiny_checkpoint(tmp_path / "spec", spec=spec) / "minireranker.json"
    assert json.loads(written.read_text()) == spec


def test_command_line_writes_a_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--preset", "gqa4", "--seed", "3"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["text_config"]["num_attention_heads"] == 8
    assert "gqa4" in capsys.readouterr().out
    assert main([str(tmp_path / "q2"), "--preset", "qwen2_5_vl_tiny"]) == 0
    assert json.loads((tmp_path / "q2" / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_command_line_lists_the_presets_with_their_architectures(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [[name, PRESETS[name].model_type] for name in preset_names()]
    assert {PRESETS[n].model_type for n in preset_names()} == set(ARCHITECTURES)
    assert preset_names("qwen2_vl") == ["jina_m0_tiny", "monoqwen2_vl_tiny", "qwen2_vl_tiny"]
    assert "tiny" in preset_names("qwen3_vl")
    with pytest.raises(SystemExit):
        main([])  # no output directory and no --list


def test_minireranker_tiny_lists_the_presets(capsys, tmp_path):
    from minireranker.tools.cli import main as cli_main

    assert cli_main(["tiny", "--list"]) == 0
    assert capsys.readouterr().out.split() == [w for n in preset_names() for w in (n, PRESETS[n].model_type)]
    assert cli_main(["tiny", str(tmp_path / "q2"), "--preset", "qwen2_vl_tiny"]) == 0
    assert json.loads((tmp_path / "q2" / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert cli_main(["tiny"]) != 0  # neither a directory nor --list: one error line, no traceback
    assert "--list" in capsys.readouterr().err


def test_preprocessor_config_follows_the_architecture():
    """Qwen2-VL and Qwen2.5-VL normalize with CLIP's mean/std, Qwen3-VL with 0.5; patch 14 vs 16."""
    for name in ("qwen2_vl_tiny", "qwen2_5_vl_tiny", "tiny"):
        config = build_preprocessor_config(name)
        clip = PRESETS[name].model_type != "qwen3_vl"
        assert config["image_mean"] == ([0.48145466, 0.4578275, 0.40821073] if clip else [0.5] * 3)
        assert config["image_std"] == ([0.26862954, 0.26130258, 0.27577711] if clip else [0.5] * 3)
        assert config["patch_size"] == (14 if clip else 16)


# ---------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------


def test_special_tokens_follow_the_bpe_vocabulary_in_qwen_order():
    tokenizer = build_tokenizer()
    bpe_size = tokenizer.get_vocab_size(with_added_tokens=False)
    assert 600 <= tokenizer.get_vocab_size(with_added_tokens=True) <= 1000
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        assert tokenizer.encode(token, add_special_tokens=False).ids == [bpe_size + offset]
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|><|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert ids.count(tokenizer.token_to_id("<|image_pad|>")) == 2


def test_yes_and_no_are_single_tokens():
    tokenizer = build_tokenizer()
    for word in ("yes", "no"):
        assert len(tokenizer.encode(word, add_special_tokens=False).ids) == 1
        tail = tokenizer.encode(f"<|im_start|>assistant\n{word}", add_special_tokens=False).ids
        assert tail[-1] == tokenizer.token_to_id(word)


TEXTS = [
    "<|im_start|>system\nJudge whether  the Document meets<|im_end|>\n<|im_start|>assistant\n",
    "héllo wörld 日本語 🎉\t tabs  and   spaces\n\n yes no Yes NO",
    "<Document>:<|vision_start|><|image_pad|><|image_pad|><|vision_end|>a cat\n<Instruct>: x\n<Query>:12345",
    "",
]


def test_auto_tokenizer_gives_the_same_ids(tmp_path):
    from transformers import AutoTokenizer

    directory = write_tiny_checkpoint(tmp_path, "tiny")  # with config.json, as the model loader sees it
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert auto(text)["input_ids"] == expected  # add_special_tokens=True by default: adds nothing
        assert auto(text, add_special_tokens=False)["input_ids"] == expected
        assert auto.decode(expected) == text
    assert auto.convert_tokens_to_ids("<|image_pad|>") == reference.token_to_id("<|image_pad|>")


def test_tokenizer_training_is_deterministic(tmp_path):
    write_tokenizer(tmp_path / "a")
    retrained = _trained_tokenizer_json.__wrapped__()  # bypass the per-process cache
    assert Tokenizer.from_str(retrained).to_str() == build_tokenizer().to_str()
    # another process: the trainer's hash maps are seeded per process
    code = "import sys; from minireranker.export.tokenizer_factory import write_tokenizer; write_tokenizer(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
