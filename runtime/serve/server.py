"""The HTTP layer of ``minireranker serve``: standard library only (``http.server``), HTTP/1.1 keep-alive.

Why no framework: the runtime installs on a Jetson with numpy, onnxruntime, tokenizers and Pillow; the
server needs JSON bodies with a Content-Length, a thread per connection (the engines release the GIL)
and a clean drain on SIGTERM, which ``ThreadingHTTPServer`` gives in a few lines. Routes::

    POST   /rerank  /v1/rerank  /v2/rerank      rerank (Cohere v2 / Jina / Infinity / TEI bodies)
    POST   /v1/documents                        index documents with ids
    GET    /v1/documents/{id}                   is it cached?      DELETE /v1/documents/{id}
    GET    /health  /v1/health/ready            200 once the engines are loaded, 503 before
    GET    /v1/health/live                      200 while the process serves HTTP
    GET    /metrics                             Prometheus text format

Every error is ``{"detail": "..."}`` with its status code. With an API key, every route except the
health checks needs ``Authorization: Bearer KEY`` (compared with ``hmac.compare_digest``).

Shutdown (SIGTERM or SIGINT): stop accepting, close idle keep-alive connections, let requests in flight
finish (their connections are then closed), drain the batcher, exit 0.
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from ..errors import MiniRerankerError
from .api import RequestError, parse_index, parse_json, parse_rerank
from .service import RerankService, ServeConfig

log = logging.getLogger("minireranker.serve")
RERANK_ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank")
OPEN_ROUTES = ("/health", "/v1/health/live", "/v1/health/ready")
DOCUMENT_PREFIX = "/v1/documents/"


class RerankHTTPServer(ThreadingHTTPServer):
    """Tracks its connections so that a shutdown can close idle ones and wait for busy ones."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: RerankService) -> None:
        self.service = service
        self.draining = False
        self._connections: dict[socket.socket, bool] = {}  # socket -> busy with a request
        self._cond = threading.Condition()
        super().__init__(address, RerankHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def track(self, sock: socket.socket, busy: bool | None) -> None:
        """busy True/False: the connection's state; None: it closed."""
        with self._cond:
            if busy is None:
                self._connections.pop(sock, None)
            else:
                self._connections[sock] = busy
            self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Close idle connections and wait (up to ``timeout``) until no request is in flight."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self.draining = True
            while True:
                for sock, busy in list(self._connections.items()):
                    if not busy:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)  # its handler reads EOF and ends
                        except OSError:
                            pass
                if not any(self._connections.values()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))


class RerankHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RerankHTTPServer
    server_version = "minireranker"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, False)

    def finish(self) -> None:
        self.server.track(self.connection, None)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's signature)
        log.debug("%s %s", self.address_string(), format % args)

    # -- dispatch ---------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        self.server.track(self.connection, True)
        t0 = time.perf_counter()
        path = urllib.parse.urlsplit(self.path).path
        route = path if not path.startswith(DOCUMENT_PREFIX) else DOCUMENT_PREFIX + "{id}"
        status = 500
        try:
            handler, route = self._route(method, path, route)
            if route not in OPEN_ROUTES:
                self._check_api_key()
            status, body = handler(path)
        except RequestError as exc:
            status, body = exc.status, {"detail": str(exc)}
        except MiniRerankerError as exc:
            status, body = 422, {"detail": str(exc)}
        except Exception as exc:  # never a traceback on the wire; the log has it
            log.exception("internal error on %s %s", method, path)
            status, body = 500, {"detail": f"internal error: {type(exc).__name__}"}
        try:
            self._send(status, body)
        finally:
            self.server.service.record(route if route in KNOWN_ROUTES else "other", status, time.perf_counter() - t0)
            if self.server.draining:
                self.close_connection = True
            self.server.track(self.connection, False)

    def _route(self, method: str, path: str, route: str) -> tuple[Callable[[str], tuple[int, Any]], str]:
        routes = ROUTES.get(route)
        if routes is None:
            raise RequestError(404, f"no route {path!r}; see GET /health, POST /v1/rerank, POST /v1/documents")
        if method not in routes:
            self._discard_body()
            raise RequestError(405, f"{method} is not allowed on {route}; use {' or '.join(sorted(routes))}")
        return (lambda p: routes[method](self, p)), route

    def _check_api_key(self) -> None:
        key = self.server.service.config.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            self._discard_body()
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    # -- bodies -----------------------------------------------------------------------------------
    def _read_json(self) -> dict:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "chunked request bodies are not supported: send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise RequestError(411, "a request body needs a Content-Length header") from None
        limit = self.server.service.config.limits.max_body_bytes
        if length > limit:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise RequestError(413, f"the request body is {length} bytes; the limit is {limit} "
                               "(--max-body-bytes): send fewer or smaller documents")
        if length < 0:
            self.close_connection = True
            raise RequestError(400, "negative Content-Length")
        return parse_json(self.rfile.read(length))

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if 0 < length <= self.server.service.config.limits.max_body_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _send(self, status: int, body: Any) -> None:
        if isinstance(body, str):
            data, content_type = body.encode(), self.server.service.registry.CONTENT_TYPE
        else:
            data, content_type = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection or self.server.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- routes -----------------------------------------------------------------------------------
    def rerank(self, path: str) -> tuple[int, Any]:
        service = self.server.service
        data = self._read_json()
        service._require_ready()
        return 200, service.rerank(parse_rerank(data, service.config.limits))

    def index_documents(self, path: str) -> tuple[int, Any]:
        service = self.server.service
        data = self._read_json()
        service._require_ready()
        return 200, service.index(parse_index(data, service.config.limits))

    def get_document(self, path: str) -> tuple[int, Any]:
        return 200, self.server.service.document_status(_document_id(path))

    def delete_document(self, path: str) -> tuple[int, Any]:
        self._discard_body()
        return 200, self.server.service.delete_document(_document_id(path))

    def ready(self, path: str) -> tuple[int, Any]:
        service = self.server.service
        if service.ready.is_set():
            return 200, {"status": "ready", "model": service.config.model_name}
        return 503, {"detail": service.load_error or "loading", "status": "failed" if service.load_error else "loading"}

    def live(self, path: str) -> tuple[int, Any]:
        return 200, {"status": "live"}

    def metrics(self, path: str) -> tuple[int, Any]:
        return 200, self.server.service.registry.render()


