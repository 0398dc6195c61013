"""The runtime: a bundle's engines stitched with the disk-backed K/V store (numpy + onnxruntime only).

Its graphs are opened through :mod:`minireranker.engines` (the backend seam) and fed by the graph I/O
table (:mod:`minireranker.runtime.graph_io`), which each loaded graph is checked against.

::

    index(documents)        preprocess -> vision -> [guide -> keep top tokens] -> doc_prefix -> K/V store
                            (doc_prefix also runs the instruction segment: its K/V of layers A..E is stored
                            in the entry; its layers 0..A-1 are the bundle's instruction_*.npy)
    rerank(query, docs)     tokenize the query segment -> query_head (once) -> per batch: read K/V (the
                            document's and its instruction's) -> band -> tail -> sorted

A document is an image (path, bytes, PIL image, numpy array), a text, or both, with an optional id.
Its length is checked before any engine runs (:mod:`minireranker.runtime.limits`): one longer than
``max_document_tokens`` or the model's positions allow fails with DocumentTooLongError, per document.
The store may decline an entry (over its bound, a read-only store, a full disk): ``index`` reports such
documents in ``IndexReport.declined``; ``rerank`` scores them uncached and logs that once. A reranker made
with ``read_only=True`` (a reader beside a writer process) computes no document: one not cached fails.
Its cache key is its id when it has one, else a hash of its content; an id already indexed needs no
content, and a document not yet cached is indexed on the fly. ``rerank`` is thread-safe.

The server's dynamic batching (:mod:`minireranker.runtime.serve.batcher`) scores pairs of several queries in one
engine call: ``prepare_query`` runs the query head once per query, ``lookup`` finds (or indexes) each
query's documents, and ``score_pairs`` sends every (query, document) pair through the band and tail::

    band  groups: all pairs whose queries have the same token count (a per-candidate ``hidden``),
          ordered by K/V length before they are cut into batches (scores come back in the pairs' order)
    tail  groups: all pairs whose queries have the same token count (no query mask: never padded)

``lookup`` reads a call's candidates with one batched store read (``KVStore.get_many``, the read
benchmarks/kvstore_bench.py measures) and indexes the misses.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..engines import choose_providers
from .backends import BATCH_SIZE, engine_limits, graph_opener
from .bundle import BUNDLE_FILE, Bundle, BundleError, load_bundle
from .documents import Document, short_label
from .encoder import Encoder, add_time
from .errors import CacheError, DocumentError, MiniRerankerError, NotCachedError, TokenizerError
from .graph_io import BAND, DOC_PREFIX, QUERY_HEAD, TAIL
from .kvstore import KVEntry, KVStore, StoreConfig
from .limits import MAX_CHARS_PER_TOKEN, DocumentLimit
from .preprocess import preprocess_image
from .pruning import select_kept
from .progress import progress_bar
from .spec import probability
from .template import DocumentTokens, VisionFirstTemplate, document_positions, embedder_image_tail_ids, text_positions

log = logging.getLogger("minireranker.runtime")
MAX_QUERY_TOKENS = 512
CACHE_ENV = "MINIRERANKER_CACHE"  # where Reranker.from_pretrained keeps K/V when no cache_dir is given
DOCUMENT_GRAPHS = ("vision", "guide", "doc_prefix")  # what indexing runs; a rerank of cached documents never opens them


@dataclass(frozen=True)
class RerankResult:
    index: int            # position of the document in the request
    id: str | None
    document: str         # the document's label (its id, path or text)
    score: float          # the head's score: logit(yes) - logit(no), or a classifier's output
    probability: float    # sigmoid(score + the head's offset)


@dataclass(frozen=True)
class Failure:
    index: int
    document: str
    error: str
    # what was raised (e.g. DocumentTooLongError, which the server answers with 413); None: not an exception
    exception: MiniRerankerError | None = field(default=None, compare=False, repr=False)


@dataclass
class RerankOutput:
    query: str
    results: list[RerankResult]
    failed: list[Failure]
    timings: dict[str, float] = field(default_factory=dict)   # seconds per stage

    def to_dict(self, spec: dict | None = None) -> dict:
        """``minireranker reference --json``'s schema plus ``failed`` (a document's id is its label)."""
        return {"query": self.query, "spec": spec,
                "results": [{"index": r.index, "document": r.document, "score": r.score,
                             "probability": r.probability} for r in self.results],
                "failed": [{"index": f.index, "document": f.document, "error": f.error} for f in self.failed]}


@dataclass(frozen=True)
class QueryState:
    """A query after the query head: what every pair of this query shares (``prepare_query``)."""

    text: str
    ids: tuple[int, ...]   # the query segment's token ids (the query text and the closing tokens)
    hidden: np.ndarray     # [1, Q, D] the query after layers 0..A-1


@dataclass
class IndexReport:
    indexed: int = 0   # computed and stored
    skipped: int = 0   # already cached
    failed: list[Failure] = field(default_factory=list)
    declined: list[Failure] = field(default_factory=list)  # computed, but the store did not keep it (its bound)


class Reranker:
    """Load a bundle with a cache directory; ``index`` documents and ``rerank`` them for queries."""

    def __init__(self, bundle: str | Path | Bundle, cache_dir: str | Path, providers: Sequence[str] | None = None,
                 max_cache_bytes: int | None = None, batch_size: int = BATCH_SIZE, int8_cache: bool = False,
                 max_document_tokens: int | None = None, backend: str = "onnxruntime", read_only: bool = False
                 ) -> None:
        """``backend``: which engines run the graphs (runtime/backends.py); a GPU backend needs
        ``minireranker engines`` first, and caps the batch, query and document sizes at its profiles'.
        ``read_only``: a reader of a cache another process writes (docs/serve.md, "Many readers, one store"):
        the store never writes, evicts or removes, and a document not cached fails with NotCachedError
        instead of being computed."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        b = self.bundle
        self.backend = backend
        opener, self.engines = graph_opener(b, backend, list(providers) if providers else None)
        self.providers = choose_providers(providers) if backend == "onnxruntime" else [backend]
        limits = engine_limits(self.engines)  # {} for onnxruntime: nothing but the model caps a size
        self.batch_size = min(batch_size, limits.get("batch", batch_size))  # smaller calls, the same scores
        self.spec = b.spec
        self.encoder = Encoder(b, b.path, b.model, b.graphs, opener)
        self.template = self.template_of(b, self.encoder.tokenizer)
        closing = len(self.template.query_text(""))  # the tokens every query segment ends with
        self.max_query_tokens = min(MAX_QUERY_TOKENS, limits["query_len"] - closing) if "query_len" in limits \
            else MAX_QUERY_TOKENS
        # the instruction segment entering layer A [1, I, D], and its K/V of layers 0..A-1 [A, 1, Hkv, I, d]
        self.instruction_hidden = np.load(b.path / "instruction_hidden.npy")
        self.instruction_k = np.load(b.path / "instruction_k.npy")
        self.instruction_v = np.load(b.path / "instruction_v.npy")
        self.embedder = None
        if b.guide and b.guide["kind"] == "embedder":
            self.embedder = Encoder(b, b.path / b.guide["dir"], b.guide["model"], b.guide["graphs"], opener,
                                    prefix="embedder/")
        if "doc_len" in limits:
            max_document_tokens = min(max_document_tokens or limits["doc_len"], limits["doc_len"])
        self.document_limit = self.document_limit_of(b, self.template, max_document_tokens)
        self.max_document_tokens, self.model_document_tokens = self.document_limit.tokens, self.document_limit.model
        # the namespace derives from the verified checksums and the spec as loaded (runtime/bundle.py), not
        # the build's fingerprint alone: an edited bundle never reads entries written under the original
        self.read_only = read_only
        self.store = KVStore(StoreConfig(Path(cache_dir), b.namespace, max_bytes=max_cache_bytes,
                                         quantize_int8=int8_cache, read_only=read_only))
        self.stats: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._said_uncached = False

    @classmethod
    def from_pretrained(cls, path: str | Path, cache_dir: str | Path | None = None, **options) -> "Reranker":
        """Open the bundle at ``path`` (a directory ``minireranker build`` wrote) for :meth:`rank`.

        ``cache_dir``: where document K/V is kept (default :func:`default_cache_dir`: ``$MINIRERANKER_CACHE``,
        else ``$XDG_CACHE_HOME/minireranker/kv``, else ``~/.cache/minireranker/kv``); one directory holds the
        entries of many bundles apart. ``options``: as for :class:`Reranker` (``backend``, ``providers``, ...).
        A checkpoint is not a bundle: the runtime needs no torch, so it says how to build one
        (``minireranker build``, or :func:`minireranker.export.onnx_export.build_and_load` on a build machine).
        """
        path = Path(path)
        if not (path / BUNDLE_FILE).is_file() and (path / "config.json").is_file():
            raise BundleError(f"{path} is a checkpoint, not a bundle: build its engines first with "
                              f"`minireranker build {path} -o BUNDLE_DIR` (or, where torch is installed, "
                              "minireranker.export.onnx_export.build_and_load), then load BUNDLE_DIR")
        return cls(path, default_cache_dir() if cache_dir is None else cache_dir, **options)

    @staticmethod
    def template_of(bundle: Bundle, tokenizer=None) -> VisionFirstTemplate:
        """The bundle's template over its tokenizer, checked against the ids bundle.json records."""
        if tokenizer is None:
            import tokenizers

            tokenizer = tokenizers.Tokenizer.from_file(str(bundle.path / "tokenizer.json"))
        template, recorded = VisionFirstTemplate(tokenizer, bundle.spec), bundle.template
        if template.system_ids != recorded["system_ids"] or template.yes_id != recorded["yes_id"] \
                or template.instruction_ids != recorded["instruction_ids"] \
                or template.score_ids != recorded.get("score_ids", []):
            raise BundleError(f"{bundle.path}: tokenizer.json does not reproduce the ids in bundle.json; "
                              "rebuild the bundle")
        return template

    @staticmethod
    def document_limit_of(bundle: Bundle, template: VisionFirstTemplate,
                          max_document_tokens: int | None = None) -> DocumentLimit:
        """The most tokens a document may have: the model's positions less the template's and the longest
        query's (and ``max_document_tokens`` when smaller)."""
        reserved = len(template.system_ids) + len(template.instruction_ids) + MAX_QUERY_TOKENS \
            + len(template.query_text(""))  # the rest of the model's positions is the document's
        return DocumentLimit.of(bundle.model.get("max_position_embeddings"), reserved, max_document_tokens)

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()
        self.encoder.close_graphs()
        if self.embedder is not None:
            self.embedder.close_graphs()

    def release_document_graphs(self) -> None:
        """Free the sessions only indexing uses (vision, guide, document prefix); they open again if needed."""
        self.encoder.close_graphs(DOCUMENT_GRAPHS)
        if self.embedder is not None:
            self.embedder.close_graphs()

    def __enter__(self) -> "Reranker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, key: str, value: float = 1.0) -> None:
        with self._lock:
            self.stats[key] += value

    # -- documents --------------------------------------------------------------------------------
    @staticmethod
    def key(doc: Document) -> str:
        return f"id:{doc.id}" if doc.id is not None else f"sha256:{doc.content_hash()}"

    def encode_document(self, doc: Document, timings: dict[str, float] | None = None) -> KVEntry:
        """Run the document through vision, pruning and the prefix engine (no caching).

        ``timings``, if given, gets seconds added under ``preprocess``, ``vision``, ``guide`` and
        ``doc_prefix`` (the benchmark's per-stage split of the cold path).
        """
        if doc.image is None and not doc.text:
            raise DocumentError(f"document id {doc.id!r} is not in the cache and has no content: "
                                "index it with its image and/or text first")
        t0 = time.perf_counter()
        self.document_limit.check_text(short_label(doc.label), doc.text, lambda text: len(self.template.plain(text)))
        embeds = deepstack = None
        grid_hw = prepared = None
        if doc.image is not None:
            prepared = preprocess_image(doc.image, self.bundle.preprocess)
            m = self.encoder.model["vision"]["merge_size"]
            grid_hw = (prepared[1][1] // m, prepared[1][2] // m)
        tokens = self.template.document(grid_hw, doc.text)
        self.document_limit.check_tokens(short_label(doc.label), len(tokens.ids))  # before any engine runs
        add_time(timings, "preprocess", time.perf_counter() - t0)
        if prepared is not None:
            embeds, deepstack, _ = self.encoder.vision(doc.image, self.bundle.preprocess, timings, prepared)
        t1 = time.perf_counter()
        x, rows, dense = self.encoder.sequence(tokens, embeds, deepstack)
        positions, query_start = document_positions(len(self.template.system_ids), tokens)
        add_time(timings, "preprocess", time.perf_counter() - t1)
        kept = None
        if self.spec.keep_ratio < 1.0 and len(rows):
            t1 = time.perf_counter()
            kept = select_kept(self._importance(doc, x, positions, rows, dense, grid_hw), self.spec.keep_ratio)
            add_time(timings, "guide", time.perf_counter() - t1)
            keep = np.ones(len(tokens.ids), dtype=bool)
            keep[np.setdiff1d(rows, rows[kept])] = False
            x, positions = x[keep], positions[:, keep]
            dense = dense[:, keep] if dense is not None else None
        t1 = time.perf_counter()
        start = self._instruction_start(int(query_start))
        doc_k, doc_v, ik, iv = self.encoder.run(
            DOC_PREFIX, embeds=x[None], positions=positions[:, None], system_k=self.encoder.system_k,
            system_v=self.encoder.system_v, instruction_hidden=self.instruction_hidden,
            instruction_positions=text_positions(start, self.instruction_hidden.shape[1])[:, None], deepstack=dense)
        add_time(timings, "doc_prefix", time.perf_counter() - t1)
        self._count("index_seconds", time.perf_counter() - t0)
        meta = {"label": doc.label, "kept_visual": None if kept is None else kept.tolist(),
                "content_hash": doc.content_hash()}
        return KVEntry(doc_k, doc_v, positions, int(query_start), meta, ik, iv)

    def _instruction_start(self, query_start: int) -> int:
        """The instruction segment's first position: after the document, or the spec's fixed position."""
        return self.spec.query_position if self.spec.query_position is not None else query_start

    def _importance(self, doc, x, positions, rows, dense, grid_hw) -> np.ndarray:
        guide = self.bundle.guide
        assert guide is not None
        if guide["kind"] == "self":
            probs = self.encoder.guide(x, positions, dense, guide["layer"])
            return probs[len(self.template.system_ids) + rows]
        emb = self.embedder
        assert emb is not None
        e_embeds, e_ds, e_grid = emb.vision(doc.image, self.bundle.preprocess)
        if e_grid != grid_hw:
            raise BundleError(f"embedder grid {e_grid} differs from the reranker's {grid_hw}; rebuild the bundle")
        n = grid_hw[0] * grid_hw[1]
        tail = embedder_image_tail_ids(emb.tokenizer, doc.text)  # the text is plain text
        tokens = DocumentTokens([guide["image_pad_id"]] * n + list(tail), 0, n, grid_hw)
        ex, erows, edense = emb.sequence(tokens, e_embeds, e_ds)
        epos, _ = document_positions(len(guide["system_ids"]), tokens)
        probs = emb.guide(ex, epos, edense, guide["layer"])
        return probs[len(guide["system_ids"]) + erows]

    def _cached(self, doc: Document) -> KVEntry | None:
        return self._still_current(doc, self.store.get(self.key(doc)))

    @staticmethod
    def _still_current(doc: Document, entry: KVEntry | None) -> KVEntry | None:
        """``entry``, unless ``doc`` has an id and content that the entry was not computed from, or the entry
        lacks the instruction segment's K/V (the store allows that; this reranker always writes it)."""
        if entry is not None and entry.instruction_k is None:
            return None
        if entry is not None and doc.id is not None and (doc.image is not None or doc.text):
            if entry.meta.get("content_hash") != doc.content_hash():
                return None  # the id now names other content: re-index
        return entry

    def _put(self, doc: Document, entry: KVEntry) -> KVEntry:
        """Store an entry and score what the store gives back (int8 K/V is then the same on the first
        and every later read); the fresh entry when the store declined it (larger than the bound, a read-only
        store) or could not write it (a full disk, a foreign file at its name): scored uncached, said once."""
        key = self.key(doc)
        try:
            written = self.store.put(key, entry)
        except CacheError as exc:
            self._count("uncached")
            if not self._said_uncached:
                self._said_uncached = True
                log.warning("scoring documents uncached: %s", exc)
            return entry
        if written:
            stored = self.store.get(key)
            if stored is not None:
                return stored
        return entry

    def index(self, documents: Iterable[Document], progress: bool = False) -> IndexReport:
        """Index documents not yet cached (resumable: cached ones are skipped)."""
        report = IndexReport()
        docs = list(documents)
        if self.read_only:
            raise CacheError(f"this reranker reads the K/V cache at {self.store.namespace} read-only (read_only, "
                             "--read-only): index documents through the writer, which shares that cache")
        if self.store.read_only:
            raise CacheError(f"the K/V cache at {self.store.namespace} is read-only: indexing needs a writable "
                             "cache directory; fix its permissions or choose another --cache")
        bar = progress_bar(len(docs), "indexing", "doc", disable=not progress)
        for i, doc in enumerate(docs):
            try:
                if self._cached(doc) is not None:
                    report.skipped += 1
                elif self.store.put(self.key(doc), self.encode_document(doc)):
                    report.indexed += 1
                else:
                    bound = self.store.config.max_bytes
                    report.declined.append(Failure(i, doc.label, (
                        f"its K/V entry is larger than the cache bound max_cache_bytes={bound:,}, so it was not "
                        "stored; raise --max-cache-bytes")))
            except MiniRerankerError as exc:
                report.failed.append(Failure(i, doc.label, str(exc), exc))
                log.info("document %s failed: %s", doc.label, exc)  # the caller reports it
            bar.update(1)
        bar.close()
        return report

    # -- queries ----------------------------------------------------------------------------------
    def query_ids(self, query: str) -> list[int]:
        if not isinstance(query, str) or not query.strip():
            raise TokenizerError("the query is empty; pass a non-empty --query text")
        if len(query) > MAX_QUERY_TOKENS * MAX_CHARS_PER_TOKEN:  # refused before tokenizing it all
            raise TokenizerError(f"the query is {len(query):,} characters long, more than the "
                                 f"{MAX_QUERY_TOKENS * MAX_CHARS_PER_TOKEN:,} a {MAX_QUERY_TOKENS}-token query can "
                                 "hold: shorten it")
        n = len(self.template.plain(query))  # plain text, as the query segment encodes it
        if n > self.max_query_tokens:
            engines = f" (the {self.backend} engines' profile)" if self.max_query_tokens < MAX_QUERY_TOKENS else ""
            raise TokenizerError(f"the query is {n} tokens long; the limit is {self.max_query_tokens}{engines}: "
                                 "shorten it")
        return self.template.query_text(query)  # the instruction segment is in each document's entry

    def rerank(self, query: str, documents: Sequence[Document | str], top_k: int | None = None) -> RerankOutput:
        """Score documents (Document objects or ids) for ``query``; best first, failures listed apart.

        A document that cannot be read or scored is listed in ``failed`` (its index and a message) and the
        others are still scored. An empty query, or one over ``MAX_QUERY_TOKENS`` (512) tokens, raises
        :class:`TokenizerError`: the query is never truncated.
        """
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise MiniRerankerError(f"top_k must be >= 1 or None (every result), got {top_k!r}; pass --top-k 1 or more")
        timings: dict[str, float] = defaultdict(float)
        t0 = time.perf_counter()
        state = self.prepare_query(query)
        timings["query_head"] = time.perf_counter() - t0
        docs = [d if isinstance(d, Document) else Document(id=str(d)) for d in documents]
        entries, failed = self.lookup(docs, timings)
        scores = self.score_pairs([(state, e) for _, e in entries], timings)
        results = [RerankResult(i, docs[i].id, docs[i].label, float(s), probability(s, self.spec.head))
                   for (i, _), s in zip(entries, scores)]
        results.sort(key=lambda r: (-r.score, r.index))
        self._count("queries")
        self._count("candidates", len(entries))
        return RerankOutput(query, results[:top_k] if top_k else results, failed, dict(timings))

    def rank(self, query: str, documents: Sequence, top_k: int | None = None) -> list[RerankResult]:
        """Score ``documents`` for ``query`` and return them best first (at most ``top_k``).

        Each document is a ``str`` (a text), a ``pathlib.Path``, PIL image, numpy array or ``bytes`` (an
        image), or a :class:`Document` (an image and a text, or an id: ``Document(id=...)`` of one already
        indexed, or ``Document(image=..., id=...)`` to name it). A result's ``index`` is the document's
        position in ``documents``, its ``id`` the id given (else None). Unlike :meth:`rerank`, which lists
        failures apart and reads a ``str`` as an id, a document that cannot be scored raises
        :class:`DocumentError` naming its position (or the error it met: DocumentTooLongError, ...).
        """
        out = self.rerank(query, [as_document(d, i) for i, d in enumerate(documents)], top_k)
        if out.failed:
            first = out.failed[0]
            error = first.exception if first.exception is not None else DocumentError(first.error)
            more = f" ({len(out.failed) - 1} more failed)" if len(out.failed) > 1 else ""
            error.args = (f"document [{first.index}] {short_label(first.document)}: {first.error}{more}",)
            raise error
        return out.results

    def prepare_query(self, query: str) -> QueryState:
        """Tokenize ``query`` and run the query head once (raises TokenizerError like ``rerank``)."""
        ids = self.query_ids(query)
        return QueryState(query, tuple(ids), self._query_head(ids))

    def lookup(self, docs: Sequence[Document], timings: dict[str, float] | None = None
               ) -> tuple[list[tuple[int, KVEntry]], list[Failure]]:
        """Each document's K/V entry from the cache, indexing those not cached; failures listed apart.

        The cached entries are read with ONE ``get_many`` (each distinct key once; CRC-checked, a corrupted
        one counts as a miss and is recomputed, every hit's recency is touched). ``timings`` gets ``index``
        (seconds spent indexing) and ``kv_lookup`` (the rest) added.
        """
        entries: list[tuple[int, KVEntry]] = []
        t0 = time.perf_counter()
        keys, stored, failed = self._read_cached(docs)
        fresh: dict[str, KVEntry] = {}  # indexed by this call: a document given twice reads it back
        indexing = 0.0
        for i, key in keys.items():
            doc = docs[i]
            try:
                entry = self._still_current(doc, fresh[key] if key in fresh else stored[key])
                if entry is None and self.read_only:
                    raise NotCachedError("not in the cache; index it first with the writer (a read-only reader "
                                         "computes no document)")
                if entry is None:
                    t1 = time.perf_counter()
                    entry = fresh[key] = self._put(doc, self.encode_document(doc, timings))
                    indexing += time.perf_counter() - t1
                entries.append((i, entry))
            except MiniRerankerError as exc:
                failed.append(Failure(i, doc.label, str(exc), exc))
        failed.sort(key=lambda f: f.index)
        add_time(timings, "index", indexing)
        add_time(timings, "kv_lookup", time.perf_counter() - t0 - indexing)
        return entries, failed

    def _read_cached(self, docs: Sequence[Document]
                     ) -> tuple[dict[int, str], dict[str, KVEntry | None], list[Failure]]:
        """Each document's key (by position) and one batched store read of the distinct keys."""
        keys: dict[int, str] = {}
        failed: list[Failure] = []
        for i, doc in enumerate(docs):
            try:
                keys[i] = self.key(doc)
            except MiniRerankerError as exc:  # e.g. an image that cannot be read to hash it
                failed.append(Failure(i, doc.label, str(exc), exc))
        try:
            unique = list(dict.fromkeys(keys.values()))
            return keys, dict(zip(unique, self.store.get_many(unique))), failed
        except MiniRerankerError as exc:  # the store cannot be read at all: every document fails with it
            return {}, {}, failed + [Failure(i, docs[i].label, str(exc), exc) for i in keys]

    def score_pairs(self, pairs: Sequence[tuple[QueryState, KVEntry]],
                    timings: dict[str, float] | None = None) -> np.ndarray:
        """Scores (logit(yes) - logit(no)) of (query, document entry) pairs, in order, with pairs of several
        queries sharing engine calls of at most ``batch_size`` pairs (see the module docstring)."""
        timings = timings if timings is not None else defaultdict(float)
        timings.setdefault("kv_read", 0.0)
        groups: dict[int, list[int]] = defaultdict(list)
        for j, (q, _) in enumerate(pairs):
            groups[len(q.ids)].append(j)
        by_length: dict[int, list[tuple[list[int], np.ndarray, np.ndarray]]] = defaultdict(list)
        for members in groups.values():
            members.sort(key=lambda j: pairs[j][1].k.shape[2])  # by K/V length, so a batch pads little
            for start in range(0, len(members), self.batch_size):
                chunk = members[start: start + self.batch_size]
                hidden = np.concatenate([pairs[j][0].hidden for j in chunk])  # [N, Q, D]: one per pair
                ids = pairs[chunk[0]][0].ids
                h, positions = self._band(hidden, ids, [pairs[j][1] for j in chunk], timings)
                by_length[len(ids)].append((chunk, h, positions))
        scores = np.zeros(len(pairs))
        for parts in by_length.values():  # [N, Q, D] band outputs of equal Q: one tail per batch_size rows
            order = [j for chunk, _, _ in parts for j in chunk]
            h = np.concatenate([x for _, x, _ in parts])
            positions = np.concatenate([p for _, _, p in parts], axis=1)
            for start in range(0, len(order), self.batch_size):
                end = start + self.batch_size
                scores[order[start:end]] = self._tail(h[start:end], positions[:, start:end],
                                                      [pairs[j][1] for j in order[start:end]], timings)
        return scores

    def _query_head(self, ids: list[int]) -> np.ndarray:
        """Layers 0..A-1 over the query: run ONCE per query, shared by every candidate: [1, Q, D]."""
        x = np.array(self.encoder.embed[np.asarray(ids)], dtype=self.encoder.dtype)[None]
        a = self.spec.band[0]
        if a == 0:
            return x
        positions = text_positions(self.spec.query_position + self.instruction_hidden.shape[1], len(ids))[:, None]
        self._count("query_head_runs")
        (hidden,) = self.encoder.run(QUERY_HEAD, embeds=x, positions=positions,
                                     system_k=self.encoder.system_k[:a], system_v=self.encoder.system_v[:a],
                                     instruction_k=self.instruction_k, instruction_v=self.instruction_v)
        return hidden

    def _band(self, hidden: np.ndarray, ids: Sequence[int], batch: list[KVEntry], timings: dict
              ) -> tuple[np.ndarray, np.ndarray]:
        """Layers A..B of N candidates: hidden [N, Q, D] -> (hidden [N, Q, D], positions [3, N, Q])."""
        a, b = self.spec.band
        t0 = time.perf_counter()
        n, t = len(batch), max(x.k.shape[2] for x in batch)
        nb, hkv, _, d = batch[0].k.shape
        doc_k = np.empty((n, nb, hkv, t, d), dtype=self.encoder.dtype)
        doc_v = np.empty_like(doc_k)
        mask = np.zeros((n, t), dtype=bool)
        for j, entry in enumerate(batch):  # the read: mmap'd pages -> one padded batch, each byte written once
            length = entry.k.shape[2]
            doc_k[j, :, :, :length] = entry.k
            doc_v[j, :, :, :length] = entry.v
            doc_k[j, :, :, length:] = 0  # padding (masked, but never uninitialised memory)
            doc_v[j, :, :, length:] = 0
            mask[j, :length] = True
        ik, iv = self._instructions(batch, slice(0, b - a + 1))
        offset = self.instruction_hidden.shape[1]  # the query segment follows the instruction segment
        positions = np.stack([text_positions(self._instruction_start(x.query_start) + offset, len(ids))
                              for x in batch], axis=1)
        timings["kv_read"] += time.perf_counter() - t0
        self._count("kv_bytes_read", doc_k.nbytes + doc_v.nbytes + ik.nbytes + iv.nbytes)
        t0 = time.perf_counter()
        (h,) = self.encoder.run(BAND, hidden=hidden, positions=positions, doc_k=doc_k, doc_v=doc_v, doc_mask=mask,
                                instruction_k=ik, instruction_v=iv, system_k=self.encoder.system_k[a: b + 1],
                                system_v=self.encoder.system_v[a: b + 1])
        timings["band"] = timings.get("band", 0.0) + time.perf_counter() - t0
        return h, positions

    def _instructions(self, batch: Sequence[KVEntry], layers: slice) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' instruction K/V of ``layers`` (of A..E): [N, layers, Hkv, I, d] each."""
        dtype = self.encoder.dtype
        return (np.stack([np.asarray(x.instruction_k[layers], dtype=dtype) for x in batch]),
                np.stack([np.asarray(x.instruction_v[layers], dtype=dtype) for x in batch]))

    def _tail(self, h: np.ndarray, positions: np.ndarray, batch: Sequence[KVEntry], timings: dict) -> np.ndarray:
        """Layers B+1..E and the exit score: hidden [N, Q, D], positions [3, N, Q], the N candidates' entries
        (their instruction K/V of layers B+1..E) -> scores [N] float64."""
        a, b, e = self.spec.band[0], self.spec.band[1], self.spec.exit_layer
        t0 = time.perf_counter()
        ik, iv = self._instructions(batch, slice(b - a + 1, e - a + 1))
        self._count("kv_bytes_read", ik.nbytes + iv.nbytes)  # the rest of each entry's instruction K/V
        (scores,) = self.encoder.run(TAIL, hidden=h, positions=positions, instruction_k=ik, instruction_v=iv,
                                     system_k=self.encoder.system_k[b + 1: e + 1],
                                     system_v=self.encoder.system_v[b + 1: e + 1])
        timings["tail"] = timings.get("tail", 0.0) + time.perf_counter() - t0
        return scores.astype(np.float64)


def default_cache_dir() -> Path:
    """The K/V cache of :meth:`Reranker.from_pretrained` when none is given: ``$MINIRERANKER_CACHE``, else
    ``$XDG_CACHE_HOME/minireranker/kv``, else ``~/.cache/minireranker/kv``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minireranker" / "kv"


def as_document(item: object, index: int = 0) -> Document:
    """What :meth:`Reranker.rank` makes of one of its documents: a ``str`` is a text; a path, PIL image,
    numpy array or bytes an image; a :class:`Document` is itself. Anything else is a DocumentError."""
    if isinstance(item, Document):
        return item
    if isinstance(item, str):
        return Document(text=item)
    if isinstance(item, (Path, bytes, bytearray, np.ndarray)) or _is_pil_image(item):
        return Document(image=bytes(item) if isinstance(item, bytearray) else item)
    raise DocumentError(f"document [{index}] is a {type(item).__name__}: pass a str (a text), a pathlib.Path, PIL "
                        "image, numpy array or bytes (an image), or a Document (an image with a text, or an id)")


def _is_pil_image(item: object) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def index_documents(bundle: str | Path, cache_dir: str | Path, documents: Sequence[Document],
                    progress: bool = True, **options) -> IndexReport:
    """Index ``documents`` into the cache (``minireranker index``); already cached ones are skipped."""
    with Reranker(bundle, cache_dir, **options) as reranker:
        return reranker.index(documents, progress=progress)


def rerank_documents(bundle: str | Path, cache_dir: str | Path, query: str, documents: Sequence[Document | str],
                     top_k: int | None = None, **options) -> tuple[RerankOutput, dict]:
    """One query over documents or ids (``minireranker rerank``); returns the output and the spec."""
    with Reranker(bundle, cache_dir, **options) as reranker:
        return reranker.rerank(query, documents, top_k), reranker.bundle.data["spec"]
