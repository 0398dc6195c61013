"""``minireranker build / index / rerank / inspect`` run as real processes on the tiny checkpoint.

Every command is a subprocess of ``python -m minireranker.tools.cli`` (about 2 s each, 15-20 s for a
build), so independent commands are started together from module fixtures and the tests read their
results. Order: the two builds, the reference and the quick commands at once; then, on the flag-built
bundle, ``index`` twice in a row beside the fresh-cache reranks and the inspects; then the reranks by id.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_cli

from minireranker.runtime.spec import RerankSpec
from minireranker.tools.cli import build_parser

QUERY = "a cat on a red sofa"
TEXT_DOC = "text:a timetable of the red buses"
SCORE_ATOL = 1e-4      # runtime (ONNX Runtime, fp32) vs the torch reference: the fp32 tolerance
SAME_RUNTIME_ATOL = 1e-6  # the same engines on the same K/V, in two processes
TABLE_ATOL = 5e-7 + 1e-6  # the table prints scores with 6 decimals
FLAG_SPEC = RerankSpec(exit_layer=3, band=(1, 2), keep_ratio=0.5, query_position=64)
FILE_SPEC = RerankSpec(exit_layer=2, band=(0, 1), keep_ratio=0.75)
SUMMARY = re.compile(r"^indexed (\d+), skipped (\d+) \(already cached\), failed (\d+) in [\d.]+ s"
                     r"(?: \(([\d.]+) documents/s\))?$", re.M)
TABLE_ROW = re.compile(r"^\s*(\d+)\. score ([+-]\d+\.\d{6})  p=(\d\.\d{4})  \[(\d+)\] (.+)$")



def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stderr[-2000:])
    return proc




def subcommands() -> list[str]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_checkpoint, images) -> dict:
    """Documents in a directory (with a non-image file beside them) and behind a glob, and spec files."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("cli-runtime")
    pages, scans = root / "pages", root / "scans"
    pages.mkdir()
    scans.mkdir()
    images["astronaut_70x45"].save(pages / "a-astronaut.png")
    images["chelsea_128x100"].save(pages / "b-chelsea.jpg")
    (pages / "notes.txt").write_text("not an image: directory expansion skips it\n")
    images["coffee_33x100"].save(scans / "s1-coffee.png")
    images["camera_grey_90x120"].save(scans / "s2-camera.png")
    images["rocket_128x128"].save(scans / "other-rocket.png")  # not matched by the glob
    FLAG_SPEC.save(root / "flag-spec.json")  # for `reference`: the same spec as the build flags
    FILE_SPEC.save(root / "file-spec.json")
    doc_args = [str(pages), str(scans / "s*.png"), TEXT_DOC]
    ids = [str(pages / "a-astronaut.png"), str(pages / "b-chelsea.jpg"), str(scans / "s1-coffee.png"),
           str(scans / "s2-camera.png"), TEXT_DOC]  # what those arguments expand to, in order
    return {"root": root, "ckpt": tiny_checkpoint, "doc_args": doc_args, "ids": ids,
            "flag_bundle": root / "bundle-flags", "file_bundle": root / "bundle-file", "cache": root / "cache"}


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 4)) as executor:
        yield executor


@pytest.fixture(scope="module")
def first(work, pool) -> dict[str, Future]:
    """Both builds, the reference, the conflicting-flag builds and every --help, started at once."""
    w, root = work, work["root"]
    build = ["build", w["ckpt"]]
    commands = {
        "build-flags": [*build, "-o", w["flag_bundle"], "--exit-layer", "3", "--band", "1:2",
                        "--keep-ratio", "0.5", "--query-position", "64"],
        # --no-validate: the flag build validates; this one checks --spec FILE (and saves 5 s of CPU)
        "build-file": [*build, "-o", w["file_bundle"], "--spec", root / "file-spec.json", "--no-validate"],
        "reference": ["reference", w["ckpt"], "--query", QUERY, *w["doc_args"], "--spec", root / "flag-spec.json",
                      "--json"],
        "conflict-exact-band": [*build, "-o", root / "never-1", "--exact", "--band", "0:1"],
        "conflict-spec-flag": [*build, "-o", root / "never-2", "--spec", root / "file-spec.json", "--exit-layer", "2"],
        "bad-band": [*build, "-o", root / "never-3", "--band", "1-2"],
        "help": ["--help"],
        **{f"help-{name}": [name, "--help"] for name in subcommands()},
    }
    return {name: pool.submit(run_cli, *cmd) for name, cmd in commands.items()}