def _document_id(path: str) -> str:
    doc_id = urllib.parse.unquote(path[len(DOCUMENT_PREFIX):])
    if not doc_id:
        raise RequestError(404, "no document id in the path: use /v1/documents/{id}")
    return doc_id


ROUTES: dict[str, dict[str, Callable]] = {
    **{r: {"POST": RerankHandler.rerank} for r in RERANK_ROUTES},
    "/v1/documents": {"POST": RerankHandler.index_documents},
    DOCUMENT_PREFIX + "{id}": {"GET": RerankHandler.get_document, "DELETE": RerankHandler.delete_document},
    "/health": {"GET": RerankHandler.ready},
    "/v1/health/ready": {"GET": RerankHandler.ready},
    "/v1/health/live": {"GET": RerankHandler.live},
    "/metrics": {"GET": RerankHandler.metrics},
}
KNOWN_ROUTES = set(ROUTES)


def make_server(config: ServeConfig, loader: Callable[[], Any] | None = None) -> RerankHTTPServer:
    """Bind the socket (``port`` 0: a free one) and start loading the engines on a thread."""
    service = RerankService(config, loader)
    try:
        server = RerankHTTPServer((config.host, config.port), service)
    except OSError as exc:
        raise MiniRerankerError(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); "
                                "choose another --port (0 picks a free one) or --host") from None
    service.start_loading()
    return server


def shut_down(server: RerankHTTPServer) -> None:
    """Stop accepting, finish requests in flight, drain the batcher, close everything."""
    server.shutdown()  # serve_forever returns; no new connection is accepted
    if not server.drain(server.service.config.drain_timeout_s):
        log.warning("requests still in flight after %.0f s; closing anyway", server.service.config.drain_timeout_s)
    server.server_close()
    server.service.close()


def serve(config: ServeConfig, announce: Callable[[str], None] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns 0 after a clean shutdown."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    server = make_server(config)
    say(f"minireranker serve: listening on {server.url} (loading engines; GET /v1/health/ready says when ready)")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="minireranker-http")
    loop.start()
    announced = False
    while not stop.wait(0.1):
        if not announced and server.service.ready.is_set():
            say(f"minireranker serve: ready on {server.url} (model {config.model_name!r})")
            announced = True
        if server.service.load_error:  # a server that can never be ready exits, so a supervisor sees it
            break
    say("minireranker serve: shutting down (finishing requests in flight)")
    shut_down(server)
    loop.join()
    if server.service.load_error:
        raise MiniRerankerError(server.service.load_error)
    say("minireranker serve: stopped")
    return 0
