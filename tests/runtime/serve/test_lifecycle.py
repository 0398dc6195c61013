"""The real `minireranker serve` process: flags and environment, SIGTERM drains, docs/serve.md examples run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serve_helpers import QUERY, TEXTS, Live, wait_ready

ROOT = Path(__file__).resolve().parents[3]
SERVE_DOC = ROOT / "docs" / "serve.md"
README = ROOT / "README.md"


# Run in the server process before the CLI (ServeProcess(hook=True)): announce on stderr each request the
# batcher has queued, so that a test acts once a request is in flight instead of after a guessed sleep.
QUEUED_LINE = "test hook: pairs queued for a batch"
_QUEUED_HOOK = f"""
import runpy, sys
from minireranker.runtime.serve import batcher
_submit = batcher.DynamicBatcher.submit

def submit(self, pairs):
    future = _submit(self, pairs)
    print({QUEUED_LINE!r}, file=sys.stderr, flush=True)
    return future

batcher.DynamicBatcher.submit = submit
sys.argv[0] = "minireranker"
runpy.run_module("minireranker.tools.cli", run_name="__main__", alter_sys=True)
"""


class ServeProcess:
    """``python -m minireranker.tools.cli serve ...`` with its stderr read on a thread; ``hook``: with the
    queued-request announcement above."""

    def __init__(self, *args: str, env: dict | None = None, hook: bool = False) -> None:
        launcher = ["-c", _QUEUED_HOOK] if hook else ["-m", "minireranker.tools.cli"]
        self.proc = subprocess.Popen([sys.executable, *launcher, "serve", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._got_url = threading.Event()
        self.queued = threading.Event()  # set at the first QUEUED_LINE (or when stderr ends)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "listening on" in line:
                self._got_url.set()
            if QUEUED_LINE in line:
                self.queued.set()
        self._got_url.set()
        self.queued.set()

    def url(self, timeout: float = 60) -> str:
        assert self._got_url.wait(timeout), "no 'listening on' line"
        match = re.search(r"listening on (http://\S+)", "".join(self.lines))
        assert match, "".join(self.lines)
        return match.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def test_env_vars_and_flags(tiny_bundle, tmp_path, monkeypatch):
    """Each flag has a MINIRERANKER_* variable; a flag wins; a bad value is one clear error."""
    from minireranker.runtime.errors import MiniRerankerError
    from minireranker.tools.cli import build_parser
    from minireranker.tools.serve_cli import config_from_args

    monkeypatch.setenv("MINIRERANKER_API_KEY", "from-env")
    monkeypatch.setenv("MINIRERANKER_MAX_BATCH", "7")
    monkeypatch.setenv("MINIRERANKER_MAX_CLIENT_BATCH_SIZE", "9")
    monkeypatch.setenv("MINIRERANKER_ALLOW_URL_PREFIX", "http://127.0.0.1:9/a/,http://127.0.0.1:9/b/")
    args = build_parser().parse_args(["serve", str(tiny_bundle), "--cache", str(tmp_path), "--max-batch", "3"])
    config = config_from_args(args)
    assert (config.api_key, config.max_batch, config.limits.max_client_batch_size) == ("from-env", 3, 9)
    assert config.limits.allow_url_prefixes == ("http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/")
    assert config.host == "127.0.0.1" and config.port == 8080
    monkeypatch.setenv("MINIRERANKER_PORT", "eighty")
    with pytest.raises(MiniRerankerError, match="MINIRERANKER_PORT"):
        config_from_args(build_parser().parse_args(["serve", str(tiny_bundle), "--cache", str(tmp_path)]))


def test_bad_bundle_is_one_error_line(tmp_path):
    from cli_helpers import assert_one_error_line, run_cli

    assert_one_error_line(run_cli("serve", tmp_path / "nope", "--cache", tmp_path / "c", "--port", "0"), "bundle")


def test_sigterm_finishes_requests_in_flight(tiny_bundle, tmp_path):
    """A request waits in a long batch window when SIGTERM arrives: it still gets its answer; exit 0."""
    server = ServeProcess(str(tiny_bundle), "--cache", str(tmp_path / "cache"), "--port", "0",
                          "--batch-window-ms", "1500", env={"MINIRERANKER_API_KEY": "k"}, hook=True)
    try:
        live = Live(server.url(), None, "k")
        wait_ready(live)
        results: dict = {}
        client = threading.Thread(target=lambda: results.update(
            answer=live.call("POST", "/v1/rerank", {"query": QUERY, "documents": TEXTS})))
        client.start()
        # SIGTERM once the request waits in the batcher (its 1.5 s window), not after a guessed sleep; the
        # bound only turns a hang into a loud failure
        assert server.queued.wait(120) and QUEUED_LINE in "".join(server.lines), "".join(server.lines)
        server.proc.send_signal(signal.SIGTERM)
        client.join(60)
        assert server.proc.wait(60) == 0, "".join(server.lines)
        status, body = results["answer"]
        assert status == 200 and len(body["results"]) == len(TEXTS)
        assert "stopped" in "".join(server.lines)
    finally:
        server.stop()


def doc_block(path: Path, marker: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```[a-z]*\n(.*?)```", text, flags=re.S)
    assert match, f"no fenced block after <!-- {marker} --> in {path}"
    return match.group(1)


DOCUMENTED = [README, SERVE_DOC]  # the README's examples and docs/serve.md's, each run as written


@pytest.fixture(scope="module")
def documented_server(tiny_bundle, tmp_path_factory):
    server = ServeProcess(str(tiny_bundle), "--cache", str(tmp_path_factory.mktemp("doc-cache")), "--port", "0",
                          env={"MINIRERANKER_API_KEY": "doc-key"})
    live = Live(server.url(), None, "doc-key")
    wait_ready(live)
    yield live
    assert server.stop() == 0


def _run_example(live: Live, command: list[str], block: str) -> str:
    env = {**os.environ, "MINIRERANKER_API_KEY": live.key}
    code = block.replace("http://127.0.0.1:8080", live.url)
    out = subprocess.run([*command, code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("doc", DOCUMENTED, ids=lambda p: p.name)
def test_documented_curl_example_runs(documented_server, doc):
    block = doc_block(doc, "serve-curl")
    assert "http://127.0.0.1:8080" in block
    body = json.loads(_run_example(documented_server, ["bash", "-c"], block))
    assert len(body["results"]) == 2 and all("document" in r for r in body["results"])
    assert 0 <= body["results"][0]["relevance_score"] <= 1


@pytest.mark.parametrize("doc", DOCUMENTED, ids=lambda p: p.name)
def test_documented_python_client_example_runs(documented_server, doc):
    block = doc_block(doc, "serve-python")
    assert "cohere.ClientV2" in block
    lines = _run_example(documented_server, [sys.executable, "-c"], block).split()
    assert len(lines) == 4 and all(i in "012" for i in lines[::2])
