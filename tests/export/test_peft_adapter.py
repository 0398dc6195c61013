"""PEFT adapter folders: merged into their base at build time (export/checkpoint.py, ``build --base``).

A seeded LoRA adapter (B not zero) over the tiny Qwen3-VL checkpoint, on text and vision modules, is saved
with peft and merged by :func:`merge_adapter`. The merged checkpoint's transformers logits must equal the
PeftModel's (atol 1e-5, fp32: the merge only reassociates W x + s B A x; measured 4.3e-6 on logits of
magnitude 4) and differ from the base's (measured by 3.5).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

from minireranker.export.arch import ARCHITECTURES, architecture_for  # noqa: E402
from minireranker.export.checkpoint import (  # noqa: E402
    ADAPTER_WEIGHTS,
    SPEC_FILE,
    adapter_base,
    checkpoint_for_build,
    is_adapter_dir,
    load_state_dict,
    merge_adapter,
    open_checkpoint,
)
from minireranker.export.tiny import write_tiny_checkpoint  # noqa: E402
from legacy_names_helpers import old_name, rewrite_with_old_names  # noqa: E402
from minireranker.runtime.errors import CheckpointError  # noqa: E402
from minireranker.runtime.spec import RerankSpec  # noqa: E402
from minireranker.tools.cli import main  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj", "qkv"]  # text attention and MLP, vision attention
ATOL = 1e-5  # merged vs unmerged, fp32
# transformers 5 itself loads transformers < 4.52's names for Qwen2-VL and Qwen2.5-VL, which were published
# that way (Qwen/Qwen2-VL-2B-Instruct, MonoQwen2-VL's base); Qwen3-VL never was, and it does not
OLD_LAYOUT_BASES = sorted(set(ARCHITECTURES) - {"qwen3_vl"})


def hf_model(directory: Path):
    """transformers' model of a checkpoint, by the class its architecture's adapter names."""
    model_type = json.loads((directory / "config.json").read_text(encoding="utf-8"))["model_type"]
    model_class = getattr(transformers, architecture_for(model_type).transformers_class)
    return model_class.from_pretrained(directory, dtype=torch.float32).eval()


def make_adapter(base: Path, out: Path, seed: int = 0):
    """A seeded LoRA adapter (B not zero) over ``base``, saved to ``out``; returns the PeftModel."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False)
    tuned = peft.get_peft_model(hf_model(base), config).eval()
    tuned.save_pretrained(out)
    return tuned


def sample_inputs(directory: Path) -> dict:
    """A system-less chat-like sequence with one 64x64 image (4 image tokens) between text tokens."""
    from PIL import Image

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    features = transformers.Qwen2VLImageProcessorPil.from_pretrained(directory)(images=[image], return_tensors="pt")
    ids = [*range(10, 20), config["vision_start_token_id"], *[config["image_token_id"]] * 4,
           config["vision_end_token_id"], *range(40, 52)]
    ids = torch.tensor([ids])
    return {"input_ids": ids, "mm_token_type_ids": (ids == config["image_token_id"]).int(), **features}


