"""Indexing on a Ray cluster (``minireranker index --ray``): Ray Data spreads the documents over a pool of actors,
each holding one :class:`~minireranker.runtime.reranker.Reranker`, and every actor writes into the same K/V store.

::

    driver                                          each actor (RayIndexConfig.workers of them)
    documents -> skip those cached (one get_many)
              -> records {index, path, image, text, id}
                 ray.data.from_items ------------>  __init__: Reranker(bundle, cache_dir, **options), once
                                                    __call__(batch): Reranker.index([doc]) per document
                                                      (skips what is cached by now; an atomic put)
              IndexReport, progress bar  <-------  rows {index, status, error}, one per document

A record is small: an image file travels as its absolute path and is read by the actor (a worker does not share
the driver's working directory, so a relative path is made absolute; a document without an id is then labelled
by that path in its entry's meta); an in-memory image (bytes, PIL image, array) travels pickled in ``image``.
The entries are those ``Reranker.index`` writes: same key, same format, written to a temp file and renamed
(runtime/kvstore.py), so a worker that dies leaves complete entries only.

The report means what ``Reranker.index``'s does: ``indexed`` (computed and stored), ``skipped`` (already
cached: found by the driver, or by an actor just before it would encode), ``failed`` and ``declined`` (over
the cache bound), each failure with the document's index and label. A bad document (an unreadable image, an
empty text) fails alone; so does a document whose encoding raised anything else (its type is named). A
document given twice (one key) is dispatched once, its last copy, and the others take its outcome, as in a
local run (indexed, then skipped; the last content wins when one id names two).

Fault tolerance: Ray Data restarts an actor that dies (a killed process, a lost node) and retries its batch
without bound; the retried batch skips what the dead actor committed, so the job completes in one run. If the
driver or the cluster goes, run the same command again: it skips every complete entry (resumable, idempotent).

Test hook: with ``MINIRERANKER_TEST_KILL_AFTER=N`` in the driver's environment, each actor's first life
exits (``os._exit``, no clean-up, as a kill -9 leaves it) inside its (N+1)-th entry put, once the temp file is
written and fsynced but before the rename; its restart runs unarmed.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import re
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .bundle import load_bundle
from .documents import Document
from .errors import CacheError, MiniRerankerError
from .kvlayout import ENTRY_SUFFIX, TEMP_PREFIX
from .kvstore import KVStore, StoreConfig
from .progress import progress_bar
from .reranker import Failure, IndexReport, Reranker

log = logging.getLogger("minireranker.runtime")

RAY_INSTALL = "pip install 'minireranker[ray]'"
KILL_AFTER_ENV = "MINIRERANKER_TEST_KILL_AFTER"
INDEXED, SKIPPED, FAILED, DECLINED = "indexed", "skipped", "failed", "declined"


@dataclass(frozen=True)
class RayIndexConfig:
    """Where and how wide a Ray indexing job runs."""

    address: str | None = None      # a running cluster (`ray start --head`); None: RAY_ADDRESS, else a local Ray
    workers: int | None = None      # actors, each with its own engines; None: the cluster's CPUs (or GPUs) / per worker
    documents_per_batch: int = 8    # documents per actor call: what a dead actor's retry redoes at most
    cpus_per_worker: float = 1.0    # reserved for scheduling (ONNX Runtime still sizes its own thread pool)
    gpus_per_worker: float = 0.0    # GPUs per actor; Ray sets CUDA_VISIBLE_DEVICES for each

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise MiniRerankerError(f"workers must be an integer >= 1 or None (one per CPU), got {self.workers!r}")
        if not isinstance(self.documents_per_batch, int) or self.documents_per_batch < 1:
            raise MiniRerankerError(f"documents_per_batch must be an integer >= 1, got {self.documents_per_batch!r}")
        if not self.cpus_per_worker > 0 or not self.gpus_per_worker >= 0:
            raise MiniRerankerError(f"cpus_per_worker must be > 0 and gpus_per_worker >= 0, got "
                                    f"{self.cpus_per_worker!r} and {self.gpus_per_worker!r}")

    @classmethod
    def tiny(cls, **overrides: Any) -> "RayIndexConfig":
        """Two workers, small batches: the 2-CPU local cluster of the tests."""
        return cls(**{"workers": 2, "documents_per_batch": 4, **overrides})


def index_on_ray(bundle: str | Path, cache_dir: str | Path, documents: Iterable[Document],
                 config: RayIndexConfig | None = None, *, progress: bool = True,
                 **reranker_options: Any) -> IndexReport:
    """Index ``documents`` into ``cache_dir`` with a pool of Ray actors (see the module docstring).

    ``reranker_options`` are :class:`Reranker`'s (providers, backend, max_cache_bytes, int8_cache, ...), given to
    every actor. A Ray already initialized in this process is used as it is; otherwise the job connects to
    ``config.address`` (or starts a local Ray on this machine's cores) and disconnects at the end.
    """
    config = config or RayIndexConfig()
    try:  # here, not in every actor's constructor, where Ray would replace the dying actors a while first
        inspect.signature(Reranker).bind(bundle, cache_dir, **reranker_options)
    except TypeError as exc:
        raise MiniRerankerError(f"index_on_ray: {exc}: reranker_options are Reranker's keyword options") from None
    docs = list(documents)
    report = IndexReport()
    pending, copies = _uncached(bundle, cache_dir, docs, reranker_options, report)
    with progress_bar(len(docs), "indexing", "doc", disable=not progress) as bar:
        bar.update(len(docs) - len(pending) - sum(map(len, copies.values())))
        if pending:
            records = [document_record(i, docs[i]) for i in pending]
            outcome: dict[int, tuple[str, str | None]] = {}
            for row in _run(records, config, str(Path(bundle).absolute()), str(Path(cache_dir).absolute()),
                            reranker_options):
                if row["index"] not in outcome:  # a retried batch never counts twice
                    outcome[row["index"]] = (row["status"], row["error"])
                    bar.update(1 + len(copies.get(row["index"], ())))
            for i in pending:
                status, error = outcome.get(i, (FAILED, "no result came back from the Ray workers; run again"))
                _tally(report, docs, i, status, error)
                for j in copies.get(i, ()):  # the other copies: cached by the one indexed, or failed as it did
                    _tally(report, docs, j, SKIPPED if status == INDEXED else status, error)
    report.failed.sort(key=lambda f: f.index)
    report.declined.sort(key=lambda f: f.index)
    return report


# -- the driver -----------------------------------------------------------------------------------
def _uncached(bundle: str | Path, cache_dir: str | Path, docs: Sequence[Document], options: dict,
              report: IndexReport) -> tuple[list[int], dict[int, list[int]]]:
    """The positions of the documents to dispatch and, by dispatched position, those of the other copies of
    the same key; cached documents are counted as skipped, those whose key cannot be made as failed."""
    namespace = load_bundle(bundle).namespace  # the namespace the actors' Reranker opens
    config = StoreConfig(Path(cache_dir), namespace, quantize_int8=bool(options.get("int8_cache", False)))
    with KVStore(config) as store:  # created here, so the actors never race to write its marker
        if store.read_only:
            raise CacheError(f"the K/V cache at {store.namespace} is read-only: indexing needs a writable cache "
                             "directory, shared by every Ray node; fix its permissions or choose another --cache")
        keys: dict[int, str] = {}
        for i, doc in enumerate(docs):
            try:
                keys[i] = Reranker.key(doc)
            except MiniRerankerError as exc:  # e.g. an image without an id that cannot be read to hash it
                report.failed.append(Failure(i, doc.label, str(exc), exc))
        by_key: dict[str, list[int]] = {}
        for (i, key), entry in zip(keys.items(), store.get_many(list(keys.values()))):
            try:
                current = Reranker._still_current(docs[i], entry)  # the check Reranker.index makes
            except MiniRerankerError as exc:
                report.failed.append(Failure(i, docs[i].label, str(exc), exc))
                continue
            if current is not None:
                report.skipped += 1
            else:
                by_key.setdefault(key, []).append(i)
    # the last copy is dispatched: a local run would leave its content under the key when an id names two
    return [p[-1] for p in by_key.values()], {p[-1]: p[:-1] for p in by_key.values() if len(p) > 1}


def _tally(report: IndexReport, docs: Sequence[Document], i: int, status: str, error: str | None) -> None:
    if status == INDEXED:
        report.indexed += 1
    elif status == SKIPPED:
        report.skipped += 1
    else:
        (report.failed if status == FAILED else report.declined).append(Failure(i, docs[i].label, error or status))


def document_record(index: int, doc: Document) -> dict[str, Any]:
    """What travels to an actor for one document (see the module docstring)."""
    image = doc.image
    path = str(Path(image).absolute()) if isinstance(image, (str, Path)) else None
    payload = pickle.dumps(image) if image is not None and path is None else None
    return {"index": index, "path": path, "image": payload, "text": doc.text, "id": doc.id}


def record_document(record: dict[str, Any]) -> Document:
    """The Document of :func:`document_record`'s record."""
    image = Path(record["path"]) if record["path"] is not None else None
    if record["image"] is not None:
        image = pickle.loads(record["image"])  # written by this job's driver
    return Document(image=image, text=record["text"], id=record["id"])


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MiniRerankerError(f"indexing on Ray needs ray[data], which is not installed ({exc}): install the "
                                f"'ray' extra ({RAY_INSTALL})") from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, initialized for the block: as it is when already up, else connected to ``address`` (or RAY_ADDRESS),
    else a local Ray on this machine's cores; what this opened is shut down after."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise MiniRerankerError(f"could not start or reach {where} ({_last_line(exc)}); start a cluster with "
                                "`ray start --head` and pass its address to --ray-address") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Refuse a HOST:PORT nobody listens on (``ray.init`` would retry it without end); other forms (``auto``,
    ``ray://``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise MiniRerankerError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                                "`ray start --head` and pass the address it prints to --ray-address") from None


def _run(records: list[dict], config: RayIndexConfig, bundle: str, cache_dir: str, options: dict) -> Iterator[dict]:
    """The rows the actors return, as they come back."""
    with ray_session(config.address) as ray, _quiet_ray_data(ray):
        batches = math.ceil(len(records) / config.documents_per_batch)
        workers = min(config.workers or _cluster_workers(ray, config), batches)  # no actor loads engines for nothing
        kill = os.environ.get(KILL_AFTER_ENV)
        data = ray.data.from_items(records, override_num_blocks=batches).map_batches(
            IndexWorker, batch_size=config.documents_per_batch, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=config.cpus_per_worker,
            num_gpus=config.gpus_per_worker or None,
            fn_constructor_kwargs={"bundle": bundle, "cache_dir": cache_dir, "options": options,
                                   "kill_after": int(kill) if kill else None})
        try:
            yield from data.iter_rows()
        except ray.exceptions.RayError as exc:
            raise MiniRerankerError(f"the Ray job stopped ({_last_line(exc)}); the entries written so far are "
                                    "complete and kept: once that is fixed, the same command indexes the rest"
                                    ) from None


@contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """Ray Data's own progress bars and plan lines off for the job (the caller's progress bar counts documents)."""
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in ("enable_progress_bars", "print_on_execution_start")
             if hasattr(context, name)}  # the second is newer than Ray 2.40
    for name in saved:
        setattr(context, name, False)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def _last_line(exc: Exception) -> str:
    """The line of a Ray error that says what went wrong (Ray puts its traceback before it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return re.sub(r"^(\w+\.)+(?=\w+: )", "", lines[-1]) if lines else type(exc).__name__  # EngineError: ...


def _cluster_workers(ray: Any, config: RayIndexConfig) -> int:
    """One worker per ``cpus_per_worker`` CPUs of the cluster, or per ``gpus_per_worker`` GPUs."""
    resources = ray.cluster_resources()
    if config.gpus_per_worker:
        return max(1, int(resources.get("GPU", 0) // config.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // config.cpus_per_worker))


# -- the actors -----------------------------------------------------------------------------------
class IndexWorker:
    """One Ray actor: a Reranker (its engines and store) opened once, then one call per batch of records."""

    def __init__(self, bundle: str, cache_dir: str, options: dict, kill_after: int | None = None) -> None:
        if kill_after is not None and not _restarted():
            exit_inside_put(kill_after)
        self.reranker = Reranker(bundle, cache_dir, **options)

    def __call__(self, batch: Any) -> Any:
        """A pyarrow Table of records -> a Table of rows (index int64, status string, error string or null)."""
        import pyarrow as pa

        rows: dict[str, list] = {"index": [], "status": [], "error": []}
        for record in batch.to_pylist():
            status, error = self.index_one(record)
            rows["index"].append(record["index"])
            rows["status"].append(status)
            rows["error"].append(error)
        schema = pa.schema([("index", pa.int64()), ("status", pa.string()), ("error", pa.string())])
        return pa.table(rows, schema=schema)

    def index_one(self, record: dict[str, Any]) -> tuple[str, str | None]:
        """(status, error) of one document, through ``Reranker.index``; nothing a document does stops the actor."""
        try:
            report = self.reranker.index([record_document(record)])
        except MiniRerankerError as exc:  # e.g. DocumentError from a record, CacheError: a read-only store here
            return FAILED, str(exc)
        except Exception as exc:  # an unforeseen error in one document: reported, and the batch goes on
            log.exception("indexing document %s failed", record["index"])
            return FAILED, f"{type(exc).__name__}: {exc}"
        if report.failed:
            return FAILED, report.failed[0].error
        if report.declined:
            return DECLINED, report.declined[0].error
        return (INDEXED, None) if report.indexed else (SKIPPED, None)


def _restarted() -> bool:
    """Whether this actor is a restart of one that died (Ray's reconstruction)."""
    import ray

    with warnings.catch_warnings():  # the property reads an attribute Ray itself deprecated
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def exit_inside_put(after: int) -> None:
    """Test hook: this process exits inside its (``after``+1)-th entry put, between the temp file's fsync and
    its rename. ``os.replace`` is patched because the store calls it by name at run time (as the kill tests
    of tests/runtime/test_runtime_store.py do); other renames pass through."""
    if after < 0:
        raise MiniRerankerError(f"{KILL_AFTER_ENV} must be >= 0, got {after}")
    real_replace, done = os.replace, [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        is_entry = os.path.basename(os.fspath(src)).startswith(TEMP_PREFIX) and os.fspath(dst).endswith(ENTRY_SUFFIX)
        if is_entry and done[0] == after:
            os._exit(1)  # no clean-up: the temp file stays, the entry never appears
        real_replace(src, dst, *args, **kwargs)
        done[0] += is_entry

    os.replace = replace