@pytest.fixture(scope="module")
def second(work, pool, first) -> dict[str, Future]:
    """On the flag-built bundle: index twice (in a row) beside fresh-cache reranks and the inspects."""
    ok(first["build-flags"].result())
    ok(first["build-file"].result())
    w, bundle = work, work["flag_bundle"]

    def index_twice() -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        once = run_cli("index", bundle, "--cache", w["cache"], *w["doc_args"])
        return once, run_cli("index", bundle, "--cache", w["cache"], *w["doc_args"])

    def rerank_fresh(cache: str, *extra: str) -> list:  # an empty cache: documents are indexed on the fly
        return ["rerank", bundle, "--cache", w["root"] / cache, "--query", QUERY, *w["doc_args"], *extra]

    commands = {
        "rerank-json": rerank_fresh("fresh-1", "--json"),
        "rerank-table": rerank_fresh("fresh-2"),
        "inspect": ["inspect", bundle],
        "inspect-json": ["inspect", bundle, "--json"],
        "inspect-file-json": ["inspect", w["file_bundle"], "--json"],
    }
    futures = {"index": pool.submit(index_twice)}  # first: the reranks by id wait for it
    futures.update({name: pool.submit(run_cli, *cmd) for name, cmd in commands.items()})
    return futures


@pytest.fixture(scope="module")
def third(work, pool, second) -> dict[str, Future]:
    """Reranks by id of what ``index`` cached."""
    second["index"].result()
    by_ids = ["rerank", work["flag_bundle"], "--cache", work["cache"], "--query", QUERY, "--ids", *work["ids"]]
    commands = {"ids-json": [*by_ids, "--json"], "ids-top2-json": [*by_ids, "--top-k", "2", "--json"],
                "ids-top2-table": [*by_ids, "--top-k", "2"]}
    return {name: pool.submit(run_cli, *cmd) for name, cmd in commands.items()}


def scores_by_index(result: dict) -> dict[int, float]:
    return {r["index"]: r["score"] for r in result["results"]}


def parse_table(stdout: str) -> tuple[str, list[tuple[int, float, float, int, str]], str]:
    lines = stdout.splitlines()
    assert lines[0].startswith("query: "), stdout
    assert lines[-1].startswith("timings: "), stdout
    rows = []
    for line in lines[1:-1]:
        m = TABLE_ROW.match(line)
        assert m, f"not a table row: {line!r}"
        rows.append((int(m[1]), float(m[2]), float(m[3]), int(m[4]), m[5]))
    return lines[0][len("query: "):], rows, lines[-1]


# -- build ----------------------------------------------------------------------------------------
def read_bundle_json(path: Path) -> dict:
    return json.loads((path / "bundle.json").read_text(encoding="utf-8"))


def test_build_with_flags_writes_the_spec_of_the_flags(work, first):
    proc = ok(first["build-flags"].result())
    assert f"bundle written to {work['flag_bundle']}" in proc.stdout + proc.stderr
    data = read_bundle_json(work["flag_bundle"])
    assert data["spec"] == FLAG_SPEC.resolve(data["model"]["num_layers"]).to_dict()
    assert {"vision", "doc_prefix", "query_head", "band", "tail", "guide"} == set(data["graphs"])  # A > 0


def test_build_with_spec_file_writes_that_spec(work, first):
    ok(first["build-file"].result())
    data = read_bundle_json(work["file_bundle"])
    assert data["spec"] == FILE_SPEC.resolve(data["model"]["num_layers"]).to_dict()
    assert "query_head" not in data["graphs"]  # A = 0: the query head is the embedding lookup
    assert data["fingerprint"] != read_bundle_json(work["flag_bundle"])["fingerprint"]


