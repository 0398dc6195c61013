"""Issue 13 on the command line: finding 3 (a too-long document is one line, no traceback) and finding 11
(``--top-k`` >= 1, ``--max-cache-bytes`` sizes, ``--max-document-tokens``, declined entries reported apart).
The library side is tests/runtime/test_hostile_input.py.
"""

from __future__ import annotations

import argparse

import pytest
from cli_helpers import run_cli

from minireranker.tools.args import parse_size, positive_int
from minireranker.tools.cli import build_parser

QUERY = "a cat on a red sofa"


def subparser(name: str) -> argparse.ArgumentParser:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


@pytest.mark.parametrize("text, expected", [
    ("1048576", 1048576), ("512M", 512 << 20), ("20G", 20 << 30), ("1.5GiB", 3 << 29), ("64kb", 64 << 10),
    ("2 GiB", 2 << 30), ("1t", 1 << 40), ("7", 7), (".5K", 512), ("3MB", 3 << 20),
])
def test_finding11_parse_size_accepts_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "20X", "-5", "0", "0.1", "1..5G", "5iB", "1e9", "20 G B"])
def test_finding11_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        parse_size(text)


def test_finding11_max_cache_bytes_20g_is_accepted():
    for command in ("rerank", "index"):
        extra = ["--query", "q"] if command == "rerank" else ["text:x"]
        args = subparser(command).parse_args(["b", "--cache", "c", "--max-cache-bytes", "20G", *extra])
        assert args.max_cache_bytes == 20 * 1024 ** 3


@pytest.mark.parametrize("flag, value", [("--top-k", "-1"), ("--top-k", "0"), ("--max-document-tokens", "0"),
                                         ("--max-document-tokens", "many"), ("--max-cache-bytes", "20X")])
def test_finding11_bad_values_are_argparse_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        subparser("rerank").parse_args(["b", "--cache", "c", "--query", "q", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err, err


def test_finding11_positive_int():
    assert positive_int("3") == 3
    for bad in ("0", "-1", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
            positive_int(bad)


def test_finding3_too_long_document_is_one_line_on_the_command_line(tiny_bundle, tmp_path):
    long_text = "text:" + " ".join(["red"] * 40)
    cache = tmp_path / "cache"
    index = run_cli("index", tiny_bundle, "--cache", cache, "--quiet", "--max-document-tokens", 12,
                    "text:a red sofa", long_text)
    assert "Traceback" not in index.stderr and index.returncode == 1, index.stderr
    assert "indexed 1, skipped 0 (already cached), failed 1 " in index.stdout
    lines = [line for line in index.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("  failed [1] text:red red") and "max_document_tokens=12" in lines[0]
    rerank = run_cli("rerank", tiny_bundle, "--cache", cache, "--query", QUERY, "--max-document-tokens", 12,
                     "text:a red sofa", long_text, "--top-k", 5)
    assert "Traceback" not in rerank.stderr and rerank.returncode == 1, rerank.stderr
    assert "[0] text:a red sofa" in rerank.stdout and "[1]" not in rerank.stdout
    lines = [line for line in rerank.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("failed [1] text:red red") and "--max-document-tokens" in lines[0]


def test_finding11_declined_entry_is_reported_apart(tiny_bundle, tmp_path):
    proc = run_cli("index", tiny_bundle, "--cache", tmp_path / "cache", "--quiet", "--max-cache-bytes", "1K",
                   "text:a red sofa")
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    assert "indexed 0, skipped 0 (already cached), failed 0, not stored 1 (over the cache bound)" in proc.stdout
    assert "not stored [0] text:a red sofa" in proc.stderr and "max_cache_bytes=1,024" in proc.stderr
