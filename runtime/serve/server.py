"""The HTTP server of ``minireranker serve``: the ASGI app (runtime/serve/app.py) under uvicorn.

Why uvicorn, extended: it is pure Python on h11 (installs on aarch64 from PyPI with no compiler), parses
HTTP/1.1 strictly (a body is always consumed by its framing, so no unread byte can run as a request;
conflicting Content-Length headers are refused), runs on one asyncio loop (an idle or slow connection
holds a socket, not a thread) and drains on shutdown. What it lacks, runtime/serve/protocol.py adds at the
connection (a header deadline, a connection bound, a request bound per connection, JSON answers for
what the parser refuses) and runtime/serve/app.py at the request (the API key before the body, a body
deadline). The blocking work of a request (parsing, the query head, the K/V lookup, waiting for its
dynamic batch) runs on a worker thread; the engines release the GIL.

Lifecycle: :func:`make_server` binds the socket (so the port is known and a port in use is one error)
and starts loading the engines on a thread; ``serve_forever`` runs the loop on the calling thread;
:func:`shut_down` stops accepting, closes idle keep-alive connections, lets requests in flight finish (up
to ``drain_timeout_s``), drains the batcher and releases the engines. :func:`serve` does all of that
around SIGTERM / SIGINT and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
from typing import Any, Callable

from ..errors import MiniRerankerError
from .service import RerankService, ServeConfig

log = logging.getLogger("minireranker.serve")
BACKLOG = 2048


def _require_serve_extra() -> None:
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if find_spec(name) is None]
    if missing:
        raise MiniRerankerError(f"minireranker serve needs the 'serve' extra ({', '.join(missing)} missing): "
                                "pip install 'minireranker[serve]'")


class RerankServer:
    """uvicorn on a bound socket, driven from a thread: ``serve_forever()`` blocks until ``shutdown()``."""

    def __init__(self, sock: socket.socket, service: RerankService) -> None:
        import uvicorn

        from .app import build_app
        from .protocol import protocol_class

        self.socket, self.service = sock, service
        self.server_address = sock.getsockname()[:2]
        limits = service.config.limits
        config = uvicorn.Config(build_app(service), http=protocol_class(limits), lifespan="off", log_config=None,
                                access_log=False, loop="asyncio", server_header=False,
                                timeout_keep_alive=limits.keep_alive_timeout_s,
                                timeout_graceful_shutdown=service.config.drain_timeout_s,
                                h11_max_incomplete_event_size=limits.max_header_bytes, backlog=BACKLOG)
        self._uvicorn = uvicorn.Server(config)
        self._lock = threading.Lock()
        self._state = "new"  # -> "serving" -> "stopped"
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve on this thread until :meth:`shutdown` (``poll_interval`` is accepted for the old API)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "serving"
        try:
            asyncio.run(self._uvicorn.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Ask the loop to stop (it drains, see the module docstring); wait until it has. False on timeout."""
        self._uvicorn.should_exit = True
        with self._lock:
            serving, self._state = self._state == "serving", "stopped"
        if not serving:
            self.socket.close()
            return True
        return self._stopped.wait(timeout)


def make_server(config: ServeConfig, loader: Callable[[], Any] | None = None) -> RerankServer:
    """Bind the socket (``port`` 0: a free one) and start loading the engines on a thread."""
    _require_serve_extra()
    service = RerankService(config, loader)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(BACKLOG)  # connections made before the loop runs wait in the backlog
    except OSError as exc:
        sock.close()
        raise MiniRerankerError(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); "
                                "choose another --port (0 picks a free one) or --host") from None
    server = RerankServer(sock, service)
    service.start_loading()
    return server


def shut_down(server: RerankServer) -> None:
    """Stop accepting, finish requests in flight, drain the batcher, close everything."""
    if not server.shutdown(server.service.config.drain_timeout_s + 30):
        log.warning("the HTTP loop did not stop within the drain timeout; closing the service anyway")
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
    loop = threading.Thread(target=server.serve_forever, name="minireranker-http")
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