@pytest.mark.parametrize("name, output, parts", [
    ("conflict-exact-band", "never-1", ["--exact", "--band"]),
    ("conflict-spec-flag", "never-2", ["--spec", "--exit-layer"]),
    ("bad-band", "never-3", ["--band must be A:B", "'1-2'"]),
])
def test_build_flag_errors_are_one_line(work, first, name, output, parts):
    assert_one_error_line(first[name].result(), *parts)
    assert not (work["root"] / output).exists(), "a refused build wrote its output directory"


# -- help -----------------------------------------------------------------------------------------
def test_every_help_exits_0(first):
    for name in ["help", *(f"help-{s}" for s in subcommands())]:
        proc = first[name].result()
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)
        assert proc.stdout.startswith("usage: minireranker"), name


def test_runtime_help_names_the_flags(first):
    from minireranker.runtime.reranker import MAX_QUERY_TOKENS

    wanted = {"build": ["--spec", "--exact", "--exit-layer", "--band", "--keep-ratio", "--guide", "--query-position",
                        "--precision", "--attention"],
              "index": ["--cache", "DOC", "--quiet", "glob"],
              "rerank": ["--cache", "--query", "--ids", "--top-k", "--json", f"at most {MAX_QUERY_TOKENS} tokens"],
              "inspect": ["--json"]}
    for name, flags in wanted.items():
        text = " ".join(first[f"help-{name}"].result().stdout.split())  # argparse wraps lines
        assert not [f for f in flags if f not in text], (name, text)


# -- index ----------------------------------------------------------------------------------------
def test_index_expands_directories_and_globs_and_reports_progress(work, second):
    once, _ = second["index"].result()
    ok(once)
    m = SUMMARY.search(once.stdout)
    assert m, once.stdout
    assert (int(m[1]), int(m[2]), int(m[3])) == (len(work["ids"]), 0, 0)  # 2 in pages/, 2 globbed, 1 text
    assert float(m[4]) > 0
    assert "indexing" in once.stderr and "doc/s" in once.stderr  # the progress, with its rate
    assert f"{len(work['ids'])}/{len(work['ids'])}" in once.stderr
    assert "\r" not in once.stderr  # stderr is a pipe here: plain lines, not a redrawn bar


def test_index_again_skips_everything(work, second):
    _, again = second["index"].result()
    ok(again)
    m = SUMMARY.search(again.stdout)
    assert m, again.stdout
    assert (int(m[1]), int(m[2]), int(m[3])) == (0, len(work["ids"]), 0)
    assert m[4] is None  # nothing was encoded, so no rate (not "0.0 documents/s")


# -- rerank ---------------------------------------------------------------------------------------
def test_rerank_json_has_the_reference_schema_and_scores(work, first, second):
    reference = json.loads(ok(first["reference"].result()).stdout)
    result = json.loads(ok(second["rerank-json"].result()).stdout)
    assert set(result) == set(reference) | {"failed"}
    assert result["failed"] == []
    assert result["query"] == reference["query"] == QUERY
    assert result["spec"] == reference["spec"]
    for r, ref in zip(result["results"], reference["results"]):
        assert set(r) == set(ref) == {"index", "document", "score", "probability"}
    assert [r["document"] for r in sorted(result["results"], key=lambda r: r["index"])] == work["ids"]
    want = scores_by_index(reference)
    got = scores_by_index(result)
    assert set(got) == set(want) == set(range(len(work["ids"])))
    for i, score in got.items():
        assert score == pytest.approx(want[i], abs=SCORE_ATOL), work["ids"][i]
    assert [r["index"] for r in result["results"]] == [r["index"] for r in reference["results"]]  # same ranking
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    for r in result["results"]:
        assert r["probability"] == pytest.approx(1 / (1 + math.exp(-r["score"])), abs=1e-12)


def test_rerank_prints_a_table_by_default(work, first, second):
    reference = scores_by_index(json.loads(ok(first["reference"].result()).stdout))
    query, rows, timings = parse_table(ok(second["rerank-table"].result()).stdout)
    assert query == QUERY
    assert [rank for rank, *_ in rows] == list(range(1, len(work["ids"]) + 1))
    for _, score, probability, index, document in rows:
        assert document == work["ids"][index]
        assert score == pytest.approx(reference[index], abs=SCORE_ATOL + TABLE_ATOL)
        assert probability == pytest.approx(1 / (1 + math.exp(-score)), abs=1e-4)
    assert [s for _, s, *_ in rows] == sorted((s for _, s, *_ in rows), reverse=True)
    for stage in ("query_head", "band", "tail"):
        assert re.search(rf"{stage} [\d.]+ ms", timings), timings


