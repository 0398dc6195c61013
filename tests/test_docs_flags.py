"""Every shell example in README.md and docs/*.md uses commands and flags that exist.

Each fenced block that is not Python, JSON or YAML is read as shell: continuation lines are joined,
comments dropped, and each `minireranker SUBCOMMAND ...` (also after `&&`, `|`, `;`, `$ ` or `VAR=value`)
is checked against the real parser: the subcommand exists and every `-x`/`--flag` it writes is one of
that subcommand's options. `python benchmarks/NAME.py ...` lines are checked against the script's
``--help``. A flag renamed or removed in the code then fails here, naming the file and the line.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_SHELL = {"python", "json", "jsonl", "yaml", "toml", "text", "ini", "http"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def shell_commands(text: str) -> list[list[str]]:
    """The commands of every shell block in ``text``, each split into words (comments dropped)."""
    commands = []
    for language, body in FENCE.findall(text):
        if language.lower() in NOT_SHELL:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote: not a command line (output, a table)
                continue
            command: list[str] = []
            for word in words + [";"]:
                if word in {"&&", "||", "|", ";"} or word.endswith(";"):
                    if word.endswith(";") and word != ";":
                        command.append(word[:-1])
                    commands.append(command)
                    command = []
                else:
                    command.append(word)
    prose = FENCE.sub("", text)  # inline examples in the prose: `minireranker SUBCOMMAND ...`
    for span in re.findall(r"`(minireranker [^`\n]+)`", prose):
        try:
            commands.append(shlex.split(span, comments=True))
        except ValueError:
            continue
    return [c for c in commands if c]


def strip_env(words: list[str]) -> list[str]:
    """``VAR=value ... cmd args`` -> ``cmd args``."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words


@lru_cache(maxsize=1)
def subcommand_options() -> dict[str, set[str]]:
    from minireranker.tools.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


@lru_cache(maxsize=None)
def script_help(script: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-500:]}"
    return out.stdout


def flags_of(words: list[str]) -> list[str]:
    words = [w.strip("[]|") for w in words]  # `[--exit-head]`, `--a|--b`: optional flags are flags too
    return [w.split("=", 1)[0] for w in words if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]


def examples() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for words in shell_commands(path.read_text(encoding="utf-8")):
            words = strip_env(words)
            if words and (words[0] == "minireranker" or (words[0].startswith("python") and len(words) > 1
                                                          and words[1].startswith("benchmarks/"))):
                found.append((path.relative_to(ROOT).as_posix(), words))
    return found


EXAMPLES = examples()


def test_the_docs_have_examples_to_check():
    commands = {words[1] for _, words in EXAMPLES if words[0] == "minireranker" and len(words) > 1}
    # the walkthrough's commands, at least: a parser that found nothing would pass every check below
    assert {"build", "index", "rerank", "serve", "bench", "eval", "calibrate", "adapt"} <= commands, commands
    assert any(words[0].startswith("python") for _, words in EXAMPLES)


@pytest.mark.parametrize("where, words", EXAMPLES, ids=[f"{w}:{' '.join(c[:3])}" for w, c in EXAMPLES])
def test_every_example_uses_flags_that_exist(where, words):
    if words[0] == "minireranker":
        options = subcommand_options()
        if len(words) == 1 or words[1].startswith("-"):  # `minireranker --version`, `minireranker --help`
            assert set(flags_of(words[1:])) <= {"--version", "--help", "-h"}, (where, words)
            return
        assert words[1] in options, f"{where}: no subcommand {words[1]!r} in: {' '.join(words)}"
        unknown = [f for f in flags_of(words[2:]) if f not in options[words[1]]]
        assert not unknown, f"{where}: minireranker {words[1]} has no {unknown} (in: {' '.join(words)})"
    else:
        script = words[1]
        assert (ROOT / script).is_file(), f"{where}: no script {script}"
        usage = script_help(script)
        unknown = [f for f in flags_of(words[2:]) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", usage)]
        assert not unknown, f"{where}: {script} has no {unknown} (in: {' '.join(words)})"


def test_a_wrong_flag_is_caught():
    """The check itself: a made-up flag and a made-up subcommand fail it."""
    with pytest.raises(AssertionError, match="has no"):
        test_every_example_uses_flags_that_exist("x.md", ["minireranker", "rerank", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no subcommand"):
        test_every_example_uses_flags_that_exist("x.md", ["minireranker", "rerankk"])
    assert shell_commands("```bash\nA=1 minireranker index B \\\n  --cache C && minireranker inspect B  # x\n```\n") \
        == [["A=1", "minireranker", "index", "B", "--cache", "C"], ["minireranker", "inspect", "B"]]
