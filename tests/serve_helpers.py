"""Helpers of the server tests: start an in-process server on 127.0.0.1 (a free port), call it, compare."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

API_KEY = "test-key-0123"
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # jina-haystack imports haystack: no posthog


@dataclass
class Live:
    url: str
    server: object
    key: str | None = API_KEY

    def call(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
        """(status, parsed JSON or text) of one request; the API key is sent unless headers override it."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


def start_server(bundle, cache, loader=None, **overrides) -> Live:
    from minireranker.runtime.serve.api import ServeLimits
    from minireranker.runtime.serve.service import ServeConfig
    from minireranker.runtime.serve.server import make_server

    limits = overrides.pop("limits", ServeLimits.tiny())
    config = ServeConfig(bundle=bundle, cache=cache, port=0, limits=limits, **{"api_key": API_KEY, **overrides})
    server = make_server(config, loader)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return Live(server.url, server, config.api_key)


def wait_ready(live: Live, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.call("GET", "/v1/health/ready")[0] == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def cli_scores(bundle, cache, query: str, docs: list[str]) -> list[dict]:
    """``minireranker rerank --json`` results (best first) for DOC arguments."""
    from cli_helpers import run_cli

    proc = run_cli("rerank", bundle, "--cache", cache, "--query", query, "--json", *docs)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["results"]


QUERY = "a cat sitting on a sofa"
TEXTS = ["a photo of a cat", "a rocket on the launch pad", "two dogs in the snow", "coffee in a white cup",
         "a tabby cat asleep on a couch"]
