"""Request bodies of ``minireranker serve``: parsing, validation and limits, and response shapes.

One rerank request shape is a superset of what Cohere (v2), Jina and Infinity clients send::

    {"model": str?, "query": str, "documents": [DOC, ...], "top_n": int?, "return_documents": bool?}
    DOC = "text" | {"text": str} | {"image": IMAGE} | {"image": IMAGE, "text": str} | {"id": str, ...}
    IMAGE = "data:image/png;base64,..." | bare base64 | an http(s) URL under an --allow-url-prefix

and TEI's ``{"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}``. The answer (see
docs/serve.md) carries ``relevance_score`` = sigmoid(logit(yes) - logit(no)) and the raw ``score``.

Nothing in a request names a file: an image is bytes inside the body (or, only where the operator lists
URL prefixes, fetched from such a URL with redirects refused), and an ``id`` is an opaque string that the
K/V store hashes into a file name. Limits answer 413, malformed bodies 422 (400 for bytes that are not
JSON), each as ``{"detail": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ..documents import Document
from ..errors import MiniRerankerError

MAX_ID_CHARS = 256


class RequestError(MiniRerankerError):
    """A request the server refuses: ``status`` is the HTTP status code, the message its ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask. Defaults suit a small device; each has a ``serve`` flag."""

    max_body_bytes: int = 32 << 20            # whole request body (413)
    max_client_batch_size: int = 256          # documents per request (413)
    max_image_pixels: int = 4096 * 4096       # width*height of one image, read from its header (413)
    max_query_tokens: int = 512               # query length; the runtime's own cap is 512 (413)
    allow_url_prefixes: tuple[str, ...] = ()  # image URLs fetched only under these (none: never)
    url_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_client_batch_size", "max_image_pixels", "max_query_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MiniRerankerError(f"serve limit {name} must be a positive integer, got {value!r}")
        for prefix in self.allow_url_prefixes:
            _url_prefix_parts(prefix)  # raises on a prefix that cannot be matched safely

    @classmethod
    def tiny(cls, **overrides: Any) -> "ServeLimits":
        """Small limits for tests."""
        return cls(**{"max_body_bytes": 1 << 20, "max_client_batch_size": 8, "max_image_pixels": 256 * 256,
                      "max_query_tokens": 64, **overrides})


@dataclass
class RerankRequest:
    query: str
    documents: list[Document]
    echo: list[dict]                      # what to return as each result's ``document``
    top_n: int | None = None
    return_documents: bool = False
    model: str | None = None
    tei: bool = False                     # answer TEI's bare list [{index, score, text?}]
    raw_scores: bool = False              # TEI: score is the logit, not the probability
    extra: dict = field(default_factory=dict)


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object (400 for bytes that are not JSON, 422 for another JSON type)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def parse_rerank(data: dict, limits: ServeLimits) -> RerankRequest:
    """Validate a rerank body (Cohere/Jina/Infinity shape, or TEI's with ``texts``)."""
    tei = "texts" in data and "documents" not in data
    key = "texts" if tei else "documents"
    query = data.get("query")
    if not isinstance(query, str) or not query.strip():
        raise RequestError(422, "'query' must be a non-empty string")
    docs = data.get(key)
    if not isinstance(docs, list) or not docs:
        raise RequestError(422, f"'{key}' must be a non-empty list")
    if len(docs) > limits.max_client_batch_size:
        raise RequestError(413, f"{len(docs)} documents in one request; the limit is "
                           f"{limits.max_client_batch_size} (--max-client-batch-size): split the request")
    top_n = data.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise RequestError(422, f"'top_n' must be a positive integer, got {top_n!r}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(422, "'model' must be a string")
    flags = {}
    for name in ("return_documents", "raw_scores", "return_text", "truncate"):
        value = data.get(name, False)
        if value is None:
            value = False
        if not isinstance(value, bool):
            raise RequestError(422, f"'{name}' must be true or false, got {value!r}")
        flags[name] = value
    documents, echo = [], []
    for i, doc in enumerate(docs):
        document, shown = parse_document(doc, f"{key}[{i}]", limits, allow_id=not tei)
        documents.append(document)
        echo.append(shown)
    return RerankRequest(query, documents, echo, top_n, flags["return_documents"] or flags["return_text"],
                         model, tei, flags["raw_scores"])


def parse_index(data: dict, limits: ServeLimits) -> list[Document]:
    """``POST /v1/documents``: ``{"documents": [{"id": str, "image"?: IMAGE, "text"?: str}, ...]}``."""
    docs = data.get("documents")
    if not isinstance(docs, list) or not docs:
        raise RequestError(422, "'documents' must be a non-empty list of {\"id\", \"image\" and/or \"text\"}")
    if len(docs) > limits.max_client_batch_size:
        raise RequestError(413, f"{len(docs)} documents in one request; the limit is "
                           f"{limits.max_client_batch_size} (--max-client-batch-size): split the request")
    out = []
    for i, doc in enumerate(docs):
        document, _ = parse_document(doc, f"documents[{i}]", limits, allow_id=True)
        if document.id is None:
            raise RequestError(422, f"documents[{i}] has no 'id': indexed documents need one to be found again")
        if document.image is None and not document.text:
            raise RequestError(422, f"documents[{i}] has no 'image' or 'text' to index")
        out.append(document)
    return out


def parse_document(doc: Any, where: str, limits: ServeLimits, allow_id: bool) -> tuple[Document, dict]:
    """One DOC (see the module docstring) -> (Document, what to echo back as the result's ``document``)."""
    if isinstance(doc, str):
        if not doc:
            raise RequestError(422, f"{where} is an empty string")
        return Document(text=doc), {"text": doc}
    if not isinstance(doc, dict):
        raise RequestError(422, f"{where} must be a string or an object, got {type(doc).__name__}")
    allowed = {"text", "image", "id"} if allow_id else {"text", "image"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise RequestError(422, f"{where} has unknown field(s) {unknown}; a document has {sorted(allowed)}")
    text, image, doc_id = doc.get("text"), doc.get("image"), doc.get("id")
    if text is not None and (not isinstance(text, str) or not text):
        raise RequestError(422, f"{where}.text must be a non-empty string")
    if doc_id is not None and (not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_CHARS):
        raise RequestError(422, f"{where}.id must be a string of 1 to {MAX_ID_CHARS} characters")
    if text is None and image is None and doc_id is None:
        raise RequestError(422, f"{where} needs 'text', 'image' or 'id'")
    data = decode_image(image, f"{where}.image", limits) if image is not None else None
    echo = {k: doc[k] for k in ("id", "text") if k in doc}
    return Document(image=data, text=text, id=doc_id), echo


def decode_image(value: Any, where: str, limits: ServeLimits) -> bytes:
    """Encoded image bytes from a data URI, bare base64, or an allowed URL; never from a file path."""
    if not isinstance(value, str) or not value:
        raise RequestError(422, f"{where} must be a string: a data URI or base64 of the encoded image")
    if value.startswith(("http://", "https://")):
        data = _fetch_allowed(value, where, limits)
    else:
        payload = value
        if value.startswith("data:"):
            head, sep, payload = value.partition(",")
            if not sep or not head.endswith(";base64"):
                raise RequestError(422, f"{where} is a data URI that is not ';base64,'-encoded")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, f"{where} is neither a data URI nor base64 (file paths are not read; "
                               "image URLs only under an --allow-url-prefix)") from None
    _check_pixels(data, where, limits)
    return data


def _check_pixels(data: bytes, where: str, limits: ServeLimits) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(422, f"{where} is not an image Pillow can read ({exc})") from None
    except Image.DecompressionBombError:
        width, height = limits.max_image_pixels + 1, 1
    if width * height > limits.max_image_pixels:
        raise RequestError(413, f"{where} is {width}x{height} = {width * height} pixels; the limit is "
                           f"{limits.max_image_pixels} (--max-image-pixels): downscale it")


def _url_prefix_parts(prefix: str) -> tuple[str, str, str]:
    parts = urllib.parse.urlsplit(prefix)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise MiniRerankerError(f"--allow-url-prefix {prefix!r} must be an http(s) URL with a host and no "
                                "user info, e.g. https://images.example.com/public/")
    return parts.scheme, parts.netloc.lower(), parts.path or "/"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could leave the allow-list
        return None


def _fetch_allowed(url: str, where: str, limits: ServeLimits) -> bytes:
    """GET ``url`` if it lies under an allowed prefix (same scheme and host:port, path below the prefix's)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path or "/")
    dotted = any(segment in (".", "..") for segment in path.split("/"))  # no climbing out of the prefix
    allowed = any(parts.scheme == s and parts.netloc.lower() == n and path.startswith(p)
                  for s, n, p in map(_url_prefix_parts, limits.allow_url_prefixes))
    if "@" in parts.netloc or dotted or not allowed:
        raise RequestError(422, f"{where}: image URLs are not fetched unless they lie under an "
                           "--allow-url-prefix set by the operator; send the image as a data URI or base64")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=limits.url_timeout_s) as response:
            data = response.read(limits.max_body_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise RequestError(422, f"{where}: fetching the image URL answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RequestError(422, f"{where}: cannot fetch the image URL ({exc})") from None
    if len(data) > limits.max_body_bytes:
        raise RequestError(413, f"{where}: the image at the URL exceeds {limits.max_body_bytes} bytes")
    return data


def rerank_response(request: RerankRequest, scored: list[tuple[int, float, float]], model: str,
                    prompt_tokens: int, request_id: str, created: int) -> Any:
    """The answer: ``scored`` is [(index, probability, raw score)] best first, already cut to top_n."""
    if request.tei:
        out = []
        for index, probability, raw in scored:
            item: dict[str, Any] = {"index": index, "score": raw if request.raw_scores else probability}
            if request.return_documents:
                item["text"] = request.echo[index].get("text")
            out.append(item)
        return out
    results = []
    for index, probability, raw in scored:
        item = {"index": index, "relevance_score": probability, "score": raw}
        if request.return_documents:
            item["document"] = request.echo[index]
        results.append(item)
    return {"id": request_id, "object": "rerank", "created": created, "model": model, "results": results,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                     "tokens": {"input_tokens": prompt_tokens, "output_tokens": 0},
                     "relevance_score": "sigmoid(logit(yes) - logit(no)); 'score' is the raw logit difference"}}
