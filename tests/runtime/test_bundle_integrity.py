"""Bundle integrity (issue 13, finding 6): a damaged or edited bundle never scores silently.

Every case copies the session's tiny bundle into ``tmp_path`` (without its stamp) before damaging it. A
refusal is one line, names the file and says to rebuild with `minireranker build`. Warm loads are counted
in calls of ``sha256_file``, never timed. The checks are described in runtime/bundle.py's docstring.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import DROP_DAC, assert_one_error_line, run_cli
from minireranker.runtime import bundle as bundle_mod
from minireranker.runtime.bundle import (
    BundleError,
    BundleIntegrityError,
    cache_namespace,
    load_bundle,
    meta_checksum,
)
from minireranker.runtime.documents import Document
from minireranker.runtime.reranker import Reranker

DOCS = [Document(text="a red sofa in a bright room", id="sofa"), Document(text="a cat asleep on a mat", id="cat")]
QUERY = "which document shows furniture?"


@pytest.fixture
def bundle(tiny_bundle, tmp_path, monkeypatch) -> Path:
    """A private copy of the tiny bundle; the user cache folder is under ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns(bundle_mod.STAMP_FILE))
    return out


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The files ``sha256_file`` hashes, in order; stamps are trusted at once (no racy window)."""
    calls: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda path: calls.append(Path(path).name) or real(path))
    monkeypatch.setattr(bundle_mod, "RACY_NS", 0)
    return calls


def read_json(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))


def write_json(bundle: Path, data: dict, reseal: bool = False) -> None:
    """Write bundle.json; ``reseal``: recompute its meta_sha256 (an edit made to look consistent)."""
    if reseal:
        data["meta_sha256"] = meta_checksum(data)
    (bundle / "bundle.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def flip_byte(path: Path) -> None:
    """Change one byte in the middle of the file; its size stays."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def refused(bundle: Path, *parts: str, kind: type = BundleIntegrityError) -> str:
    """Both the loader and the Reranker refuse ``bundle`` in one line holding ``parts`` and the rebuild hint."""
    for load in (load_bundle, lambda path: Reranker(path, path.parent / "cache")):
        with pytest.raises(kind) as info:
            load(bundle)
        message = str(info.value)
        missing = [p for p in [*parts, "minireranker build"] if p not in message]
        assert "\n" not in message and not missing, (message, missing)
    assert not (bundle.parent / "cache").exists()  # refused before the store opens
    return message


def as_schema_3(bundle: Path) -> dict:
    """bundle.json as written before checksums (schema 3): no sha256, no meta_sha256."""
    data = read_json(bundle)
    data["schema_version"] = 3
    del data["sha256"], data["meta_sha256"]
    write_json(bundle, data)
    return data


# == what the build records =======================================================================
def test_build_records_every_file_size_and_sha256(bundle, hashes):
    data = read_json(bundle)
    assert data["schema_version"] == 4 and data["meta_sha256"] == meta_checksum(data)
    assert set(data["sha256"]) == set(data["files"]) and len(data["files"]) >= 10
    for name, digest in data["sha256"].items():
        assert len(digest) == 64 and digest == bundle_mod.sha256_file(bundle / name), name
    loaded = load_bundle(bundle)
    assert loaded.integrity["checked"] == "sha256" and loaded.integrity["files"] == len(data["files"])


# == damaged files ================================================================================
@pytest.mark.parametrize("name", ["onnx/tail.onnx", "system_k.npy", "onnx/doc_prefix.onnx", "embed_tokens.npy"])
def test_a_same_size_byte_flip_is_refused(bundle, name):
    size = (bundle / name).stat().st_size
    flip_byte(bundle / name)
    assert (bundle / name).stat().st_size == size
    refused(bundle, str(bundle / name), "is damaged", "sha256")


@pytest.mark.parametrize("name", ["onnx/vision.onnx", "instruction_k.npy"])
def test_a_truncated_file_is_refused(bundle, name):
    size = (bundle / name).stat().st_size
    with open(bundle / name, "r+b") as f:
        f.truncate(size - 7)
    refused(bundle, str(bundle / name), f"{size - 7} bytes, bundle.json records {size}")


def test_a_missing_file_is_refused(bundle):
    (bundle / "instruction_v.npy").unlink()
    refused(bundle, "missing", "instruction_v.npy", kind=BundleError)


@pytest.mark.parametrize("content", ["", "{not a tokenizer", None])
def test_an_empty_or_invalid_tokenizer_is_refused(bundle, content):
    path = bundle / "tokenizer.json"
    if content is None:  # the same size: every byte a space
        content = " " * path.stat().st_size
    path.write_text(content, encoding="utf-8")
    refused(bundle, str(path), "is damaged")


