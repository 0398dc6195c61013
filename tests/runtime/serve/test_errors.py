"""Every error path answers its status with a {"detail": ...} body, and the server keeps serving."""

from __future__ import annotations

import base64
import http.client
import http.server
import threading
import urllib.parse

import pytest
from PIL import Image

from serve_helpers import QUERY, TEXTS, data_uri, png_bytes, start_server, wait_ready


def expect(live, status: int, *fragments: str, method: str = "POST", path: str = "/v1/rerank", **kwargs):
    got, body = live.call(method, path, **kwargs)
    assert got == status, (got, body)
    assert isinstance(body, dict) and isinstance(body.get("detail"), str), body
    for f in fragments:
        assert f in body["detail"], body["detail"]
    return body


def test_api_key(live):
    body = {"query": QUERY, "documents": TEXTS}
    expect(live, 401, "API key", body=body, headers={"Authorization": ""})
    expect(live, 401, "API key", body=body, headers={"Authorization": "Bearer nope"})
    expect(live, 401, body=body, headers={"Authorization": f"Basic {live.key}"})
    expect(live, 401, method="GET", path="/metrics", headers={"Authorization": ""})
    for open_route in ("/health", "/v1/health/live", "/v1/health/ready"):
        assert live.call("GET", open_route, headers={"Authorization": ""})[0] == 200


@pytest.mark.parametrize("body, status, fragment", [
    ({"documents": TEXTS}, 422, "'query'"),
    ({"query": "  ", "documents": TEXTS}, 422, "'query'"),
    ({"query": QUERY}, 422, "'documents'"),
    ({"query": QUERY, "documents": []}, 422, "'documents'"),
    ({"query": QUERY, "documents": [3]}, 422, "documents[0]"),
    ({"query": QUERY, "documents": [""]}, 422, "documents[0]"),
    ({"query": QUERY, "documents": [{"path": "/etc/passwd"}]}, 422, "unknown field"),
    ({"query": QUERY, "documents": [{"image": "/etc/passwd"}]}, 422, "file paths are not read"),
    ({"query": QUERY, "documents": [{"image": "file:///etc/passwd"}]}, 422, "documents[0].image"),
    ({"query": QUERY, "documents": [{"image": "http://127.0.0.1:1/x.png"}]}, 422, "--allow-url-prefix"),
    ({"query": QUERY, "documents": [{"image": base64.b64encode(b"not an image").decode()}]}, 422, "not an image"),
    ({"query": QUERY, "documents": [{"image": "data:image/png,raw"}]}, 422, "base64"),
    ({"query": QUERY, "documents": [{"id": 5}]}, 422, ".id"),
    ({"query": QUERY, "documents": [{"id": "x" * 300}]}, 422, ".id"),
    ({"query": QUERY, "documents": TEXTS, "top_n": 0}, 422, "top_n"),
    ({"query": QUERY, "documents": TEXTS, "return_documents": "yes"}, 422, "return_documents"),
    ({"query": QUERY, "documents": ["d"] * 9}, 413, "--max-client-batch-size"),
    ({"query": "word " * 100, "documents": TEXTS}, 413, "--max-query-tokens"),
    ({"query": QUERY, "documents": [{"id": "never-indexed"}]}, 404, "not in the cache"),
])
def test_bad_rerank_bodies(live, body, status, fragment):
    expect(live, status, fragment, body=body)


def test_image_pixel_limit(live):
    big = Image.new("RGB", (300, 300), "red")  # ServeLimits.tiny(): 256*256 pixels at most
    expect(live, 413, "--max-image-pixels", body={"query": QUERY, "documents": [{"image": data_uri(big)}]})


