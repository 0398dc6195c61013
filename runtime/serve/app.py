"""The ASGI application of ``minireranker serve``: FastAPI routes behind :class:`RequestGuard`.

::

    POST   /rerank  /v1/rerank  /v2/rerank      rerank (Cohere v2 / Jina / Infinity / TEI bodies)
    POST   /v1/documents                        index documents with ids (good ones indexed, bad ones listed)
    GET    /v1/documents/{id}                   is it cached?      DELETE /v1/documents/{id}
    GET    /v1/models   /info                   the served model and its limits (Infinity / TEI)
    GET    /health  /v1/health/ready            200 once the engines are loaded, 503 before
    GET    /v1/health/live                      200 while the process serves HTTP
    GET    /metrics                             Prometheus text format (prometheus_client)
    GET    /openapi.json                        the API (runtime/serve/models.py)

:class:`RequestGuard` runs before any route and before a byte of the body is read, in this order: the
API key (``Authorization: Bearer KEY``, ``hmac.compare_digest``; every route but the health checks), the
framing (no chunked bodies: 411; a POST needs a Content-Length: 411; over ``max_body_bytes``: 413), then
it reads the whole body within ``body_timeout_s`` (else 408). An answer given before the body was read
closes the connection, so no unread byte is ever taken for the next request. Every error is
``{"detail": "..."}``; a client that goes away is not an error (nothing is logged).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import MiniRerankerError
from . import models
from .api import RequestError, parse_index, parse_json, parse_rerank
from .batcher import BatcherClosed
from .metrics import CONTENT_TYPE
from .service import RerankService

log = logging.getLogger("minireranker.serve")
RERANK_ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank")
OPEN_ROUTES = ("/health", "/v1/health/live", "/v1/health/ready")
DOCUMENT_PREFIX = "/v1/documents/"
KNOWN_ROUTES = {*RERANK_ROUTES, *OPEN_ROUTES, "/v1/documents", DOCUMENT_PREFIX + "{id}", "/metrics", "/v1/models",
                "/info", "/openapi.json"}
BODY_ROUTES = (*RERANK_ROUTES, "/v1/documents")  # the routes that read a body: it needs a Content-Length


def route_label(path: str) -> str:
    """The ``route`` label of the request metrics (ids are not labels: that would be unbounded)."""
    route = DOCUMENT_PREFIX + "{id}" if path.startswith(DOCUMENT_PREFIX) else path
    return route if route in KNOWN_ROUTES else "other"


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, headers=headers, media_type="application/json")


def error_response(status: int, detail: str, **extra: Any) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json_response(status, {"detail": detail, **extra}, headers)


class RequestGuard:
    """ASGI middleware: authentication, framing and the body deadline, before the app sees a request."""

    def __init__(self, app: Callable, service: RerankService) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        answered: list[int] = []

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        try:
            await self._guard(scope, receive, tracking_send)
        except Exception:  # a bug outside a route: still a JSON answer, the traceback only in the log
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            if not answered:
                await self._answer(tracking_send, 500, "internal error", close=True)
        finally:
            if answered:
                self.service.record(route_label(scope["path"]), answered[0], time.perf_counter() - t0)

    async def _guard(self, scope: dict, receive: Callable, send: Callable) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        length_header = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or length_header not in (None, b"0")
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await self._answer(send, *refusal, close=has_body)
            return
        body = await self._read_body(receive, send, int(length_header or 0))
        if body is None:
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        limits = self.service.config.limits
        target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        if target > limits.max_header_bytes:  # h11 bounds only what arrives in pieces; this, what came at once
            return 414, f"the request target is {target} bytes; the limit is {limits.max_header_bytes} (--max-header-bytes)"
        size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > limits.max_header_bytes:
            return 431, f"the headers are {size} bytes; the limit is {limits.max_header_bytes} (--max-header-bytes)"
        key = self.service.config.api_key
        if key is not None and scope["path"] not in OPEN_ROUTES:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), key.encode()):
                return 401, "missing or wrong API key: send 'Authorization: Bearer <key>'"
        if b"transfer-encoding" in headers:
            return 411, "chunked request bodies are not supported: send a Content-Length"
        length = headers.get(b"content-length")
        if length is None and scope["method"] == "POST" and scope["path"] in BODY_ROUTES:
            return 411, "a request body needs a Content-Length header"
        if length is not None and int(length) > limits.max_body_bytes:
            return 413, (f"the request body is {int(length)} bytes; the limit is {limits.max_body_bytes} "
                         "(--max-body-bytes): send fewer or smaller documents")
        return None

    async def _read_body(self, receive: Callable, send: Callable, length: int) -> bytes | None:
        """The whole body within ``body_timeout_s`` (None: answered 408, or the client went away)."""
        timeout = self.service.config.limits.body_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        chunks, more = [], length > 0
        while more:
            left = deadline - asyncio.get_running_loop().time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                await self._answer(send, 408, f"the request body did not arrive within {timeout:g} s "
                                   f"(--body-timeout-s); {sum(map(len, chunks))} of {length} bytes came", close=True)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    async def _answer(send: Callable, status: int, detail: str, close: bool) -> None:
        response = error_response(status, detail)
        if close:  # the body was not read: the connection cannot carry another request
            response.headers["Connection"] = "close"
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


async def run_blocking(fn: Callable[[], tuple[int, Any]]) -> Response:
    """Run ``fn`` (parse + service call) on a worker thread; its result or error as the answer."""
    try:
        status, body = await run_in_threadpool(fn)
    except RequestError as exc:
        return error_response(exc.status, str(exc), **exc.extra)
    except BatcherClosed:
        return error_response(503, "the server is shutting down; retry on another replica")
    except MiniRerankerError as exc:
        return error_response(422, str(exc))
    except Exception as exc:  # never a traceback on the wire; the log has it
        log.exception("internal error")
        return error_response(500, f"internal error: {type(exc).__name__}")
    return json_response(status, body)


def build_app(service: RerankService) -> RequestGuard:
    """The routes on ``service``, wrapped in :class:`RequestGuard`."""
    config = service.config
    app = FastAPI(title="minireranker serve", version=_version(), docs_url=None, redoc_url=None,
                  description="Cohere v2 / Jina / Infinity / TEI compatible reranking; see docs/serve.md.")
    started = int(time.time())

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return error_response(405, f"{request.method} is not allowed on {path}; use "
                                  f"{' or '.join(m.strip() for m in allowed.split(','))}")
        if exc.status_code == 404:
            return error_response(404, f"no route {path!r}; see GET /health, GET /v1/models, POST /v1/rerank, "
                                  "POST /v1/documents")
        return error_response(exc.status_code, str(exc.detail))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    errors = {status: {"model": models.ErrorBody} for status in (400, 401, 404, 408, 411, 413, 422, 503)}

    async def rerank(request: Request) -> Response:
        body = await request.body()

        def work():
            data = parse_json(body)
            service._require_ready()
            return 200, service.rerank(parse_rerank(data, config.limits))
        return await run_blocking(work)

    for path in RERANK_ROUTES:
        app.add_api_route(path, rerank, methods=["POST"], summary="Rerank documents for a query",
                          responses={200: {"model": models.RerankResponse | list[models.TeiResult]}, **errors},
                          openapi_extra=_request_body("RerankBody"))

    @app.post("/v1/documents", responses={200: {"model": models.IndexResponse}, **errors},
              openapi_extra=_request_body("IndexBody"), summary="Index documents by id")
    async def index_documents(request: Request) -> Response:
        body = await request.body()

        def work():
            data = parse_json(body)
            service._require_ready()
            good, refused = parse_index(data, config.limits)
            return 200, service.index(good, refused)
        return await run_blocking(work)

    @app.get(DOCUMENT_PREFIX + "{doc_id:path}", responses={200: {"model": models.DocumentStatus}, **errors})
    async def get_document(doc_id: str) -> Response:
        return await run_blocking(lambda: (200, service.document_status(doc_id)))

    @app.delete(DOCUMENT_PREFIX + "{doc_id:path}", responses={200: {"model": models.DocumentDeleted}, **errors})
    async def delete_document(doc_id: str) -> Response:
        return await run_blocking(lambda: (200, service.delete_document(doc_id)))

    @app.get("/v1/models", responses={200: {"model": models.ModelList}})
    async def list_models() -> Response:
        limits = config.limits
        card = {"id": config.model_name, "object": "model", "created": started, "owned_by": "minireranker",
                "capabilities": ["rerank"], "max_client_batch_size": limits.max_client_batch_size,
                "max_query_tokens": limits.max_query_tokens, "max_document_tokens": service._document_limit()}
        return json_response(200, {"object": "list", "data": [card]})

    @app.get("/info", responses={200: {"model": models.Info}})
    async def info() -> Response:
        return json_response(200, {"model_id": config.model_name, "model_type": {"reranker": {}},
                                   "max_client_batch_size": config.limits.max_client_batch_size,
                                   "max_input_length": service._document_limit(), "version": _version()})

    async def ready() -> Response:
        if service.ready.is_set():
            return json_response(200, {"status": "ready", "model": config.model_name})
        return json_response(503, {"detail": service.load_error or "loading",
                                   "status": "failed" if service.load_error else "loading"})

    for path in ("/health", "/v1/health/ready"):
        app.add_api_route(path, ready, methods=["GET"], responses={200: {"model": models.Health},
                                                                   503: {"model": models.ErrorBody}})

    @app.get("/v1/health/live", responses={200: {"model": models.Health}})
    async def live() -> Response:
        return json_response(200, {"status": "live"})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(await run_in_threadpool(service.render_metrics), media_type=CONTENT_TYPE)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return RequestGuard(app, service)


def _request_body(name: str) -> dict:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the request bodies (read by api.py, so not declared as route parameters)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(models.RerankBody, "validation"), (models.IndexBody, "validation")],
                                     ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        app.openapi_schema = schema
    return app.openapi_schema


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("minireranker")
    except PackageNotFoundError:
        return "0.0.0"
