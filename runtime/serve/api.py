"""Request bodies of ``minireranker serve``: parsing, validation and limits, and response shapes.

One rerank request shape is a superset of what Cohere (v2), Jina and Infinity clients send::

    {"model": str?, "query": str, "documents": [DOC, ...], "top_n": int?, "return_documents": bool?,
     "truncate": bool?}
    DOC = "text" | {"text": str} | {"image": IMAGE} | {"image": IMAGE, "text": str} | {"id": str, ...}
    IMAGE = "data:image/png;base64,..." | bare base64 | an http(s) URL under an --allow-url-prefix

and TEI's ``{"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}``. The answer (see
docs/serve.md) carries ``relevance_score`` = sigmoid(logit(yes) - logit(no)) and the raw ``score``.
runtime/serve/models.py holds the same shapes as pydantic models, for ``/openapi.json``.

Nothing in a request names a file: an image is bytes inside the body (or, only where the operator lists
URL prefixes, fetched from such a URL: runtime/serve/fetch.py), and an ``id`` is an opaque string that
the K/V store hashes into a file name. A rerank document that carries content is keyed by its content
hash even when it also has an ``id``: only ``POST /v1/documents`` writes an id's entry. Limits answer
413, malformed bodies 422 (400 for bytes that are not JSON, nest too deep, or hold a lone surrogate),
each as ``{"detail": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any

from ..documents import Document
from ..errors import MiniRerankerError
from .fetch import fetch_image_url, url_prefix_parts

MAX_ID_CHARS = 256
MAX_JSON_DEPTH = 32  # a request body is 4 levels deep; deeper nesting is refused before it is walked


class RequestError(MiniRerankerError):
    """A request the server refuses: ``status`` is the HTTP status code, the message its ``detail``;
    ``extra`` holds more fields of the error body (e.g. the per-document ``failed`` list)."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.extra = status, extra


@dataclass(frozen=True)
class ServeLimits:
    """What one client and one request may take. Defaults suit a small device; each has a ``serve`` flag."""

    max_body_bytes: int = 32 << 20            # whole request body (413), refused from its Content-Length
    max_client_batch_size: int = 256          # documents per request (413)
    max_image_pixels: int = 4096 * 4096       # width*height of one image, read from its header (413)
    max_query_tokens: int = 512               # query length; the runtime's own cap is 512 (413)
    allow_url_prefixes: tuple[str, ...] = ()  # image URLs fetched only under these (none: never)
    url_timeout_s: float = 10.0               # one image URL fetch, in all (a deadline, not per read)
    header_timeout_s: float = 10.0            # request line + headers complete, from connect / last answer (408)
    body_timeout_s: float = 60.0              # whole body received, from the end of the headers (408)
    keep_alive_timeout_s: float = 5.0         # an idle keep-alive connection is closed after this
    max_connections: int = 256                # open connections; one more is answered 503 and closed
    max_requests_per_connection: int = 1000   # then the connection is closed after its answer
    max_header_bytes: int = 16384             # request line + headers (414 / 431)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_client_batch_size", "max_image_pixels", "max_query_tokens",
                     "max_connections", "max_requests_per_connection", "max_header_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MiniRerankerError(f"serve limit {name} must be a positive integer, got {value!r}")
        for name in ("url_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e6:
                raise MiniRerankerError(f"--{name.replace('_', '-')} must be a positive number of seconds, "
                                        f"got {value!r}")
        for prefix in self.allow_url_prefixes:
            url_prefix_parts(prefix)  # raises on a prefix that cannot be matched safely

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
    truncate: bool = False                # cut over-long document texts to the limit instead of refusing
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentRefusal:
    """A document of a ``POST /v1/documents`` batch refused before indexing (the others are indexed)."""

    index: int
    id: Any
    status: int
    error: str


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object (400 for bytes that are not JSON, nest deeper than
    ``MAX_JSON_DEPTH`` or hold a lone surrogate; 422 for another JSON type)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    _check_tree(data)
    if not isinstance(data, dict):
        raise RequestError(422, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def _check_tree(data: Any) -> None:
    """Depth at most MAX_JSON_DEPTH, and every string (keys too) valid Unicode: JSON allows ``"\ud800"``
    (half of a UTF-16 pair), which no tokenizer or UTF-8 encoder accepts."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "the body")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, str):
            _check_unicode(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_unicode(key, f"a key in {where}")
                stack.append((item, depth + 1, repr(key) if where == "the body" else f"{where}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(400, f"{where} holds a lone surrogate ({text[exc.start]!r} at character {exc.start}): "
                           "send valid Unicode (a surrogate pair, or the character itself)") from None


def _check_count(docs: list, limits: ServeLimits) -> None:
    if len(docs) > limits.max_client_batch_size:
        raise RequestError(413, f"{len(docs)} documents in one request; the limit is "
                           f"{limits.max_client_batch_size} (--max-client-batch-size): split the request")


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
    _check_count(docs, limits)
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
        if document.id is not None and (document.image is not None or document.text):
            # inline content is scored under its content hash; the indexed id's entry is never replaced
            document = Document(image=document.image, text=document.text)
        documents.append(document)
        echo.append(shown)
    return RerankRequest(query, documents, echo, top_n, flags["return_documents"] or flags["return_text"],
                         model, tei, flags["raw_scores"], flags["truncate"])


def parse_index(data: dict, limits: ServeLimits) -> tuple[list[tuple[int, Document]], list[DocumentRefusal]]:
    """``POST /v1/documents``: ``{"documents": [{"id": str, "image"?: IMAGE, "text"?: str}, ...]}``.

    Returns the good documents (with their index in the batch) and the refused ones; a body that is not
    such a list, or holds too many documents, is refused as a whole.
    """
    docs = data.get("documents")
    if not isinstance(docs, list) or not docs:
        raise RequestError(422, "'documents' must be a non-empty list of {\"id\", \"image\" and/or \"text\"}")
    _check_count(docs, limits)
    good, refused = [], []
    for i, doc in enumerate(docs):
        doc_id = doc.get("id") if isinstance(doc, dict) else None
        try:
            document, _ = parse_document(doc, f"documents[{i}]", limits, allow_id=True)
            if document.id is None:
                raise RequestError(422, f"documents[{i}] has no 'id': indexed documents need one to be found again")
            if document.image is None and not document.text:
                raise RequestError(422, f"documents[{i}] has no 'image' or 'text' to index")
        except RequestError as exc:
            refused.append(DocumentRefusal(i, doc_id if isinstance(doc_id, str) else None, exc.status, str(exc)))
            continue
        good.append((i, document))
    return good, refused


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
        data = fetch_image_url(value, where, limits)
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
    except UnidentifiedImageError:  # its message names the buffer object (<_io.BytesIO object at 0x...>)
        raise RequestError(422, f"{where} is not an image Pillow can read (not a known image format); send "
                           "PNG, JPEG, WebP, ... bytes") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RequestError(422, f"{where} is not an image Pillow can read ({type(exc).__name__}: {exc})") from None
    except Image.DecompressionBombError:
        width, height = limits.max_image_pixels + 1, 1
    if width * height > limits.max_image_pixels:
        raise RequestError(413, f"{where} is {width}x{height} = {width * height} pixels; the limit is "
                           f"{limits.max_image_pixels} (--max-image-pixels): downscale it")


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