def test_body_limits_and_framing(live):
    expect(live, 400, "not valid JSON", raw=b"{nope")
    expect(live, 422, "JSON object", raw=b"[1, 2]")
    expect(live, 404, "no route", path="/v3/rerank", body={})
    expect(live, 405, "POST", method="GET", path="/v1/rerank")
    expect(live, 422, "no 'id'", path="/v1/documents", body={"documents": [{"text": "t"}]})
    expect(live, 422, "no 'image' or 'text'", path="/v1/documents", body={"documents": [{"id": "a"}]})
    parts = urllib.parse.urlsplit(live.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/v1/rerank")
    conn.putheader("Authorization", f"Bearer {live.key}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and b"detail" in response.read()
    conn.close()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/v1/rerank")  # the body is refused unread, from its Content-Length alone
    conn.putheader("Authorization", f"Bearer {live.key}")
    conn.putheader("Content-Length", str(3 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"--max-body-bytes" in response.read()
    assert response.getheader("Connection") == "close"
    conn.close()
    assert live.call("POST", "/v1/rerank", {"query": QUERY, "documents": TEXTS})[0] == 200  # still serving


class _Images(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):
        if self.path.startswith("/public/redirect"):
            self.send_response(302)
            self.send_header("Location", "/private/a.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


def test_image_urls_only_under_the_allow_list(tiny_bundle, tmp_path, images):
    """A loopback image server; the reranker fetches only under the allowed prefix, no redirects."""
    from minireranker.runtime.serve.api import ServeLimits
    from minireranker.runtime.serve.server import shut_down

    _Images.png = png_bytes(images["astronaut_70x45"])
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{origin.server_address[1]}"
    live = start_server(tiny_bundle, tmp_path / "cache", limits=ServeLimits.tiny(allow_url_prefixes=(base + "/public/",)))
    try:
        wait_ready(live)
        ok, body = live.call("POST", "/v1/rerank", {"query": QUERY, "documents": [
            {"image": base + "/public/a.png"}, {"image": data_uri(images["astronaut_70x45"])}]})
        assert ok == 200, body
        s = {r["index"]: r["score"] for r in body["results"]}
        assert abs(s[0] - s[1]) <= 1e-5
        for url in (base + "/private/a.png", base + "/public/../private/a.png", base + "/public/%2e%2e/private/a.png",
                    f"http://localhost:{origin.server_address[1]}/public/a.png", base + "/public/redirect"):
            expect(live, 422, body={"query": QUERY, "documents": [{"image": url}]})
    finally:
        shut_down(live.server)
        origin.shutdown()


def test_bad_allow_prefix_is_refused():
    from minireranker.runtime.errors import MiniRerankerError
    from minireranker.runtime.serve.api import ServeLimits

    for prefix in ("file:///etc/", "ftp://x/", "http://user@host/"):
        with pytest.raises(MiniRerankerError, match="allow-url-prefix"):
            ServeLimits(allow_url_prefixes=(prefix,))


def test_internal_errors_are_500_without_a_traceback(live, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(live.server.service.reranker, "prepare_query", broken)
    body = expect(live, 500, "internal error", body={"query": QUERY, "documents": TEXTS})
    assert "secret" not in body["detail"]


def test_readiness_flips_when_loading_finishes(tiny_bundle, tmp_path):
    """The server binds first; engines load on a thread (held here by an event): 503, then 200."""
    from minireranker.runtime.reranker import Reranker
    from minireranker.runtime.serve.server import shut_down

    gate = threading.Event()

    def loader():
        gate.wait()  # no timeout: loading must not finish before the test lets it, however slow the machine
        return Reranker(tiny_bundle, tmp_path / "cache")

    live = start_server(tiny_bundle, tmp_path / "cache", loader=loader)
    try:
        assert live.call("GET", "/v1/health/ready")[0] == 503
        assert live.call("GET", "/health")[0] == 503
        assert live.call("GET", "/v1/health/live")[0] == 200
        expect(live, 503, "loading", body={"query": QUERY, "documents": TEXTS})
        gate.set()
        wait_ready(live)
        assert live.call("GET", "/v1/health/ready")[1]["status"] == "ready"
        assert live.call("POST", "/v1/rerank", {"query": QUERY, "documents": TEXTS})[0] == 200
    finally:
        gate.set()  # a failed assertion above must not leave the loader waiting
        shut_down(live.server)


def test_a_load_failure_is_reported_by_readiness(tiny_bundle, tmp_path):
    from minireranker.runtime.errors import CacheError
    from minireranker.runtime.serve.server import shut_down

    threads: list[threading.Thread] = []
    called = threading.Event()

    def loader():
        threads.append(threading.current_thread())
        called.set()
        raise CacheError("the cache is not writable")

    live = start_server(tiny_bundle, tmp_path / "cache", loader=loader)
    try:
        # the loading thread records the error right after loader() raises: join it instead of polling a
        # clock (the bound only turns a hang into a loud failure)
        assert called.wait(120), "the server never called its loader"
        threads[0].join(120)
        assert not threads[0].is_alive(), "the loading thread did not finish"
        status, body = live.call("GET", "/v1/health/ready")
        assert status == 503 and "not writable" in body["detail"]
    finally:
        shut_down(live.server)