def logits(model, inputs: dict):
    with torch.no_grad():
        return model(**inputs).logits[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """The base, a LoRA adapter over it with the PeftModel's logits, and the merged checkpoint."""
    root = tmp_path_factory.mktemp("peft")
    base = write_tiny_checkpoint(root / "base", "tiny", seed=0)
    inputs = sample_inputs(base)
    tuned = make_adapter(base, root / "adapter")
    (root / "adapter" / SPEC_FILE).write_text(json.dumps(RerankSpec.tiny().to_dict()), encoding="utf-8")
    merged = merge_adapter(root / "adapter", base, root / "merged")
    return {"root": root, "base": base, "adapter": root / "adapter", "merged": merged, "inputs": inputs,
            "peft_logits": logits(tuned, inputs)}


def adapter_copy(made: dict, tmp_path: Path, base_name: str | None = None) -> Path:
    directory = Path(shutil.copytree(made["adapter"], tmp_path / "adapter"))
    if base_name is not None:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_name
        (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_the_adapter_is_peft_layout_and_names_its_base(made):
    assert is_adapter_dir(made["adapter"]) and not is_adapter_dir(made["base"])
    assert (made["adapter"] / ADAPTER_WEIGHTS).is_file()
    assert adapter_base(made["adapter"]) == made["base"]  # peft wrote the base's local path


def test_merged_logits_equal_the_peft_model_and_differ_from_the_base(made):
    merged = logits(hf_model(made["merged"]), made["inputs"])
    base = logits(hf_model(made["base"]), made["inputs"])
    torch.testing.assert_close(merged, made["peft_logits"], atol=ATOL, rtol=0)
    assert (base - made["peft_logits"]).abs().max() > 100 * ATOL  # the adapter matters: this test can fail


def test_merged_checkpoint_opens_with_the_adapters_spec_and_changes_only_the_targets(made):
    checkpoint = open_checkpoint(made["merged"])
    assert checkpoint.spec == RerankSpec.tiny().resolve(checkpoint.config.text.num_layers)
    assert checkpoint.config == open_checkpoint(made["base"]).config
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (made["merged"] / name).read_bytes() == (made["base"] / name).read_bytes()
    merged, base = load_state_dict(checkpoint), load_state_dict(open_checkpoint(made["base"]))
    assert list(merged) == list(base)
    targeted = {n for n in base if any(f".{t}.weight" in n for t in TARGETS)}
    assert any(".attn.qkv." in n for n in targeted) and any(".mlp.down_proj." in n for n in targeted)
    changed = {n for n in base if not torch.equal(merged[n], base[n])}
    assert changed == targeted


def test_an_adapter_saved_in_the_old_layout_merges_the_same(made, tmp_path):
    """MonoQwen2-VL's adapter was saved by transformers < 4.52: ``base_model.model.model.layers.N...``."""
    directory = adapter_copy(made, tmp_path)
    tensors = safetensors_torch.load_file(str(directory / ADAPTER_WEIGHTS))
    prefix = "base_model.model."
    old = {prefix + old_name(n[len(prefix):]): t for n, t in tensors.items()}
    assert not any(n[len(prefix):].startswith(("model.language_model.", "model.visual.")) for n in old)
    safetensors_torch.save_file(old, str(directory / ADAPTER_WEIGHTS))
    merged = load_state_dict(open_checkpoint(merge_adapter(directory, made["base"], tmp_path / "merged")))
    expected = load_state_dict(open_checkpoint(made["merged"]))
    assert all(torch.equal(merged[n], expected[n]) for n in expected)  # exact: the same arithmetic


@pytest.mark.parametrize("model_type", OLD_LAYOUT_BASES)
def test_an_adapter_over_an_old_layout_base(model_type, tmp_path):
    """MonoQwen2-VL's case: Qwen/Qwen2-VL-2B-Instruct is stored in transformers < 4.52's layout, which
    transformers 5 loads and save_pretrained keeps; the merged checkpoint loads through the renaming."""
    base = write_tiny_checkpoint(tmp_path / "base", architecture_for(model_type).tiny_preset, seed=0)
    rewrite_with_old_names(base)
    inputs = sample_inputs(base)
    expected = logits(make_adapter(base, tmp_path / "adapter"), inputs)
    merged = merge_adapter(tmp_path / "adapter", base, tmp_path / "merged")
    torch.testing.assert_close(logits(hf_model(merged), inputs), expected, atol=ATOL, rtol=0)
    assert set(load_state_dict(open_checkpoint(merged))) == set(load_state_dict(open_checkpoint(base)))


def test_a_base_transformers_loads_only_in_part_is_refused(tmp_path):
    """A Qwen3-VL base in the old layout: transformers would fill its text weights at random."""
    base = write_tiny_checkpoint(tmp_path / "base", "tiny", seed=0)
    make_adapter(base, tmp_path / "adapter")
    rewrite_with_old_names(base)
    with pytest.raises(CheckpointError) as info:
        merge_adapter(tmp_path / "adapter", base, tmp_path / "merged")
    message = str(info.value)
    assert str(base) in message and "transformers found no weights" in message and "\n" not in message
    assert not (tmp_path / "merged").exists()


def test_an_adapter_over_another_base_is_refused(made, tmp_path):
    other = write_tiny_checkpoint(tmp_path / "other", "gqa4", seed=0)  # other shapes, same module names
    with pytest.raises(CheckpointError) as info:
        merge_adapter(made["adapter"], other, tmp_path / "merged")
    message = str(info.value)
    assert str(made["adapter"]) in message and "--base" in message and "\n" not in message
    assert not (tmp_path / "merged").exists()


def test_adapter_tensors_that_land_nowhere_are_refused(made, tmp_path):
    """peft itself only warns, and the merged model would silently be the base's."""
    directory = adapter_copy(made, tmp_path)
    tensors = safetensors_torch.load_file(str(directory / ADAPTER_WEIGHTS))
    stray = {n.replace(".layers.0.", ".layers.9."): t for n, t in tensors.items()}  # the tiny model has 4 layers
    safetensors_torch.save_file(stray, str(directory / ADAPTER_WEIGHTS))
    with pytest.raises(CheckpointError) as info:
        merge_adapter(directory, made["base"], tmp_path / "merged")
    message = str(info.value)
    assert "match no module of the base" in message and "layers.9." in message and "--base" in message


def test_build_merges_the_adapter_into_a_temporary_directory_it_removes(made, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    out = tmp_path / "bundle"
    status = main(["build", str(made["adapter"]), "--base", str(made["base"]), "-o", str(out), "--no-validate"])
    assert status == 0
    from minireranker.runtime.bundle import load_bundle

    bundle = load_bundle(out)
    assert bundle.data["source"]["model_type"] == "qwen3_vl"
    assert not any(out.rglob("*.safetensors"))  # the bundle holds engines, not the merged checkpoint
    assert list(scratch.iterdir()) == []  # the merged checkpoint is gone once the build is over


def one_error_line(capsys, status: int, *parts: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    missing = [p for p in parts if p not in lines[0]]
    assert not missing, f"{lines[0]!r} lacks {missing}"
    return lines[0]


def test_build_without_a_local_base_says_to_pass_base(made, tmp_path, capsys):
    directory = adapter_copy(made, tmp_path, base_name="Qwen/Qwen2-VL-2B-Instruct")
    status = main(["build", str(directory), "-o", str(tmp_path / "bundle")])
    one_error_line(capsys, status, str(directory), "Qwen/Qwen2-VL-2B-Instruct", "--base DIR")
    assert not (tmp_path / "bundle").exists()


def test_base_that_does_not_exist(made, tmp_path, capsys):
    status = main(["build", str(made["adapter"]), "--base", str(tmp_path / "nowhere"), "-o", str(tmp_path / "b")])
    one_error_line(capsys, status, str(tmp_path / "nowhere"), "does not exist")


def test_base_given_for_a_plain_checkpoint(made, tmp_path, capsys):
    status = main(["build", str(made["base"]), "--base", str(made["base"]), "-o", str(tmp_path / "b")])
    one_error_line(capsys, status, str(made["base"]), "not a PEFT adapter folder", "drop --base")


def test_a_plain_checkpoint_is_built_from_where_it_is(made):
    with checkpoint_for_build(made["base"]) as directory:
        assert directory == made["base"]


def test_adapter_without_weights(made, tmp_path):
    directory = adapter_copy(made, tmp_path)
    (directory / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"{ADAPTER_WEIGHTS} is missing"):
        merge_adapter(directory, made["base"], tmp_path / "merged")
