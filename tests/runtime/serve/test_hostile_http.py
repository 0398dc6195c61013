"""Hostile HTTP clients against the server (issue 13), on loopback, each bounded in time.

Raw sockets where the attack lives below any client library (smuggling, slowloris, short bodies,
duplicate Content-Length, 414/431). Every socket has a timeout (``WAIT``) far above the server's own
deadlines (``DEADLINE``), so a test ends in bounded time whatever the machine, and no assertion waits on a
guessed sleep: a test waits for the server's answer, or for a condition it polls with a bound.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import struct
import threading
import time

import pytest

from serve_helpers import API_KEY, QUERY, TEXTS, data_uri, start_server, wait_ready

WAIT = 30.0      # the longest a socket waits for the server: only a broken server gets near it
DEADLINE = 2.0   # header and body deadlines of the `guarded` server
MAX_CONNECTIONS = 8
MAX_REQUESTS = 3  # per keep-alive connection
DOC_TOKENS = 12   # --max-document-tokens of the `guarded` server
AUTH = f"Authorization: Bearer {API_KEY}\r\n".encode()


class _Origin(http.server.BaseHTTPRequestHandler):
    """Images for the URL tests: any path answers the PNG; /public/slow.png drips one byte each 0.2 s."""

    png = b""

    def do_GET(self):
        if self.path.endswith("slow.png"):
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origin(images):
    from serve_helpers import png_bytes

    _Origin.png = png_bytes(images["astronaut_70x45"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def guarded(tiny_bundle, tmp_path_factory, origin):
    """A server with short deadlines and small bounds (and an allowed image URL prefix)."""
    from minireranker.runtime.serve.api import ServeLimits
    from minireranker.runtime.serve.server import shut_down

    limits = ServeLimits.tiny(header_timeout_s=DEADLINE, body_timeout_s=DEADLINE, keep_alive_timeout_s=DEADLINE,
                              max_connections=MAX_CONNECTIONS, max_requests_per_connection=MAX_REQUESTS,
                              url_timeout_s=1.0, allow_url_prefixes=(origin + "/public/",))
    live = start_server(tiny_bundle, tmp_path_factory.mktemp("hostile-cache"), limits=limits,
                        max_document_tokens=DOC_TOKENS)
    wait_ready(live)
    yield live
    shut_down(live.server)


def connect(live, timeout: float = WAIT) -> socket.socket:
    host, port = live.server.server_address[:2]
    return socket.create_connection((host, port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a server that neither answers nor closes fails the test."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except socket.timeout:
        raise AssertionError(f"the server neither answered nor closed within {WAIT} s; got {out[:300]!r}") from None
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return out


def exchange(live, data: bytes) -> bytes:
    sock = connect(live)
    sock.sendall(data)
    return read_all(sock)


def statuses(raw: bytes) -> list[int]:
    """The status of each response in ``raw`` (a body runs straight into the next status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def detail(raw: bytes) -> str:
    """The ``detail`` of the (last) JSON error body in ``raw``."""
    body = raw.rsplit(b"\r\n\r\n", 1)[1]
    return json.loads(body)["detail"]


def request(method: str, path: str, body: bytes = b"", *, auth: bool = True, close: bool = False,
            extra: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    if body:
        head += f"Content-Length: {len(body)}\r\n".encode()
    return head + (AUTH if auth else b"") + (b"Connection: close\r\n" if close else b"") + extra + b"\r\n" + body


# -- 1. request smuggling -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/health", "/no-such-route"])
def test_a_body_sent_with_get_is_consumed_not_run_as_a_request(live, path):
    doc_id = f"smuggled{path.replace('/', '-')}"
    hidden = request("POST", "/v1/documents", json.dumps({"documents": [{"id": doc_id, "text": "x"}]}).encode())
    last = request("GET", "/v1/health/live", close=True)
    raw = exchange(live, request("GET", path, hidden) + last)
    assert len(statuses(raw)) == 2, raw  # the GET and the last request: the body was never parsed as a request
    assert live.call("GET", f"/v1/documents/{doc_id}")[0] == 404


# -- 2. authentication ----------------------------------------------------------------------------
def test_an_empty_api_key_is_refused(tiny_bundle, tmp_path, monkeypatch):
    from minireranker.runtime.errors import MiniRerankerError
    from minireranker.runtime.serve.service import ServeConfig
    from minireranker.tools.cli import build_parser
    from minireranker.tools.serve_cli import config_from_args

    monkeypatch.setenv("MINIRERANKER_API_KEY", "")
    with pytest.raises(MiniRerankerError, match="MINIRERANKER_API_KEY.*empty"):
        config_from_args(build_parser().parse_args(["serve", str(tiny_bundle), "--cache", str(tmp_path)]))
    for key in ("", "   "):
        with pytest.raises(MiniRerankerError, match="empty"):
            ServeConfig(bundle=tiny_bundle, cache=tmp_path, api_key=key)


def test_a_wrong_key_is_answered_before_the_body_is_read(live):
    """Only the headers of a 1 MB body are sent: the 401 comes without waiting for it, and closes."""
    sock = connect(live)
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                 b"Content-Length: 1000000\r\n\r\n")
    raw = read_all(sock)
    assert statuses(raw) == [401] and "API key" in detail(raw)
    assert b"connection: close" in raw.lower()


# -- 5. inline content never replaces an indexed id ------------------------------------------------
def test_inline_content_is_keyed_by_its_hash_not_its_id(live):
    doc_id = "hostile-doc-1"
    status, body = live.call("POST", "/v1/documents", {"documents": [{"id": doc_id, "text": TEXTS[1]}]})
    assert status == 200 and body["indexed"] == 1, body

    def score(doc) -> float:
        status, body = live.call("POST", "/v1/rerank", {"query": QUERY, "documents": [doc]})
        assert status == 200, body
        return body["results"][0]["score"]

    indexed = score({"id": doc_id})
    inline = score({"id": doc_id, "text": TEXTS[0]})
    assert abs(inline - score(TEXTS[0])) <= 1e-5  # the inline text was scored
    assert abs(inline - indexed) > 1e-3, "the two texts must score apart for this test to mean anything"
    assert abs(score({"id": doc_id}) - indexed) <= 1e-5  # and the id still names what was indexed


# -- 8. slow clients ------------------------------------------------------------------------------
def test_a_short_body_is_answered_408(guarded):
    raw = exchange(guarded, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 1000\r\n\r\n{")
    assert statuses(raw) == [408] and "--body-timeout-s" in detail(raw)


def test_slowloris_connections_are_bounded_and_dropped(guarded):
    """One more connection than the bound, each sending half its headers: the extra ones are answered 503
    at once, every other gets 408 at the header deadline; then the server serves again."""
    socks = [connect(guarded) for _ in range(MAX_CONNECTIONS + 1)]
    for sock in socks:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:  # a turned-away connection may already be closed
            pass
    answers = [statuses(read_all(sock)) for sock in socks]
    assert all(a in ([408], [503]) for a in answers), answers
    assert [503] in answers and answers.count([408]) <= MAX_CONNECTIONS, answers
    assert guarded.call("GET", "/v1/health/ready")[0] == 200


def test_a_header_dripped_byte_by_byte_still_meets_the_deadline(guarded):
    sock = connect(guarded)
    sock.settimeout(0.2)
    line = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 150
    got = b""
    for i in range(len(line)):  # one byte each 0.2 s: 30 s in all, far past the 2 s deadline
        try:
            sock.sendall(line[i:i + 1])
            got = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        break
    sock.close()
    assert statuses(got) == [408], (i, got)


def test_idle_and_long_keep_alive_connections_are_closed(guarded):
    raw = exchange(guarded, request("GET", "/v1/health/live"))  # no Connection: close: the idle timeout ends it
    assert statuses(raw) == [200]
    raw = exchange(guarded, request("GET", "/v1/health/live") * (MAX_REQUESTS + 2))
    assert statuses(raw) == [200] * MAX_REQUESTS  # then the connection is closed


def test_an_image_url_fetch_has_a_total_deadline(guarded, origin):
    status, body = guarded.call("POST", "/v1/rerank", {"query": QUERY, "documents": [
        {"image": origin + "/public/slow.png"}]})
    assert status == 422 and "--url-timeout-s" in body["detail"], body


# -- 9. bad input is a 4xx, never a 500 ------------------------------------------------------------
@pytest.mark.parametrize("raw, fragment", [
    (b'{"query": "\\ud800", "documents": ["a"]}', "surrogate"),
    (b'{"query": "q", "documents": ["a \\udfff b"]}', "surrogate"),
    (b'{"query": "q", "documents": [{"text": "\\ud800"}]}', "surrogate"),
    (b'{"query": "q", "documents": ["a"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests"),
    (b'{"query": "q", "documents": ["a"], "x": ' + b"[" * 200 + b"]" * 200 + b"}", "nests"),
], ids=["query", "text", "text-object", "nested-100k", "nested-200"])
def test_malformed_strings_and_nesting_are_400(live, raw, fragment):
    status, body = live.call("POST", "/v1/rerank", raw=raw)
    assert status == 400 and fragment in body["detail"], body


@pytest.mark.parametrize("path", ["/public/a.png\r\nX-Injected: 1", "/public/a b.png", "/public/..\\private\\a.png",
                                  "/public/%252e%252e/private/a.png", "/public/%25252e%25252e/a.png",
                                  "/public/a.png\t"])
def test_image_urls_are_checked_after_parsing_and_decoding(guarded, origin, path):
    status, body = guarded.call("POST", "/v1/rerank", {"query": QUERY, "documents": [{"image": origin + path}]})
    assert status == 422 and "--allow-url-prefix" in body["detail"], body


def test_an_allowed_image_url_is_still_fetched(guarded, origin, images):
    status, body = guarded.call("POST", "/v1/rerank", {"query": QUERY, "documents": [
        {"image": origin + "/public/a.png"}, {"image": data_uri(images["astronaut_70x45"])}]})
    assert status == 200, body
    scores = {r["index"]: r["score"] for r in body["results"]}
    assert abs(scores[0] - scores[1]) <= 1e-5


# -- 10. noise and gaps ---------------------------------------------------------------------------
def test_clients_that_go_away_leave_no_traceback(live, monkeypatch, capfd, caplog):
    """Requests whose clients reset the connection before the answer: the answers go nowhere, quietly."""
    service = live.server.service
    entered, done, gate = threading.Semaphore(0), threading.Semaphore(0), threading.Event()
    rerank = service.rerank

    def held(request):
        entered.release()
        assert gate.wait(WAIT)
        try:
            return rerank(request)
        finally:
            done.release()

    monkeypatch.setattr(service, "rerank", held)
    n = 6
    socks = [connect(live) for _ in range(n)]
    for sock in socks:
        sock.sendall(request("POST", "/v1/rerank", json.dumps({"query": QUERY, "documents": TEXTS}).encode()))
    for _ in range(n):
        assert entered.acquire(timeout=WAIT), "the server never started the request"
    for sock in socks:  # reset, not a polite close: the server's answer hits a dead socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    gate.set()
    for _ in range(n):
        assert done.acquire(timeout=WAIT)
    monkeypatch.setattr(service, "rerank", rerank)
    assert live.call("POST", "/v1/rerank", {"query": QUERY, "documents": TEXTS})[0] == 200
    time.sleep(0.5)  # not a condition: a grace for a traceback to be written, it can only make the test stricter
    err = capfd.readouterr().err + caplog.text
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "HEAD"])
def test_other_methods_answer_405_in_json(live, method):
    raw = exchange(live, request(method, "/v1/rerank", close=True))
    assert statuses(raw) == [405], raw
    assert b"content-type: application/json" in raw.lower()
    if method != "HEAD":  # a HEAD answer has no body
        assert "POST" in detail(raw)


@pytest.mark.parametrize("size, status", [(20_000, 414), (70_000, 414)])
def test_a_long_request_line_is_414_in_json(live, size, status):
    raw = exchange(live, b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH + b"\r\n")
    assert statuses(raw) == [status] and "--max-header-bytes" in detail(raw)


def test_a_request_line_that_never_ends_is_414_in_json(live):
    raw = exchange(live, b"GET /" + b"a" * 20_000)  # no line end: the parser gives up at its bound
    assert statuses(raw) == [414] and "--max-header-bytes" in detail(raw)


@pytest.mark.parametrize("size", [20_000, 70_000])
def test_long_headers_are_431_in_json(live, size):
    raw = exchange(live, request("GET", "/health", close=True, extra=b"X-Big: " + b"a" * size + b"\r\n"))
    assert statuses(raw) == [431] and "--max-header-bytes" in detail(raw)


@pytest.mark.parametrize("lengths", [(2, 40), (2, 2)], ids=["different", "equal"])
def test_two_content_lengths_are_refused(live, lengths):
    extra = b"".join(f"Content-Length: {n}\r\n".encode() for n in lengths)
    raw = exchange(live, request("POST", "/v1/rerank", extra=extra) + b"{}" + b" " * 38)
    assert statuses(raw) == [400] and "Content-Length" in detail(raw)


def test_one_bad_image_does_not_reject_the_batch(live):
    bad = base64.b64encode(b"not an image at all").decode()
    status, body = live.call("POST", "/v1/documents", {"documents": [
        {"id": "batch-good", "text": "a fine document"}, {"id": "batch-bad", "image": bad}]})
    assert status == 200 and body["indexed"] == 1, body
    assert [(f["index"], f["id"], f["status"]) for f in body["failed"]] == [(1, "batch-bad", 422)]
    assert "object at 0x" not in body["failed"][0]["error"] and "documents[1].image" in body["failed"][0]["error"]
    assert live.call("GET", "/v1/documents/batch-good")[0] == 200
    status, body = live.call("POST", "/v1/rerank", {"query": QUERY, "documents": [{"image": bad}]})
    assert status == 422 and "object at 0x" not in body["detail"], body


# -- 3. document length ---------------------------------------------------------------------------
LONG = " ".join(["a cat sitting on a sofa in the sun"] * 6)


def test_a_long_document_is_413_per_document_or_truncated(guarded):
    status, body = guarded.call("POST", "/v1/rerank", {"query": QUERY, "documents": ["short", LONG]})
    assert status == 413 and "documents[1]" in body["detail"] and "--max-document-tokens" in body["detail"], body
    status, body = guarded.call("POST", "/v1/rerank", {"query": QUERY, "documents": ["short", LONG], "truncate": True,
                                                       "return_documents": True})
    assert status == 200 and len(body["results"]) == 2, body
    assert {r["document"]["text"] for r in body["results"]} == {"short", LONG}  # what was sent is echoed
    reranker = guarded.server.service.reranker
    offsets = reranker.encoder.tokenizer.encode(LONG, add_special_tokens=False).offsets
    prefixes = [LONG[: end] for _, end in offsets]  # every cut at a token boundary, shortest first
    fits = [p for p in prefixes if len(reranker.template.document(None, p).ids) <= DOC_TOKENS]
    cut = fits[-1]  # the longest that fits: what truncation must score
    assert len(fits) < len(prefixes) and len(cut) > 0
    status, alone = guarded.call("POST", "/v1/rerank", {"query": QUERY, "documents": [cut]})
    truncated = next(r["score"] for r in body["results"] if r["index"] == 1)
    assert abs(truncated - alone["results"][0]["score"]) <= 1e-5
    status, body = guarded.call("POST", "/v1/documents", {"documents": [{"id": "long", "text": LONG},
                                                                        {"id": "fits", "text": "short"}]})
    assert status == 200 and body["indexed"] == 1 and [(f["index"], f["status"]) for f in body["failed"]] == [(0, 413)]
