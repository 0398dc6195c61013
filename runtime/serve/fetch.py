"""Image URLs of ``minireranker serve``: the allow-list check and a fetch bounded by one total deadline.

A URL is fetched only when it lies under an operator's ``--allow-url-prefix``. The check is made on the
parsed URL, never on its text alone:

- the URL must be plain: no space, control character (CR, LF, TAB ...) or backslash anywhere, no user info;
- scheme, host (lower case) and port (the scheme's default when absent) must equal the prefix's;
- the path is percent-decoded again and again until it no longer changes (``%252e`` -> ``%2e`` -> ``.``),
  and at every step it must lie under the prefix's path (on a ``/`` boundary) with no ``.`` or ``..``
  segment and no backslash.

The fetch follows no redirect (a 3xx is an error: it could leave the allow-list) and has one deadline for
everything (connect, headers, body): a watchdog shuts the socket down when ``url_timeout_s`` has passed,
so an origin that drips one byte per second cannot hold a request thread longer than that.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING

from ..errors import MiniRerankerError

if TYPE_CHECKING:
    from .api import ServeLimits

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_DECODE_ROUNDS = 4  # a path still changing after this many percent-decodings is refused


def url_prefix_parts(prefix: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an ``--allow-url-prefix``; raises on one that cannot be matched safely."""
    problem = _plain_problem(prefix)
    parts = urllib.parse.urlsplit(prefix)
    try:
        port = parts.port
    except ValueError:
        port, problem = None, "has a bad port"
    if problem or parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None \
            or "@" in parts.netloc or "%" in parts.path:
        raise MiniRerankerError(f"--allow-url-prefix {prefix!r} must be an http(s) URL with a host, no user info, "
                                "no percent-escapes and no spaces or backslashes, e.g. https://images.example.com/public/")
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme], parts.path or "/"


def _plain_problem(url: str) -> str | None:
    if any(c in url for c in " \\") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "contains a space, a control character (CR, LF, TAB ...) or a backslash"
    return None


def _under(path: str, prefix: str) -> bool:
    if not prefix.endswith("/"):
        return path == prefix or path.startswith(prefix + "/")
    return path.startswith(prefix)


def _path_problem(path: str, prefix: str) -> str | None:
    """Check every percent-decoding of ``path`` against ``prefix``; None when it lies under it."""
    for _ in range(MAX_DECODE_ROUNDS + 1):
        if "\\" in path or any(segment in (".", "..") for segment in path.split("/")):
            return "has a '.' or '..' segment or a backslash (after percent-decoding)"
        if not _under(path, prefix):
            return "is not under the prefix"
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            return None
        path = decoded
    return f"is still percent-encoded after {MAX_DECODE_ROUNDS} decodings"


def check_url(url: str, where: str, limits: "ServeLimits") -> urllib.parse.SplitResult:
    """The parsed URL if it lies under an allowed prefix, else RequestError 422 saying why."""
    from .api import RequestError

    refused = (f"{where}: image URLs are fetched only under an --allow-url-prefix set by the operator; send "
               "the image as a data URI or base64")
    problem = _plain_problem(url)
    if problem:
        raise RequestError(422, f"{where}: the image URL {problem}; {refused.split(': ', 1)[1]}")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        raise RequestError(422, f"{where}: the image URL has a bad port") from None
    if parts.username is not None or "@" in parts.netloc or not parts.hostname:
        raise RequestError(422, refused)
    host = parts.hostname.lower()
    reasons = []
    for scheme, p_host, p_port, p_path in map(url_prefix_parts, limits.allow_url_prefixes):
        if (parts.scheme, host, port) != (scheme, p_host, p_port):
            continue
        reason = _path_problem(parts.path or "/", p_path)
        if reason is None:
            return parts
        reasons.append(reason)
    raise RequestError(422, f"{refused} (the URL's path {reasons[0]})" if reasons else refused)


def fetch_image_url(url: str, where: str, limits: "ServeLimits") -> bytes:
    """GET an allowed URL: no redirects, at most ``max_body_bytes``, within ``url_timeout_s`` in all."""
    from .api import RequestError

    parts = check_url(url, where, limits)
    deadline = time.monotonic() + limits.url_timeout_s
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    extra = {"context": ssl.create_default_context()} if parts.scheme == "https" else {}
    conn = kind(parts.hostname, parts.port, timeout=limits.url_timeout_s, **extra)
    timer = threading.Timer(limits.url_timeout_s, _shut, args=(conn,))
    timer.daemon = True
    timer.start()
    try:
        target = parts.path or "/"
        conn.request("GET", target + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        if response.status != 200:
            raise RequestError(422, f"{where}: fetching the image URL answered HTTP {response.status}"
                               + ("; redirects are not followed" if 300 <= response.status < 400 else ""))
        data = bytearray()
        while len(data) <= limits.max_body_bytes:
            chunk = response.read1(1 << 16)  # one socket read at most: the deadline is checked between reads
            if not chunk:
                break
            data += chunk
            if time.monotonic() > deadline:
                raise TimeoutError
        if time.monotonic() >= deadline:  # the watchdog cut the body short
            raise TimeoutError
    except RequestError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            raise RequestError(422, f"{where}: the image URL did not answer completely within "
                               f"{limits.url_timeout_s:g} s (--url-timeout-s, a total deadline)") from None
        raise RequestError(422, f"{where}: cannot fetch the image URL ({type(exc).__name__}: {exc})") from None
    finally:
        timer.cancel()
        conn.close()
    if len(data) > limits.max_body_bytes:
        raise RequestError(413, f"{where}: the image at the URL exceeds {limits.max_body_bytes} bytes "
                           "(--max-body-bytes)")
    return bytes(data)


def _shut(conn: http.client.HTTPConnection) -> None:
    """The deadline passed: wake a read blocked in the socket (close() alone would not)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
