"""The ``minireranker`` command line, run as a real process: JSON output, specs, errors, help, tiny."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error_line, run_cli
from PIL import Image

from minireranker.runtime.spec import RerankSpec
from minireranker.tools.cli import build_parser

QUERY = "a red bus"
SCORE_ATOL = 1e-9        # the same float32 computation in two processes: agreement to float64 printing
PROBABILITY_ATOL = 1e-12





@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint that carries an approximate spec (minireranker.json) and two 64x64 images."""
    pytest.importorskip("torch")
    from minireranker.export.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("cli")
    ckpt = write_tiny_checkpoint(root / "ckpt", "tiny", seed=0, spec=RerankSpec.tiny().to_dict())
    images = []
    for seed in (1, 2):
        pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{seed}.png")
        images.append(root / f"img{seed}.png")
    return {"root": root, "ckpt": ckpt, "img": images[0], "img2": images[1]}


FILE_SPEC = RerankSpec(exit_layer=2, band=(0, 1), keep_ratio=0.75)
BAD_SPECS = {"not-json": "{not json", "exit-layer": '{"exit_layer": 9}'}  # read by the CLI / by the checkpoint


@pytest.fixture(scope="module")
def runs(workdir):
    """Every command that imports torch (about 2 s each), started at once so that they overlap."""
    w, root = workdir, workdir["root"]
    docs = document_args(w)
    FILE_SPEC.save(root / "spec.json")
    for name, text in BAD_SPECS.items():
        (root / f"bad-{name}.json").write_text(text, encoding="utf-8")
    RerankSpec.tiny().save(root / "tiny-spec.json")
    reference = ["reference", w["ckpt"], "--query", QUERY]
    commands = {
        "default": [*reference, *docs, "--json"],
        "exact": [*reference, *docs, "--json", "--spec", "exact"],
        "file": [*reference, *docs, "--json", "--spec", root / "spec.json"],
        # the same spec as inline JSON and as the individual flags (as for `build`): the same forms everywhere
        "inline": [*reference, *docs, "--json", "--spec", json.dumps(FILE_SPEC.to_dict())],
        "flags": [*reference, *docs, "--json", "--exit-layer", "2", "--band", "0:1", "--keep-ratio", "0.75"],
        "missing-checkpoint": ["reference", root / "no-such-checkpoint", "--query", QUERY, "text:foo"],
        "missing-image": [*reference, "text:foo", root / "missing.png"],
        **{f"bad-{name}": [*reference, "text:foo", "--spec", root / f"bad-{name}.json"] for name in BAD_SPECS},
        "tiny": ["tiny", root / "tiny-out"],
        "tiny-spec": ["tiny", root / "tiny-spec-out", "--preset", "gqa3_odd_head", "--spec", root / "tiny-spec.json"],
    }
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures: dict[str, Future] = {name: pool.submit(run_cli, *cmd) for name, cmd in commands.items()}
        yield futures


def document_args(w: dict[str, Path]) -> list[str]:
    return [str(w["img"]), "text:foo", f"{w['img2']}::text:bar", f"{w['img']}::text:foo"]


def in_process(w: dict[str, Path], spec: RerankSpec | None) -> dict:
    from minireranker.export.reference import reference_scores
    from minireranker.runtime.documents import expand_document_args

    return reference_scores(w["ckpt"], QUERY, expand_document_args(document_args(w)), spec)


def check_result(result: dict, documents: list[str], expected: dict, spec: RerankSpec) -> None:
    assert set(result) == {"query", "spec", "results"}
    assert result["query"] == QUERY
    assert result["spec"] == spec.resolve(4).to_dict()
    results = result["results"]
    assert all(set(r) == {"index", "document", "score", "probability"} for r in results)
    assert sorted(r["index"] for r in results) == list(range(len(documents)))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert r["document"] == documents[r["index"]]
        assert math.isfinite(r["score"])
        assert r["probability"] == pytest.approx(1 / (1 + math.exp(-r["score"])), abs=PROBABILITY_ATOL)
    want = {r["index"]: r["score"] for r in expected["results"]}
    for r in results:
        assert r["score"] == pytest.approx(want[r["index"]], abs=SCORE_ATOL)
    assert len(set(scores)) > 1, "all scores equal: the test would not notice a wrong ordering"


