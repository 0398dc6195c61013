"""The service behind ``minireranker serve``: engines, dynamic batcher, K/V store and metrics (no HTTP).

::

    rerank request thread:  parse -> query head (once) -> K/V lookup (index what is not cached)
                            -> batcher.submit(pairs) ... wait ... -> sort, top_n -> response
    batcher thread:         gather pairs of concurrent requests (window, max_batch) -> band -> tail
    index request thread:   one of ``index_workers`` slots -> vision -> doc_prefix -> K/V store

Indexing never holds anything a rerank waits for: it runs in its request's thread, bounded by its own
semaphore, and the store is safe for concurrent readers and writers in one process (and across
processes): a put writes a temp file and ``os.replace``s it (a reader sees the old entry or the new one),
an entry's arrays are views of their own ``mmap`` (a delete or replace unlinks the name, the mapping a
rerank is reading stays valid), and the store's counters sit behind its lock.

A ``read_only`` service reads a cache that another process (the writer: a serve without it, or
``minireranker index``) fills: a rerank of a document not cached answers 404 with every such document
listed in ``failed``, and POST / DELETE /v1/documents answer 403 (docs/serve.md, "Many readers, one store").

Loading is observable: ``start_loading`` opens the bundle on a thread; until it is done ``ready`` is
unset and the HTTP layer answers 503.

Document length: with ``max_document_tokens`` set, a document text over it is refused per document (413)
before any engine runs, or cut to the limit when the request asks ``truncate``; the Reranker gets the same
limit (it then also counts image tokens and raises DocumentTooLongError, which a Failure carries).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .batcher import DynamicBatcher
from ..documents import Document
from ..errors import DocumentTooLongError, MiniRerankerError, NotCachedError, TokenizerError
from ..spec import probability as score_probability
from .api import DocumentRefusal, RequestError, RerankRequest, ServeLimits, rerank_response

log = logging.getLogger("minireranker.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``minireranker serve`` takes; each default is defined here once."""

    bundle: Path
    cache: Path
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_batch: int = 32                 # pairs per engine call and per dynamic batch
    batch_window_ms: float = 2.0        # how long the batcher gathers concurrent requests
    served_model_name: str | None = None  # default: the bundle directory's name
    index_workers: int = 1              # concurrent POST /v1/documents jobs
    providers: tuple[str, ...] | None = None
    backend: str = "onnxruntime"        # runtime/backends.py; a GPU backend needs `minireranker engines` first
    max_cache_bytes: int | None = None
    int8_cache: bool = False
    drain_timeout_s: float = 30.0       # SIGTERM: how long in-flight requests may take to finish
    max_document_tokens: int | None = None  # tokens of one document (413, or cut with truncate); None: the model's
    read_only: bool = False             # a reader of a cache a writer fills: never writes, evicts, or encodes
    limits: ServeLimits = field(default_factory=ServeLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        object.__setattr__(self, "cache", Path(self.cache))
        if not 0 <= self.port <= 65535:
            raise MiniRerankerError(f"--port must be 0..65535, got {self.port}")
        from ..backends import BACKENDS

        if self.backend not in BACKENDS:
            raise MiniRerankerError(f"--backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        for name in ("max_batch", "index_workers"):
            if getattr(self, name) < 1:
                raise MiniRerankerError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise MiniRerankerError(f"--batch-window-ms must be >= 0, got {self.batch_window_ms}")
        if self.api_key is not None and not self.api_key.strip():
            raise MiniRerankerError("the API key (--api-key / MINIRERANKER_API_KEY) is empty; give a key, or "
                                    "unset it to serve without authentication")
        if self.max_document_tokens is not None and self.max_document_tokens < 1:
            raise MiniRerankerError(f"--max-document-tokens must be at least 1, got {self.max_document_tokens}")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.bundle.resolve().name


class RerankService:
    """Thread-safe operations of the server; ``loader()`` returns the Reranker (a hook for tests)."""

    def __init__(self, config: ServeConfig, loader: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.loader = loader or self._load_reranker
        self.reranker: Any = None
        self.batcher: DynamicBatcher | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._index_slots = threading.Semaphore(config.index_workers)
        self._store_stats: tuple[float, dict] = (0.0, {})
        self._template_overhead: int | None = None
        self._init_metrics()

    # -- lifecycle --------------------------------------------------------------------------------
    def _load_reranker(self) -> Any:
        from ..reranker import Reranker

        c = self.config
        extra = {}
        if c.max_document_tokens is not None and "max_document_tokens" in inspect.signature(Reranker).parameters:
            extra["max_document_tokens"] = c.max_document_tokens
        if c.read_only:
            extra["read_only"] = True
        return Reranker(c.bundle, c.cache, providers=c.providers, backend=c.backend, max_cache_bytes=c.max_cache_bytes,
                        batch_size=c.max_batch, int8_cache=c.int8_cache, **extra)

    def start_loading(self) -> threading.Thread:
        """Load the engines on a thread; ``ready`` is set when they are (``load_error`` if they fail)."""
        thread = threading.Thread(target=self._load, name="minireranker-load", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        try:
            reranker = self.loader()
        except Exception as exc:  # reported by /v1/health/ready and the log; the server stays up
            self.load_error = f"loading the bundle failed: {exc}"
            log.error("%s", self.load_error)
            return
        self.reranker = reranker
        self.batcher = DynamicBatcher(self._score, self.config.batch_window_ms / 1e3, self.config.max_batch,
                                      on_batch=self._on_batch)
        self.ready.set()

    def close(self) -> None:
        """Finish queued batches, then release the engines and the store."""
        if self.batcher is not None:
            self.batcher.close(timeout=self.config.drain_timeout_s)
        if self.reranker is not None:
            self.reranker.close()

    def _require_ready(self) -> Any:
        if not self.ready.is_set():
            raise RequestError(503, self.load_error or "the engines are still loading; retry shortly")
        return self.reranker

    # -- metrics ----------------------------------------------------------------------------------
    def _init_metrics(self) -> None:
        # prometheus_client (the serve extra) is imported here, not with the module: ServeConfig's defaults
        # are read for `minireranker --help` on a base install
        from .metrics import COUNT_BUCKETS, Counter, Histogram, MemoryCollector, ReadAtScrape, new_registry

        r = self.registry = new_registry()
        self.m_requests = Counter("minireranker_requests", "HTTP requests by route and status code.",
                                  ("route", "code"), registry=r)
        self.m_errors = Counter("minireranker_errors", "HTTP requests answered 4xx/5xx, by route.",
                                ("route", "code"), registry=r)
        self.m_latency = Histogram("minireranker_request_seconds", "HTTP request latency by route.", ("route",),
                                   registry=r)
        self.m_stage = Histogram("minireranker_stage_seconds", "Seconds per rerank stage (query_head, kv_lookup, "
                                 "index, batch_wait, kv_read, band, tail).", ("stage",), registry=r)
        self.m_candidates = Histogram("minireranker_candidates_per_request", "Documents per rerank request.",
                                      buckets=COUNT_BUCKETS, registry=r)
        self.m_batch = Histogram("minireranker_batch_pairs", "Pairs per dynamic batch.", buckets=COUNT_BUCKETS,
                                 registry=r)
        self.m_batch_requests = Histogram("minireranker_batch_requests", "Requests per dynamic batch.",
                                          buckets=COUNT_BUCKETS, registry=r)
        self.m_indexed = Counter("minireranker_documents_indexed", "Documents indexed by POST /v1/documents.",
                                 ("result",), registry=r)
        scraped = [(f"minireranker_cache_{name}", what, "counter", lambda n=name: self._store_stat(n))
                   for name, what in (("hits", "K/V store hits."), ("misses", "K/V store misses."),
                                      ("evictions", "K/V store LRU evictions."))]
        scraped += [
            ("minireranker_cache_bytes", "Bytes of K/V entries on disk for this bundle.", "gauge",
             lambda: self._store_stat("bytes")),
            ("minireranker_kv_bytes_read", "K/V bytes read into band batches.", "counter",
             lambda: self.reranker.stats["kv_bytes_read"] if self.reranker else 0),
            ("minireranker_queue_depth", "Rerank requests waiting for a dynamic batch.", "gauge",
             lambda: self.batcher.depth if self.batcher else 0),
            ("minireranker_ready", "1 once the engines are loaded.", "gauge", lambda: float(self.ready.is_set())),
        ]
        r.register(ReadAtScrape(scraped))
        r.register(MemoryCollector(lambda: getattr(getattr(self.reranker, "store", None), "namespace", None)))

    def render_metrics(self) -> str:
        """The body of ``GET /metrics``."""
        from .metrics import render

        return render(self.registry)

    def _store_stat(self, name: str) -> float:
        if self.reranker is None:
            return 0
        at, stats = self._store_stats
        if time.monotonic() - at > 0.5:  # one directory scan per scrape, not one per metric
            stats = self.reranker.store.stats()
            self._store_stats = (time.monotonic(), stats)
        return stats.get(name) or 0

    def _on_batch(self, requests: int, pairs: int, seconds: float) -> None:
        self.m_batch.observe(pairs)
        self.m_batch_requests.observe(requests)

    def _score(self, pairs: list) -> Any:
        timings: dict[str, float] = {}
        scores = self.reranker.score_pairs(pairs, timings)
        for stage in ("kv_read", "band", "tail"):
            if stage in timings:
                self.m_stage.labels(stage=stage).observe(timings[stage])
        return scores

    def record(self, route: str, status: int, seconds: float) -> None:
        self.m_requests.labels(route=route, code=str(status)).inc()
        self.m_latency.labels(route=route).observe(seconds)
        if status >= 400:
            self.m_errors.labels(route=route, code=str(status)).inc()

    # -- operations -------------------------------------------------------------------------------
    def rerank(self, request: RerankRequest) -> Any:
        """Score ``request`` (through the dynamic batcher); the response body (dict, or a TEI list)."""
        reranker = self._require_ready()
        limits = self.config.limits
        t0 = time.perf_counter()
        try:
            n = len(reranker.template.plain(request.query))  # as the query is encoded: plain text
            if n > limits.max_query_tokens:
                raise RequestError(413, f"the query is {n} tokens long; the limit is {limits.max_query_tokens} "
                                   "(--max-query-tokens): shorten it")
            state = reranker.prepare_query(request.query)
        except TokenizerError as exc:
            raise RequestError(413 if "tokens long" in str(exc) else 422, str(exc)) from None
        t1 = time.perf_counter()
        self.m_stage.labels(stage="query_head").observe(t1 - t0)
        documents = self._fit_documents(request.documents, request.truncate)
        timings: dict[str, float] = {}
        entries, failed = reranker.lookup(documents, timings)
        for stage in ("kv_lookup", "index"):
            self.m_stage.labels(stage=stage).observe(timings.get(stage, 0.0))
        if failed:
            _raise_failures(failed, documents, listed=self.config.read_only)
        self.m_candidates.observe(len(entries))
        t2 = time.perf_counter()
        scores = self.batcher.submit([(state, e) for _, e in entries]).result()
        self.m_stage.labels(stage="batch_wait").observe(time.perf_counter() - t2)
        probability = [score_probability(s, reranker.spec.head) for s in scores]
        order = sorted(range(len(entries)), key=lambda j: (-scores[j], entries[j][0]))
        if request.top_n is not None:
            order = order[: request.top_n]
        scored = [(entries[j][0], probability[j], float(scores[j])) for j in order]
        tokens = sum(len(state.ids) + int(e.k.shape[2]) for _, e in entries)
        return rerank_response(request, scored, self.config.model_name, tokens, uuid.uuid4().hex, int(time.time()))

    def _document_limit(self) -> int | None:
        """The limit on a document's tokens: the Reranker's (the smaller of --max-document-tokens and the
        model's own) where it has one, else --max-document-tokens."""
        return getattr(self.reranker, "max_document_tokens", None) or self.config.max_document_tokens

    def _fit_documents(self, documents: Sequence[Document], truncate: bool) -> list[Document]:
        """Text documents within the limit: cut to it (``truncate``) or refused (413) before any engine runs.
        (Documents with an image are measured by the Reranker, which refuses them per document.)"""
        limit = self._document_limit()
        if limit is None:
            return list(documents)
        out = []
        for i, doc in enumerate(documents):
            cut = self._fit_text(doc.text, limit) if doc.text and doc.image is None else None
            if cut is not None:
                if not truncate:
                    raise RequestError(413, _too_long(i, cut[1], limit) + ", or send \"truncate\": true")
                doc = Document(text=cut[0], id=doc.id)
            out.append(doc)
        return out

    def _fit_text(self, text: str, limit: int) -> tuple[str, int] | None:
        """(the longest prefix of ``text``, cut at a token boundary, whose document segment fits ``limit``;
        the segment's token count) or None when the whole text fits."""
        from .. import reranker as runtime

        template = self.reranker.template

        def size(t: str) -> int:
            return len(template.document(None, t).ids)

        if self._template_overhead is None:  # the template's tokens around a text: the same for every text
            self._template_overhead = size("x") - len(template.plain("x"))
        overhead = self._template_overhead
        if len(text.encode("utf-8")) + overhead <= limit:  # byte-level BPE: a token covers at least one byte
            return None
        head = text[: limit * getattr(runtime, "MAX_CHARS_PER_TOKEN", 16)]  # never tokenize megabytes to cut
        tokens = size(head)
        if tokens <= limit and head == text:
            return None
        offsets = self.reranker.encoder.tokenizer.encode(head, add_special_tokens=False).offsets
        keep = min(len(offsets), max(1, limit - overhead))
        while keep > 0:
            cut = head[: offsets[keep - 1][1]]
            if size(cut) <= limit:
                return cut, tokens
            keep -= 1
        raise RequestError(413, f"the document template alone is longer than the limit of {limit} tokens")

    def index(self, documents: Sequence[tuple[int, Document]], refused: Sequence[DocumentRefusal] = ()) -> dict:
        """``POST /v1/documents``: index (or re-index changed) documents; one index slot at a time.

        ``documents`` are (index in the request, document); ``refused`` were refused by the parser. Every
        document that fails is listed in ``failed`` with its status; the good ones are indexed. When none
        of the batch could be indexed, the answer is that status (RequestError) with the same list.
        """
        reranker = self._require_ready()
        self._refuse_if_read_only("index documents")
        failed = [{"index": r.index, "id": r.id, "status": r.status, "error": r.error} for r in refused]
        limit = self._document_limit()
        todo = []
        for i, doc in documents:
            cut = self._fit_text(doc.text, limit) if limit is not None and doc.text and doc.image is None else None
            if cut is not None:
                failed.append({"index": i, "id": doc.id, "status": 413, "error": _too_long(i, cut[1], limit)})
            else:
                todo.append((i, doc))
        indexed = skipped = 0
        if todo:
            with self._index_slots:
                report = reranker.index([doc for _, doc in todo])
            indexed, skipped = report.indexed, report.skipped
            for f in report.failed:
                i, doc = todo[f.index]
                failed.append({"index": i, "id": doc.id, "status": _failure_status(f), "error": f.error})
        failed.sort(key=lambda f: f["index"])
        self.m_indexed.labels(result="indexed").inc(indexed)
        self.m_indexed.labels(result="skipped").inc(skipped)
        self.m_indexed.labels(result="failed").inc(len(failed))
        if failed and not indexed and not skipped:
            first = failed[0]
            more = f" (and {len(failed) - 1} more; see 'failed')" if len(failed) > 1 else ""
            raise RequestError(first["status"], first["error"] + more, indexed=0, skipped=0, failed=failed)
        return {"indexed": indexed, "skipped": skipped, "failed": failed}

    def document_status(self, doc_id: str) -> dict:
        """``GET /v1/documents/{id}``: whether the id is cached (404 when it is not)."""
        reranker = self._require_ready()
        key = reranker.key(Document(id=doc_id))
        if key not in reranker.store:
            raise RequestError(404, f"document id {doc_id!r} is not in the cache")
        return {"id": doc_id, "cached": True}

    def delete_document(self, doc_id: str) -> dict:
        """``DELETE /v1/documents/{id}`` (404 when it was not cached)."""
        reranker = self._require_ready()
        self._refuse_if_read_only(f"delete {doc_id!r}")
        if not reranker.store.delete(reranker.key(Document(id=doc_id))):
            raise RequestError(404, f"document id {doc_id!r} is not in the cache")
        return {"id": doc_id, "deleted": True}

    def _refuse_if_read_only(self, what: str) -> None:
        if self.config.read_only:
            raise RequestError(403, f"this server is --read-only, so it cannot {what}: send it to the writer "
                               "(the serve process on the same --cache without --read-only)")


def _raise_failures(failed: list, documents: Sequence[Document], listed: bool = False) -> None:
    """The first failure as the request's error; ``listed``: every failure in its ``failed`` field too."""
    first = failed[0]
    doc = documents[first.index]
    unknown = doc.image is None and not doc.text
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    if listed:
        every = [{"index": f.index, "id": documents[f.index].id, "status": _failure_status(f), "error": f.error}
                 for f in failed]
        raise RequestError(_failure_status(first), f"documents[{first.index}]: {first.error}{more}", failed=every)
    if unknown:
        raise RequestError(404, f"documents[{first.index}]: id {doc.id!r} is not in the cache and has no "
                           f"content; index it with POST /v1/documents first{more}")
    raise RequestError(_failure_status(first), f"documents[{first.index}] cannot be scored: {first.error}{more}")


def _too_long(index: int, tokens: int, limit: int) -> str:
    return (f"documents[{index}] is {tokens} tokens long (template and text), over the limit of {limit} "
            "(--max-document-tokens, at most the model's own): shorten it")


def _failure_status(failure: Any) -> int:
    """413 for a document over the token limit, 404 for one a read-only reader has not in its cache (the
    runtime's Failure carries what was raised), else 422."""
    if isinstance(failure.exception, NotCachedError):
        return 404
    return 413 if isinstance(failure.exception, DocumentTooLongError) else 422

