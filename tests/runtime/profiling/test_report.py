"""The one report writer (JSON, table, optional PNG) and the one machine_info, both torch-free."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minireranker.runtime.profiling.report import NO_PNG_NOTE, pyplot, write_report
from minireranker.runtime.profiling.telemetry import machine_info

DATA = {"kind": "test", "values": [1, 2.5, None], "name": "é"}


def _plot(data: dict, path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots()
    ax.plot(data["values"][:2])
    fig.savefig(path)
    plt.close(fig)
    return True


def test_json_and_table_are_written_as_given(tmp_path):
    written = write_report(tmp_path, DATA, "| a |\n", "r.json", "r.md")
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == json.dumps(DATA, indent=2) + "\n"
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "| a |\n"
    assert written.files == [tmp_path / "r.json", tmp_path / "r.md"] and written.png is None
    assert written.summary() == f"wrote {tmp_path / 'r.json'}, {tmp_path / 'r.md'}"  # no plot asked: no note


def test_png_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report(tmp_path, DATA, "t", "r.json", "r.txt", "r.png", _plot)
    assert written.png == tmp_path / "r.png" and written.files[-1] == written.png
    assert written.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    extra = tmp_path / "spec.json"
    files = ", ".join(str(f) for f in (extra, tmp_path / "r.json", tmp_path / "r.txt", written.png))
    assert written.summary(also=(extra,)) == f"wrote {files}"


def test_without_matplotlib_json_and_table_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert pyplot() is None
    written = write_report(tmp_path, DATA, "t", "r.json", "r.txt", "r.png", _plot)
    assert written.png is None and not (tmp_path / "r.png").exists() and (tmp_path / "r.json").is_file()
    assert written.summary().endswith(f" ({NO_PNG_NOTE})")


def test_machine_info_keys_and_no_torch_import():
    info = machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["python"] and info["platform"]
    assert "numpy" in info["versions"] and {"onnxruntime", "onnxruntime-gpu"} & set(info["versions"])
    assert "CPUExecutionProvider" in info["available_providers"]
    code = ("import sys; from minireranker.runtime.profiling.telemetry import machine_info; machine_info(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