# -- reference ------------------------------------------------------------------------------------
def test_reference_json_uses_the_checkpoint_spec(workdir, runs):
    proc = runs["default"].result()
    assert proc.returncode == 0, proc.stderr
    check_result(json.loads(proc.stdout), document_args(workdir), in_process(workdir, None), RerankSpec.tiny())


def test_reference_spec_exact_overrides_the_checkpoint(workdir, runs):
    proc = runs["exact"].result()
    assert proc.returncode == 0, proc.stderr
    expected = in_process(workdir, RerankSpec.exact())
    check_result(json.loads(proc.stdout), document_args(workdir), expected, RerankSpec.exact())


def test_reference_spec_file(workdir, runs):
    proc = runs["file"].result()
    assert proc.returncode == 0, proc.stderr
    check_result(json.loads(proc.stdout), document_args(workdir), in_process(workdir, FILE_SPEC), FILE_SPEC)


@pytest.mark.parametrize("form", ["inline", "flags"])
def test_reference_spec_inline_json_and_flags_give_the_file_spec(workdir, runs, form):
    proc = runs[form].result()
    assert proc.returncode == 0, proc.stderr
    check_result(json.loads(proc.stdout), document_args(workdir), in_process(workdir, FILE_SPEC), FILE_SPEC)


def test_reference_missing_checkpoint_dir(workdir, runs):
    assert_one_error_line(runs["missing-checkpoint"].result(), str(workdir["root"] / "no-such-checkpoint"))


def test_reference_missing_image(workdir, runs):
    assert_one_error_line(runs["missing-image"].result(), str(workdir["root"] / "missing.png"))


def test_reference_spec_file_not_json(runs):
    assert_one_error_line(runs["bad-not-json"].result(), "bad-not-json.json", "not valid JSON")


def test_reference_spec_file_out_of_range_for_the_model(workdir, runs):
    # valid JSON, but the tiny model has layers 0..3: caught when the spec meets the checkpoint
    assert_one_error_line(runs["bad-exit-layer"].result(), str(workdir["ckpt"]), "exit_layer=9", "0..3")


# -- help -----------------------------------------------------------------------------------------
def subcommands() -> list[str]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def test_help():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: minireranker")
    for name in subcommands():
        assert name in proc.stdout


def test_expected_subcommands_exist():
    assert {"reference", "tiny", "demo"} <= set(subcommands())


@pytest.mark.parametrize("name", subcommands())
def test_subcommand_help(name):
    proc = run_cli(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: minireranker {name}")
    assert proc.stderr == ""


def test_installed_console_script_help():
    script = shutil.which("minireranker", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the minireranker console script is not installed beside this interpreter")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: minireranker")


# -- tiny -----------------------------------------------------------------------------------------
def test_tiny_writes_a_loadable_checkpoint(workdir, runs):
    from minireranker.export.checkpoint import expected_shapes, load_state_dict, open_checkpoint

    out = workdir["root"] / "tiny-out"
    proc = runs["tiny"].result()
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    checkpoint = open_checkpoint(out)
    tensors = load_state_dict(checkpoint)
    assert set(expected_shapes(checkpoint.config)) <= set(tensors)
    assert checkpoint.spec == RerankSpec().resolve(checkpoint.config.text.num_layers)
    checkpoint.load_tokenizer()


def test_tiny_copies_the_spec_file(workdir, runs):
    from minireranker.export.checkpoint import open_checkpoint

    out = workdir["root"] / "tiny-spec-out"
    proc = runs["tiny-spec"].result()
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "minireranker.json").read_text()) == RerankSpec.tiny().to_dict()
    assert open_checkpoint(out).spec == RerankSpec.tiny().resolve(3)


@pytest.mark.parametrize("args, word", [(["--preset", "nope"], "nope"),
                                        (["--spec", "missing.json"], "missing.json")])
def test_tiny_bad_input(tmp_path, args, word):
    args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    proc = run_cli("tiny", tmp_path / "out", *args)
    assert_one_error_line(proc, word)