# == edits to bundle.json =========================================================================
EDITS = {
    "query_position": lambda d: d["spec"].update(query_position=d["spec"]["query_position"] + 32),
    "exit_layer": lambda d: d["spec"].update(exit_layer=2, band=[1, 2]),
    "exit_layer_out_of_range": lambda d: d["spec"].update(exit_layer=99),
    "band_out_of_range": lambda d: d["spec"].update(band=[1, 9]),
    "template": lambda d: d["template"].update(yes_id=d["template"]["no_id"]),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_bundle_json_is_refused(bundle, edit):
    data = read_json(bundle)
    EDITS[edit](data)
    write_json(bundle, data)
    refused(bundle, str(bundle / "bundle.json"), "was edited after the build")


@pytest.mark.parametrize("text", ['{"schema_version": 4, "fingerprint": ', "[1, 2]", "\x00\x01"])
def test_a_malformed_bundle_json_is_refused(bundle, text):
    (bundle / "bundle.json").write_text(text, encoding="utf-8")
    refused(bundle, str(bundle / "bundle.json"), kind=BundleError)


@pytest.mark.parametrize("edit, message", [
    ("exit_layer", "shape"),                      # fits the model, not the stored system K/V
    ("exit_layer_out_of_range", "outside the model's layers"),
    ("band_out_of_range", "past exit_layer"),
])
def test_a_schema_3_bundle_loads_with_a_warning_and_an_impossible_spec_is_refused(bundle, tiny_bundle, caplog, edit,
                                                                                 message):
    """Bundles written before checksums are read, their files checked by size (said once); a spec edited
    out of what the model and the stored arrays hold is still refused, in one line."""
    data = as_schema_3(bundle)
    with caplog.at_level("WARNING", logger="minireranker.runtime"):
        loaded = load_bundle(bundle)
        load_bundle(bundle)
    assert loaded.integrity == {"checked": "size", "files": len(data["files"]), "hashed": 0, "stamp": None}
    assert caplog.text.count("checked by size only") == 1
    with open(bundle / "system_v.npy", "r+b") as f:  # sizes are still checked
        f.truncate(100)
    refused(bundle, "system_v.npy", "bytes, bundle.json records")
    shutil.copy(tiny_bundle / "system_v.npy", bundle / "system_v.npy")
    load_bundle(bundle)
    EDITS[edit](data)
    write_json(bundle, data)
    refused(bundle, str(bundle / "bundle.json") if edit != "exit_layer" else "system_k.npy", message, kind=BundleError)


def test_a_spec_edit_in_a_schema_3_bundle_changes_the_namespace(bundle):
    """Without checksums a same-value edit cannot be refused, but it cannot read the original's entries."""
    data = as_schema_3(bundle)
    before = load_bundle(bundle).namespace
    EDITS["query_position"](data)
    write_json(bundle, data)
    assert load_bundle(bundle).namespace != before


# == the stamp: warm loads ========================================================================
def test_warm_loads_hash_only_files_that_changed(bundle, hashes):
    count = len(read_json(bundle)["files"])
    first = load_bundle(bundle)
    assert len(hashes) == count and first.integrity["stamp"] == str(bundle / bundle_mod.STAMP_FILE)
    second = load_bundle(bundle)
    assert len(hashes) == count and second.integrity["hashed"] == 0  # unchanged: a stat each, no hashing
    stat = (bundle / "system_k.npy").stat()
    os.utime(bundle / "system_k.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_bundle(bundle).integrity["hashed"] == 1 and hashes[-1] == "system_k.npy"
    assert len(hashes) == count + 1
    # a same-size change after a warm load is seen: its stat no longer matches the stamp
    flip_byte(bundle / "onnx" / "tail.onnx")
    stat = (bundle / "onnx" / "tail.onnx").stat()
    os.utime(bundle / "onnx" / "tail.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    refused(bundle, "tail.onnx", "is damaged")


def test_a_file_changed_just_before_it_was_hashed_is_hashed_again(bundle, monkeypatch):
    """File times can be coarser than a write: a file whose mtime or ctime is within RACY_NS of its check
    is not stamped (the copy just made them all recent), so the next load hashes it again."""
    calls: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda path: calls.append(Path(path).name) or real(path))
    count = len(read_json(bundle)["files"])
    load_bundle(bundle)
    load_bundle(bundle)
    assert len(calls) == 2 * count


def test_a_copied_stamp_is_not_trusted(bundle, hashes, tmp_path):
    """The stamp names the bundle's path and each file's inode: a copy of a verified bundle, stamp
    included, is hashed again."""
    load_bundle(bundle)
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    assert (copy / bundle_mod.STAMP_FILE).is_file()
    before = len(hashes)
    assert load_bundle(copy).integrity["hashed"] == len(read_json(copy)["files"]) == len(hashes) - before


def test_the_user_cache_place_follows_xdg_and_ignores_a_relative_value(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg, base in [(str(tmp_path / "xdg"), tmp_path / "xdg"), ("relative/cache", tmp_path / "home" / ".cache"),
                      ("", tmp_path / "home" / ".cache")]:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        local, user = bundle_mod.stamp_places(tmp_path / "b")
        assert local == tmp_path / "b" / bundle_mod.STAMP_FILE and user.parent == base / "minireranker" / "bundles"
    assert bundle_mod.stamp_places(tmp_path / "a")[1] != bundle_mod.stamp_places(tmp_path / "b")[1]


LOAD_TWICE = """
import json, sys
from minireranker.runtime import bundle
bundle.RACY_NS = 0
print(json.dumps([bundle.load_bundle(sys.argv[1]).integrity for _ in range(2)]))
"""


def load_read_only(path: Path, xdg: Path) -> tuple[list[dict], str]:
    """Load ``path`` twice in a child that obeys file modes, with the bundle folder read-only."""
    tree = [path, *path.rglob("*")]
    for p in tree:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        proc = subprocess.run([sys.executable, "-c", DROP_DAC, sys.executable, "-c", LOAD_TWICE, str(path)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "XDG_CACHE_HOME": str(xdg)})
    finally:
        for p in tree:
            p.chmod(0o755 if p.is_dir() else 0o644)
    if proc.returncode != 0 and "cannot drop capability" in proc.stderr:
        pytest.skip(f"cannot drop the DAC capabilities here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_a_read_only_bundle_keeps_its_stamp_in_the_user_cache(bundle, tmp_path):
    count = len(read_json(bundle)["files"])
    (first, second), stderr = load_read_only(bundle, tmp_path / "xdg")
    place = bundle_mod.stamp_places(bundle)[1]
    assert str(place).startswith(str(tmp_path / "xdg" / "minireranker" / "bundles")) and place.is_file()
    assert first == {"checked": "sha256", "files": count, "hashed": count, "stamp": str(place)}
    assert second == {**first, "hashed": 0}
    assert not (bundle / bundle_mod.STAMP_FILE).exists() and stderr == ""


def test_a_stamp_that_cannot_be_written_means_hashing_every_load_said_once(bundle, tmp_path):
    (tmp_path / "xdg-file").write_text("a file where the cache folder would be\n")
    count = len(read_json(bundle)["files"])
    (first, second), stderr = load_read_only(bundle, tmp_path / "xdg-file")
    assert first == second == {"checked": "sha256", "files": count, "hashed": count, "stamp": None}
    assert stderr.count("cannot record the verified checksums") == 1 and "every load hashes" in stderr


# == the K/V namespace ============================================================================
def test_an_edited_bundle_never_reads_entries_written_under_the_original(bundle, tmp_path):
    """Edits made consistent (bundle.json resealed) load, but under another namespace: the original's
    entries are not read."""
    cache = tmp_path / "cache"
    with Reranker(bundle, cache) as r:
        assert r.index(DOCS).indexed == 2
        original = r.store.config.fingerprint
    with Reranker(bundle, cache) as r:  # the control: the same bundle reads its entries
        assert r.store.config.fingerprint == original and len(r.store.keys()) == 2
    data = read_json(bundle)
    EDITS["query_position"](data)
    write_json(bundle, data, reseal=True)
    with Reranker(bundle, cache) as r:
        assert r.store.config.fingerprint != original and r.store.keys() == []
        assert r.index(DOCS).indexed == 2  # computed again, not read
        edited = r.store.config.fingerprint
    flip_byte(bundle / "system_k.npy")  # a changed array, its checksum re-recorded
    data = read_json(bundle)
    data["sha256"]["system_k.npy"] = bundle_mod.sha256_file(bundle / "system_k.npy")
    write_json(bundle, data, reseal=True)
    with Reranker(bundle, cache) as r:
        assert r.store.config.fingerprint not in (original, edited) and r.store.keys() == []


def test_the_namespace_follows_what_shapes_the_entries_only(bundle):
    """The per-query graphs (query_head, band, tail) shape no entry: an int8 bundle shares a float one's."""
    b = load_bundle(bundle)
    sums = b.data["sha256"]
    assert cache_namespace(b.data, b.spec, sums) == b.namespace
    assert cache_namespace(b.data, b.spec, {**sums, "onnx/tail.onnx": "0" * 64}) == b.namespace
    assert cache_namespace(b.data, b.spec, {**sums, "onnx/doc_prefix.onnx": "0" * 64}) != b.namespace
    assert cache_namespace(b.data, b.spec, {**sums, "tokenizer.json": "0" * 64}) != b.namespace


# == the command line =============================================================================
def test_inspect_reports_integrity_and_refuses_a_damaged_bundle(bundle):
    count = len(read_json(bundle)["files"])
    out = run_cli("inspect", bundle)
    assert out.returncode == 0, out.stderr
    assert f"integrity: sha256 of {count} files verified ({count} hashed now" in out.stdout
    info = json.loads(run_cli("inspect", bundle, "--json").stdout)["integrity"]
    assert info["checked"] == "sha256" and info["schema_version"] == 4 and info["files"] == count
    flip_byte(bundle / "onnx" / "tail.onnx")
    assert_one_error_line(run_cli("inspect", bundle), str(bundle / "onnx" / "tail.onnx"), "is damaged",
                          "minireranker build")
