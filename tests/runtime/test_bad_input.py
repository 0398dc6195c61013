"""Bad input (issue 3): each case through the library (``Reranker`` on ``tiny_bundle``) and the command line.

Every message names the input and says what to do; in a batch the other documents are still scored and the
failed ones are listed with their index (in ``--json`` too); the exit status is non-zero when a document
failed; no traceback reaches stderr. Decisions recorded here: a 1x1 image scores (smart resize scales it
up to the minimum area); CMYK, palette-with-alpha and 16-bit images score, equal to the torch reference;
an empty or over-long query is an error, never truncated.

Tests run as root in CI, where file modes do not stop reads or writes. Unreadable files and unwritable
directories are then checked in a child process that first drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
from its bounding set (root then obeys file modes); where that is impossible those tests skip.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import DROP_DAC, assert_one_error_line, run_cli
from PIL import Image

from minireranker.runtime.bundle import BundleError, load_bundle
from minireranker.runtime.documents import Document
from minireranker.runtime.errors import CacheError, TokenizerError
from minireranker.runtime.reranker import MAX_QUERY_TOKENS, Reranker

# Pillow warns from Image.open about an image between 1x and 2x its limit; the runtime then refuses it.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

QUERY = "a cat on a red sofa"
SCORE_ATOL = 1e-4  # runtime (ONNX Runtime, fp32) vs the torch reference: the fp32 tolerance
# Between 1x and 2x Pillow's limit, Pillow itself only warns, then allocates the whole image.
BOMB_SIDE = math.isqrt(int(1.5 * Image.MAX_IMAGE_PIXELS))

# file name -> words its message must hold besides the file name: what was wrong, then what to do
BAD_FILES: dict[str, list[str]] = {
    "truncated.png": ["truncated", "pass a valid JPEG, PNG"],
    "truncated.jpg": ["truncated", "pass a valid JPEG, PNG"],
    "zero-bytes.png": ["empty (0 bytes)", "pass a valid JPEG, PNG"],
    "text-renamed.png": ["cannot be decoded as an image", "pass a valid JPEG, PNG"],
    "bomb.png": ["900,000,000 pixels", "decompression-bomb limit", "MAX_IMAGE_PIXELS", "downscale"],
    "bomb-1x.png": [f"{BOMB_SIDE}x{BOMB_SIDE}", "decompression-bomb limit", "downscale"],
    "wide.png": ["500x2 pixels", "aspect ratio of 250.0:1", "crop it"],
    "symlink-loop.png": ["cannot read", "Too many levels of symbolic links", "readable"],  # unreadable, even by root
}
SCORING_FILES = ["one-pixel.png", "cmyk.jpg", "palette-alpha.png", "sixteen-bit.png"]
GOOD_FILES = ["good-1.png", "good-2.jpg"]

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with one tiny compressed row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1)))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory, images) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    photo = images["chelsea_128x100"]
    out = {name: root / name for name in [*BAD_FILES, *SCORING_FILES, *GOOD_FILES]}
    images["astronaut_70x45"].save(out["good-1.png"])
    images["rocket_128x128"].save(out["good-2.jpg"])
    png, jpeg = encoded(photo, "PNG"), encoded(photo, "JPEG")
    out["truncated.png"].write_bytes(png[: len(png) // 2])
    out["truncated.jpg"].write_bytes(jpeg[: len(jpeg) // 2])
    out["zero-bytes.png"].write_bytes(b"")
    out["text-renamed.png"].write_text("minutes of the meeting, not an image\n", encoding="utf-8")
    out["bomb.png"].write_bytes(png_header_only(30000, 30000))
    out["bomb-1x.png"].write_bytes(png_header_only(BOMB_SIDE, BOMB_SIDE))
    Image.fromarray(np.asarray(photo.resize((500, 2)))).save(out["wide.png"])
    os.symlink(root / "loop-b.png", out["symlink-loop.png"])
    os.symlink(out["symlink-loop.png"], root / "loop-b.png")
    Image.new("RGB", (1, 1), (200, 30, 40)).save(out["one-pixel.png"])
    photo.convert("CMYK").save(out["cmyk.jpg"])
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(out["palette-alpha.png"], transparency=bytes(range(0, 256, 4)))  # alpha per palette entry
    ramp = np.linspace(0, 65535, 96 * 80).reshape(80, 96).astype(np.uint16)
    Image.fromarray(ramp).save(out["sixteen-bit.png"])
    assert [Image.open(out[n]).mode for n in SCORING_FILES[1:]] == ["CMYK", "P", "I;16"]
    assert isinstance(Image.open(out["palette-alpha.png"]).info["transparency"], bytes)
    return out


@pytest.fixture(scope="module")
def reranker(tiny_bundle, tmp_path_factory):
    with Reranker(tiny_bundle, tmp_path_factory.mktemp("cache")) as r:
        yield r


@pytest.fixture(scope="module")
def bundle_v99(tiny_bundle, tmp_path_factory) -> Path:
    """A copy of ``tiny_bundle`` whose bundle.json claims schema version 99."""
    out = tmp_path_factory.mktemp("bundle-v99") / "bundle"
    shutil.copytree(tiny_bundle, out)
    data = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    data["schema_version"] = 99
    (out / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    return out


def check_failure_message(error: str, name: str, parts: list[str]) -> None:
    missing = [p for p in [name, *parts] if p not in error]
    assert not missing, f"{error!r} lacks {missing}"


# == the library ==================================================================================
@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_fails_alone_and_the_others_score(reranker, files, name):
    bad = Document(image=files[name])
    docs = [Document(image=files["good-1.png"]), bad, Document(text="a red sofa in a living room")]
    out = reranker.rerank(QUERY, docs)
    assert [(f.index, f.document) for f in out.failed] == [(1, str(files[name]))]
    check_failure_message(out.failed[0].error, name, BAD_FILES[name])
    assert sorted(r.index for r in out.results) == [0, 2]
    assert all(math.isfinite(r.score) for r in out.results)

    report = reranker.index(docs)  # the same through index
    assert [(f.index, f.document) for f in report.failed] == [(1, str(files[name]))]
    assert report.indexed + report.skipped == 2
    if name != "symlink-loop.png":  # its content (the cache key) cannot be read at all
        assert reranker.key(bad) not in reranker.store


def test_decompression_bomb_as_bytes(reranker, files):
    out = reranker.rerank(QUERY, [Document(image=files["bomb.png"].read_bytes()), Document(text="a red sofa")])
    assert [f.index for f in out.failed] == [0] and [r.index for r in out.results] == [1]
    check_failure_message(out.failed[0].error, "image bytes", BAD_FILES["bomb.png"])


def test_one_batch_of_every_file(tiny_bundle, tmp_path, files):
    names = [GOOD_FILES[0], *BAD_FILES, *SCORING_FILES, GOOD_FILES[1]]
    docs = [Document(image=files[n]) for n in names]
    bad = {i for i, n in enumerate(names) if n in BAD_FILES}
    with Reranker(tiny_bundle, tmp_path / "cache") as r:
        report = r.index(docs)
        assert report.indexed == len(names) - len(bad) and report.skipped == 0
        assert {f.index for f in report.failed} == bad
        out = r.rerank(QUERY, docs)
    assert {f.index for f in out.failed} == bad
    assert sorted(r.index for r in out.results) == sorted(set(range(len(names))) - bad)
    for f in out.failed:
        check_failure_message(f.error, names[f.index], BAD_FILES[names[f.index]])


def test_1x1_cmyk_palette_alpha_and_16_bit_images_score_as_the_reference(reranker, files, checkpoint_factory):
    """A 1x1 image is scaled up to the minimum area (smart resize) and scores; the modes convert to RGB."""
    pytest.importorskip("torch")
    from minireranker.export.reference import reference_scores

    docs = [Document(image=files[n]) for n in SCORING_FILES]
    out = reranker.rerank(QUERY, docs)
    assert out.failed == []
    reference = reference_scores(checkpoint_factory("tiny"), QUERY, docs, reranker.spec)
    want = {r["index"]: r["score"] for r in reference["results"]}
    assert sorted(r.index for r in out.results) == sorted(want) == list(range(len(docs)))
    for r in out.results:
        assert r.score == pytest.approx(want[r.index], abs=SCORE_ATOL), SCORING_FILES[r.index]


def test_1x1_image_is_scaled_up_to_the_minimum_area(reranker, files):
    from minireranker.runtime.preprocess import preprocess_image

    config = reranker.bundle.preprocess
    _, (_, grid_h, grid_w) = preprocess_image(files["one-pixel.png"], config)
    assert grid_h * grid_w * config.patch_size**2 >= config.min_pixels
    assert grid_h % config.merge_size == 0 and grid_w % config.merge_size == 0


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query(reranker, files, query):
    with pytest.raises(TokenizerError, match="query is empty.*non-empty"):
        reranker.rerank(query, [Document(image=files["good-1.png"])])


def test_over_long_query_is_an_error_not_truncated(reranker, files):
    at_limit = " ".join(["red"] * MAX_QUERY_TOKENS)
    assert len(reranker.encoder.tokenizer.encode(at_limit, add_special_tokens=False).ids) == MAX_QUERY_TOKENS
    out = reranker.rerank(at_limit, [Document(image=files["good-1.png"])])
    assert out.failed == [] and len(out.results) == 1
    with pytest.raises(TokenizerError, match=rf"{MAX_QUERY_TOKENS + 1} tokens long; the limit is "
                                             rf"{MAX_QUERY_TOKENS}: shorten it"):
        reranker.rerank(at_limit + " red", [Document(image=files["good-1.png"])])


@pytest.mark.parametrize("unknown", ["no-such-doc", Document(id="no-such-doc")])
def test_unknown_document_id(reranker, files, unknown):
    out = reranker.rerank(QUERY, [Document(image=files["good-1.png"]), unknown])
    assert [r.index for r in out.results] == [0]
    assert [(f.index, f.document) for f in out.failed] == [(1, "no-such-doc")]
    check_failure_message(out.failed[0].error, "'no-such-doc'", ["not in the cache", "index it"])


def test_bundle_from_a_newer_schema_version(bundle_v99, tmp_path):
    for load in (load_bundle, lambda path: Reranker(path, tmp_path / "cache")):
        with pytest.raises(BundleError) as info:
            load(bundle_v99)
        check_failure_message(str(info.value), str(bundle_v99 / "bundle.json"),
                              ["schema version 99", "newer than this runtime reads (4)", "upgrade minireranker"])
    assert not (tmp_path / "cache").exists()


def test_cache_directory_under_a_regular_file(tiny_bundle, tmp_path):
    (tmp_path / "file.txt").write_text("a file, not a directory\n")
    with pytest.raises(CacheError) as info:
        Reranker(tiny_bundle, tmp_path / "file.txt" / "cache")
    check_failure_message(str(info.value), str(tmp_path / "file.txt" / "cache"), ["choose a writable location"])


def test_cache_path_that_is_a_file(tiny_bundle, tmp_path):
    (tmp_path / "cache").write_text("a file\n")
    with pytest.raises(CacheError, match="is a file, not a directory; pass a directory"):
        Reranker(tiny_bundle, tmp_path / "cache")


# -- file modes (root: in a child without the DAC capabilities) ------------------------------------
def run_without_dac(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DROP_DAC, sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def modes(tmp_path_factory, files) -> dict[str, Path]:
    """An unreadable image (mode 000) and a read-only empty directory (mode 500), if modes can bind here."""
    root = tmp_path_factory.mktemp("modes")
    unreadable = root / "unreadable.png"
    shutil.copy(files["good-2.jpg"], unreadable)
    unreadable.chmod(0)
    readonly = root / "readonly"
    readonly.mkdir(mode=0o500)
    readonly.chmod(0o500)
    probe = run_without_dac("-c", "import sys; open(sys.argv[1], 'rb')", unreadable)
    if probe.returncode == 0 or "PermissionError" not in probe.stderr:
        pytest.skip(f"file modes do not stop this process from reading (as uid {os.geteuid()}, even without "
                    f"CAP_DAC_OVERRIDE): {probe.stderr.strip()[-300:]}")
    yield {"unreadable": unreadable, "readonly": readonly, "root": root}
    readonly.chmod(0o700)


LIBRARY_UNDER_MODES = """
import json, sys
from minireranker.runtime.documents import Document
from minireranker.runtime.errors import CacheError
from minireranker.runtime.reranker import Reranker
bundle, cache, good, unreadable, readonly = sys.argv[1:]
out = {}
with Reranker(bundle, cache) as r:
    res = r.rerank("a query", [Document(image=good), Document(image=unreadable),
                               Document(image=unreadable, id="with-an-id")])
    out["results"] = [x.index for x in res.results]
    out["failed"] = [[f.index, f.document, f.error] for f in res.failed]
