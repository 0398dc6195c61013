"""The connection layer of ``minireranker serve``: uvicorn's h11 protocol with the bounds uvicorn lacks.

uvicorn parses HTTP/1.1 with h11 (strict framing: a body is always consumed by its Content-Length or
chunked coding before the next request is read, conflicting Content-Length headers are refused), closes a
keep-alive connection idle for ``timeout_keep_alive`` and caps request line + headers at
``h11_max_incomplete_event_size``. It has no deadline for a request's headers (any byte re-arms nothing:
a client that sends one header byte a second holds its connection for ever) and answers its own errors in
plain text. :func:`protocol_class` adds, per connection:

- a **header deadline**: the request line and headers must be complete ``header_timeout_s`` after the
  connection opened or the previous answer was sent; else ``408`` (if a request was begun) and close;
- a **connection bound**: beyond ``max_connections`` open connections a new one is answered ``503`` and
  closed at once (asyncio holds no thread per connection; this bounds sockets and memory);
- a **request bound**: after ``max_requests_per_connection`` answers the connection is closed;
- **one Content-Length**: a request with two Content-Length fields (equal or not) is refused ``400``;
- **JSON errors** for what the parser refuses: ``414`` (request line longer than ``max_header_bytes``),
  ``431`` (headers longer), ``400`` (malformed framing), each ``{"detail": ...}`` with ``Connection: close``.

The body deadline is the ASGI layer's (runtime/serve/app.py), which reads every body itself.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .api import ServeLimits


def raw_answer(status: int, detail: str) -> bytes:
    """A complete ``{"detail"}`` response that closes the connection (for answers outside h11's state)."""
    from http import HTTPStatus

    body = json.dumps({"detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def protocol_class(limits: ServeLimits) -> type:
    """A subclass of uvicorn's H11Protocol bound to ``limits`` (uvicorn takes the class as ``http=``)."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {"limits": limits})


class _GuardedH11Protocol(H11Protocol):
    limits: ServeLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._requests = 0
        self._last_cycle: Any = None
        self._protocol_error: h11.RemoteProtocolError | None = None
        self._turned_away = False
        next_event = self.conn.next_event

        def recording_next_event():  # uvicorn drops the exception; its status hint and text are wanted
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error = exc
                raise

        self.conn.next_event = recording_next_event

    # -- connection bound and header deadline -----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"the server has {self.limits.max_connections} connections open "
                         "(--max-connections); retry shortly")
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self.conn.trailing_data[0]:  # a request was begun: say why it is dropped
            self._refuse(408, "the request line and headers did not arrive within "
                         f"{self.limits.header_timeout_s:g} s (--header-timeout-s)")
        else:
            self.transport.close()

    # -- events -----------------------------------------------------------------------------------
    def eof_received(self) -> bool | None:
        if self._turned_away:
            self.transport.close()
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._turned_away:
            return
        if self.conn.their_state is h11.IDLE and self._two_content_lengths(data):
            self._refuse(400, "the request has more than one Content-Length header; send exactly one")
            return
        super().data_received(data)

    def _two_content_lengths(self, data: bytes) -> bool:
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        return end >= 0 and pending[:end].lower().count(b"\ncontent-length:") > 1

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._last_cycle:  # a new request's headers are in
            self._last_cycle = self.cycle
            self._cancel_header_deadline()
            self._requests += 1
            if self._requests >= self.limits.max_requests_per_connection:
                self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before uvicorn starts a pipelined request, which cancels it
        super().on_response_complete()

    # -- the parser's own answers -----------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        exc, self._protocol_error = self._protocol_error, None
        pending = self.conn.trailing_data[0]
        limit = self.limits.max_header_bytes
        if exc is not None and exc.error_status_hint == 431 and b"\r\n" not in pending:
            status, detail = 414, f"the request line is longer than {limit} bytes (--max-header-bytes)"
        elif exc is not None and exc.error_status_hint == 431:
            status, detail = 431, f"the request line and headers are longer than {limit} bytes (--max-header-bytes)"
        else:
            status = 501 if exc is not None and exc.error_status_hint == 501 else 400
            detail = f"malformed HTTP request ({exc or msg}); the connection is closed"
        self._refuse(status, detail)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer and end the connection: half-close, then read (discard) what the client still sends
        until it closes (or the header deadline): closing with unread input would reset the connection
        and could destroy the answer before the client reads it."""
        self._cancel_header_deadline()
        if self.transport.is_closing():
            return
        self._turned_away = True
        self.transport.write(raw_answer(status, detail))
        self.transport.resume_reading()
        self.transport.write_eof()
        self.loop.call_later(self.limits.header_timeout_s, self.transport.close)