def test_rerank_ids_of_indexed_documents(work, second, third):
    fresh = json.loads(ok(second["rerank-json"].result()).stdout)
    result = json.loads(ok(third["ids-json"].result()).stdout)
    assert result["failed"] == []
    assert sorted((r["index"], r["document"]) for r in result["results"]) == list(enumerate(work["ids"]))
    want = scores_by_index(fresh)  # K/V computed on the fly in another process and cache
    for i, score in scores_by_index(result).items():
        assert score == pytest.approx(want[i], abs=SAME_RUNTIME_ATOL), work["ids"][i]


def test_rerank_top_k(work, third):
    full = json.loads(ok(third["ids-json"].result()).stdout)
    top = json.loads(ok(third["ids-top2-json"].result()).stdout)
    assert top["results"] == full["results"][:2]
    _, rows, _ = parse_table(ok(third["ids-top2-table"].result()).stdout)
    assert [(index, document) for *_, index, document in rows] == \
        [(r["index"], r["document"]) for r in full["results"][:2]]


# -- inspect --------------------------------------------------------------------------------------
def test_inspect_prints_spec_graphs_parameters_kv_bytes_and_files(work, second):
    out = ok(second["inspect"].result()).stdout
    data = read_bundle_json(work["flag_bundle"])
    model = data["model"]
    assert "spec: exit layer 3, band [1, 2], keep 0.5, guide self, query position 64" in out
    graph_lines = out.split("graphs:\n")[1].split("parameters active")[0].splitlines()
    assert sorted(line.split()[0] for line in graph_lines) == sorted(data["graphs"])
    for line in graph_lines:
        name = line.split()[0]
        assert f"{data['graphs'][name]['parameters']:,} params" in line
        assert all(f"{i['name']}[" in line for i in data["graphs"][name]["inputs"] + data["graphs"][name]["outputs"])
    per_query = sum(data["graphs"][g]["parameters"] for g in ("query_head", "band", "tail"))
    assert f"parameters active per query (query_head + band + tail): {per_query:,}" in out
    kv_per_token = (2 - 1 + 1) * 2 * model["num_kv_heads"] * model["head_dim"] * 4  # band [1, 2], fp32
    assert f"K/V bytes per kept document token: {kv_per_token:,}" in out
    files = out.split("files:\n")[1].splitlines()
    assert len(files) == len(data["files"])
    for line in files:
        name, size, unit = line.split()
        assert unit == "bytes"
        assert int(size.replace(",", "")) == data["files"][name] == (work["flag_bundle"] / name).stat().st_size


def test_inspect_json_parses(work, second):
    info = json.loads(ok(second["inspect-json"].result()).stdout)
    data = read_bundle_json(work["flag_bundle"])
    assert info["spec"] == data["spec"]
    assert set(info["graphs"]) == set(data["graphs"])
    model = data["model"]
    assert info["kv_bytes_per_token"] == 2 * 2 * model["num_kv_heads"] * model["head_dim"] * 4
    assert 0 < info["parameters_per_query"] < sum(g["parameters"] for g in info["graphs"].values())
    assert info["files"] == data["files"]

    other = json.loads(ok(second["inspect-file-json"].result()).stdout)
    assert other["spec"] == read_bundle_json(work["file_bundle"])["spec"]
    assert other["parameters_per_query"] == sum(other["graphs"][g]["parameters"] for g in ("band", "tail"))
    assert other["kv_bytes_per_token"] == 2 * 2 * model["num_kv_heads"] * model["head_dim"] * 4  # band [0, 1]


def test_inspect_json_into_a_closed_pipe_prints_no_traceback(work, second):
    """`minireranker inspect B --json | head -1`: the reader leaves early; no traceback follows."""
    second["inspect-json"].result()  # the bundle exists
    proc = subprocess.Popen([sys.executable, "-m", "minireranker.tools.cli", "inspect", str(work["flag_bundle"]),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes: its write gets EPIPE
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert stderr == ""