try:
    Reranker(bundle, readonly)
except CacheError as e:
    out["cache_error"] = str(e)
print(json.dumps(out))
"""


def test_unreadable_file_and_unwritable_cache_directory(tiny_bundle, files, modes):
    proc = run_without_dac("-c", LIBRARY_UNDER_MODES, tiny_bundle, modes["root"] / "cache", files["good-1.png"],
                           modes["unreadable"], modes["readonly"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["results"] == [0]
    assert [f[:2] for f in out["failed"]] == [[1, str(modes["unreadable"])], [2, "with-an-id"]]
    for _, _, error in out["failed"]:  # without an id its content is hashed first; with one, it is decoded
        check_failure_message(error, str(modes["unreadable"]), [])
        assert "ermission denied" in error and ("readable" in error or "check its permissions" in error), error
    check_failure_message(out["cache_error"], str(modes["readonly"]), ["not writable", "choose a writable location"])


# == the command line =============================================================================



BATCH = [GOOD_FILES[0], *(n for n in BAD_FILES if n != "symlink-loop.png"), *SCORING_FILES, GOOD_FILES[1]]


@pytest.fixture(scope="module")
def cli(tiny_bundle, files, bundle_v99, tmp_path_factory) -> dict[str, Future]:
    """The command-line cases, started at once (about 1 s each)."""
    root = tmp_path_factory.mktemp("cli-bad")
    (root / "file.txt").write_text("a file, not a directory\n")
    batch = [files[n] for n in BATCH]
    rerank = ["rerank", tiny_bundle, "--query", QUERY]
    good = files["good-1.png"]
    commands = {
        "batch-json": [*rerank, "--cache", root / "c1", *batch, "--json"],
        "batch-table": [*rerank, "--cache", root / "c2", *batch],
        "batch-index": ["index", tiny_bundle, "--cache", root / "c3", *batch],
        "symlink-loop": [*rerank, "--cache", root / "c4", good, files["symlink-loop.png"], "--json"],
        "empty-query": ["rerank", tiny_bundle, "--cache", root / "c5", "--query", "", good],
        "long-query": ["rerank", tiny_bundle, "--cache", root / "c5", "--query", " ".join(["red"] * 600), good],
        "unknown-id": [*rerank, "--cache", root / "c6", good, "--ids", "no-such-doc", "--json"],
        "v99-rerank": ["rerank", bundle_v99, "--cache", root / "c7", "--query", QUERY, good],
        "v99-index": ["index", bundle_v99, "--cache", root / "c7", good],
        "v99-inspect": ["inspect", bundle_v99],
        "cache-under-file": [*rerank, "--cache", root / "file.txt" / "cache", good],
    }
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        yield {name: pool.submit(run_cli, *cmd) for name, cmd in commands.items()}


def no_traceback(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_batch_json_lists_failures_with_their_index(cli, files):
    proc = no_traceback(cli["batch-json"].result())
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    bad = {i: n for i, n in enumerate(BATCH) if n in BAD_FILES}
    assert sorted(r["index"] for r in out["results"]) == sorted(set(range(len(BATCH))) - set(bad))
    assert sorted(f["index"] for f in out["failed"]) == sorted(bad)
    for f in out["failed"]:
        assert set(f) == {"index", "document", "error"}
        assert f["document"] == str(files[bad[f["index"]]])
        check_failure_message(f["error"], bad[f["index"]], BAD_FILES[bad[f["index"]]])
        assert f"failed [{f['index']}] {f['document']}: " in proc.stderr  # and on stderr for people


def test_cli_batch_table_scores_the_others_and_exits_1(cli, files):
    proc = no_traceback(cli["batch-table"].result())
    assert proc.returncode == 1, proc.stderr
    listed = [line.split("] ", 1)[1] for line in proc.stdout.splitlines() if ". score " in line]
    assert sorted(listed) == sorted(str(files[n]) for n in BATCH if n not in BAD_FILES)
    for i, name in enumerate(BATCH):
        if name in BAD_FILES:
            assert f"failed [{i}] {files[name]}: " in proc.stderr


def test_cli_index_batch_summary_and_exit_1(cli, files):
    proc = no_traceback(cli["batch-index"].result())
    assert proc.returncode == 1, proc.stderr
    n_bad = sum(n in BAD_FILES for n in BATCH)
    assert f"indexed {len(BATCH) - n_bad}, skipped 0 (already cached), failed {n_bad} in " in proc.stdout
    for i, name in enumerate(BATCH):
        if name in BAD_FILES:
            line = next(x for x in proc.stderr.splitlines() if x.strip().startswith(f"failed [{i}] "))
            check_failure_message(line, name, BAD_FILES[name])


def test_cli_unreadable_symlink_loop(cli, files):
    # A DOC argument that is not a readable file is a usage error of the whole command (as a missing file)
    assert_one_error_line(cli["symlink-loop"].result(), str(files["symlink-loop.png"]), "no such image file")


def test_cli_empty_query(cli):
    assert_one_error_line(cli["empty-query"].result(), "query is empty", "non-empty --query")


def test_cli_over_long_query(cli):
    assert_one_error_line(cli["long-query"].result(), "600 tokens", f"limit is {MAX_QUERY_TOKENS}", "shorten it")


def test_cli_unknown_id(cli):
    proc = no_traceback(cli["unknown-id"].result())
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert [r["index"] for r in out["results"]] == [0]
    assert [(f["index"], f["document"]) for f in out["failed"]] == [(1, "no-such-doc")]
    check_failure_message(out["failed"][0]["error"], "'no-such-doc'", ["not in the cache", "index it"])


@pytest.mark.parametrize("command", ["v99-rerank", "v99-index", "v99-inspect"])
def test_cli_bundle_from_a_newer_schema_version(cli, bundle_v99, command):
    assert_one_error_line(cli[command].result(), str(bundle_v99 / "bundle.json"), "schema version 99",
                          "upgrade minireranker")


def test_cli_cache_directory_under_a_regular_file(cli):
    assert_one_error_line(cli["cache-under-file"].result(), "file.txt/cache", "choose a writable location")


def test_cli_unreadable_file_and_unwritable_cache_directory(tiny_bundle, files, modes):
    good, rerank = files["good-1.png"], ["-m", "minireranker.tools.cli", "rerank", tiny_bundle, "--query", QUERY]
    unreadable = run_without_dac(*rerank, "--cache", modes["root"] / "cli-cache", good, modes["unreadable"], "--json")
    no_traceback(unreadable)
    assert unreadable.returncode == 1, unreadable.stderr
    out = json.loads(unreadable.stdout)
    assert [r["index"] for r in out["results"]] == [0] and [f["index"] for f in out["failed"]] == [1]
    check_failure_message(out["failed"][0]["error"], str(modes["unreadable"]), ["permission denied",
                                                                               "check its permissions"])
    assert_one_error_line(run_without_dac(*rerank, "--cache", modes["readonly"], good), str(modes["readonly"]),
                          "not writable", "choose a writable location")
