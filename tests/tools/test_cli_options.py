"""The command line's own rules: one module per subcommand, defaults read from the library and shown in
--help, --version, one line for a missing 'export' extra, and one spec reader with one set of messages."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_cli

from minireranker.runtime.errors import SpecError
from minireranker.tools import cli
from minireranker.tools.cli import build_parser, main

TOOLS = Path(cli.__file__).parent

# The commands that run torch; each must say in one line that the 'export' extra is missing.
TORCH_COMMANDS = {
    "build": ["CKPT", "-o", "OUT"],
    "reference": ["CKPT", "--query", "q", "text:a"],
    "tiny": ["OUT"],
    "verify": ["CKPT"],
    "demo": ["--output", "OUT"],
    "bench": ["--out", "OUT"],
    "eval": ["CKPT", "--data", "set.jsonl"],
    "calibrate": ["CKPT", "--data", "set.jsonl"],
}

# Runs main() with torch and transformers unimportable, as on the base (runtime-only) install, which has
# no 'serve' extra either.
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
                 "for m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette', 'pydantic'): sys.modules[m] = None\n"
                 "from minireranker.tools.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def run_without_torch(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


# -- one module per subcommand --------------------------------------------------------------------
def test_every_subcommand_is_registered_by_its_own_module():
    modules = sorted(p.stem for p in TOOLS.glob("*_cli.py"))
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS) == modules
    for name in modules:
        assert callable(importlib.import_module(f"minireranker.tools.{name}").register), name
    assert set(subparsers()) == {m[: -len("_cli")] for m in modules}


# -- defaults: read from the library, shown in --help ---------------------------------------------
def test_every_default_is_shown_in_help(monkeypatch):
    for name in ("MINIRERANKER_BUNDLE", "MINIRERANKER_CACHE"):  # serve's defaults from the environment
        monkeypatch.delenv(name, raising=False)
    missing = []
    for name, parser in subparsers().items():
        for action in parser._actions:
            default = action.default
            if (isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction))
                    or default is None or default is argparse.SUPPRESS or action.help is None):
                continue
            text = action.help % {"default": default} if "%(default)" in action.help else action.help
            words = {str(default), f"{default:g}" if isinstance(default, float) else str(default)}
            if isinstance(default, tuple):
                words.add(",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in default))
            if not any(w in text for w in words):
                missing.append(f"{name} {action.option_strings or action.dest}: {default!r} not in {text!r}")
    assert not missing, "\n".join(missing)


def test_defaults_are_the_librarys():
    from minireranker.calibration.demo.run import run_demo
    from minireranker.calibration.verify import DEFAULT_TOLERANCE
    from minireranker.export.build_config import BuildConfig
    from minireranker.export.tiny import DEFAULT_PRESET, DEFAULT_SEED
    from minireranker.runtime.reranker import Reranker
    from minireranker.tools.args import keyword_defaults

    parsers = subparsers()
    build = parsers["build"].parse_args(["ckpt", "-o", "out"])
    assert (build.precision, build.attention, build.validate) == (
        BuildConfig().precision, BuildConfig().attention, BuildConfig().validate)
    verify = parsers["verify"].parse_args(["ckpt"])
    assert verify.tolerance == DEFAULT_TOLERANCE
    tiny = parsers["tiny"].parse_args(["out"])
    assert (tiny.preset, tiny.seed) == (DEFAULT_PRESET, DEFAULT_SEED)
    demo = parsers["demo"].parse_args([])
    demo_defaults = keyword_defaults(run_demo)
    assert (demo.candidates, demo.show) == (demo_defaults["candidates"], demo_defaults["show"])
    rerank = parsers["rerank"].parse_args(["b", "--cache", "c", "--query", "q"])
    reranker = keyword_defaults(Reranker)
    assert (rerank.provider, rerank.max_cache_bytes, rerank.int8_cache) == (
        reranker["providers"], reranker["max_cache_bytes"], reranker["int8_cache"])


# -- --version ------------------------------------------------------------------------------------
def test_version_prints_the_package_version():
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"minireranker {version('minireranker')}"


# -- without the 'export' extra -------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(TORCH_COMMANDS))
def test_a_torch_command_without_torch_names_the_extra(command, tmp_path):
    args = [str(tmp_path / a) if a in ("CKPT", "OUT") else a for a in TORCH_COMMANDS[command]]
    proc = run_without_torch(command, *args, cwd=tmp_path)
    assert_one_error_line(proc, f"minireranker {command} needs torch", "'export' extra",
                          'pip install "minireranker[export]"')
    assert not (tmp_path / "OUT").exists(), "the command wrote its output before refusing"


def test_help_and_runtime_commands_work_without_torch(tmp_path):
    proc = run_without_torch("--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: minireranker"), proc.stderr
    for name in ["build", "verify", "demo", "tiny"]:
        proc = run_without_torch(name, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)
    # a torch-free command is not refused: it fails on its own input, in one line
    assert_one_error_line(run_without_torch("inspect", tmp_path / "no-bundle", cwd=tmp_path), "no-bundle")


def test_serve_without_the_serve_extra_names_it(tmp_path):
    proc = run_without_torch("serve", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = run_without_torch("serve", tmp_path / "bundle", "--cache", tmp_path / "kv", cwd=tmp_path)
    assert_one_error_line(proc, "minireranker serve needs the 'serve' extra", "pip install 'minireranker[serve]'")


def use_parser_with(monkeypatch, command: str, func) -> None:
    """main() gets a parser whose ``command`` runs ``func``."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices[command].set_defaults(func=func)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)


def test_a_missing_module_of_the_extra_found_late_is_one_line(monkeypatch, capsys):
    def needs_onnx(args):
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx.helper")

    use_parser_with(monkeypatch, "inspect", needs_onnx)
    assert main(["inspect", "b"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: minireranker inspect needs onnx, which is not installed: install "
                                         "the 'export' extra (pip install \"minireranker[export]\")"]
    assert captured.out == ""


def test_another_missing_module_is_not_hidden(monkeypatch):
    def broken(args):
        raise ModuleNotFoundError("No module named 'minireranker.nowhere'", name="minireranker.nowhere")

    use_parser_with(monkeypatch, "inspect", broken)
    with pytest.raises(ModuleNotFoundError, match="nowhere"):
        main(["inspect", "b"])


# -- one spec reader: the same forms and the same messages everywhere ------------------------------
BAD_SPECS = {"missing": "MISSING", "not-json": "{not json"}


def spec_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_SPECS))
def test_every_command_gives_the_same_spec_message(kind, tmp_path, capsys):
    pytest.importorskip("torch")  # the commands check the extra first
    from minireranker.calibration.evaluate import read_spec_arg

    value = str(tmp_path / "absent.json") if BAD_SPECS[kind] == "MISSING" else BAD_SPECS[kind]
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    commands = {
        "reference": ["reference", ckpt, "--query", "q", "text:a", "--spec", value],
        "build": ["build", ckpt, "-o", out, "--spec", value],
        "tiny": ["tiny", out, "--spec", value],
        "verify": ["verify", ckpt, "--spec", value],
        "demo": ["demo", "--output", out, "--spec", value],
        "profile": ["profile", "--estimate", "agx-orin-64gb", "--spec", value, "--out", out],
    }
    messages = {name: spec_error(argv, capsys) for name, argv in commands.items()}
    with pytest.raises(SpecError) as info:
        read_spec_arg(value)
    messages["eval"] = f"error: {info.value}"
    assert len(set(messages.values())) == 1, messages
    assert not (tmp_path / "out").exists(), "a refused spec let a command write its output"
