"""Prometheus metrics of ``minireranker serve``, on ``prometheus_client`` (the ``serve`` extra).

Each server has its own :class:`prometheus_client.CollectorRegistry` (several servers can live in one
test process), with the process metrics (``process_*``: CPU seconds, resident memory, open file
descriptors, start time), ``python_gc_*`` and ``python_info`` registered on it. Values kept elsewhere (the
K/V store's hit counters, the batcher's queue depth) are read at scrape time by :class:`ReadAtScrape`;
the process's memory (RSS, PSS, shared, private, and the part in mapped K/V entry files; see
runtime/serve/memory.py) by :class:`MemoryCollector`, one read of ``/proc`` per scrape.
The ``_created`` series of counters and histograms are turned off: they add a sample per label set that
no dashboard of this server reads. ``render()`` is the body of ``GET /metrics`` (text format 0.0.4)::

    # HELP minireranker_requests_total HTTP requests by route and status code.
    # TYPE minireranker_requests_total counter
    minireranker_requests_total{code="200",route="/v1/rerank"} 12.0
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import prometheus_client
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

prometheus_client.disable_created_metrics()

__all__ = ["COUNT_BUCKETS", "CONTENT_TYPE", "Counter", "Histogram", "LATENCY_BUCKETS", "MemoryCollector",
           "ReadAtScrape", "new_registry", "render"]
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ReadAtScrape:
    """A collector of values read from callbacks at scrape time: (name, help, kind, read) with ``kind``
    ``"gauge"`` or ``"counter"`` (a count kept elsewhere; ``name`` without its ``_total``)."""

    def __init__(self, metrics: Iterable[tuple[str, str, str, Callable[[], float]]]) -> None:
        self.metrics = list(metrics)

    def collect(self):
        for name, help_text, kind, read in self.metrics:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help_text, value=float(read()))


class MemoryCollector:
    """This process's memory, read once per scrape: ``minireranker_memory_{rss,pss,shared,private}_bytes``
    (PSS, shared and private only where ``/proc`` has them) and, once ``store_directory()`` names the K/V
    namespace, ``minireranker_cache_mapped_{rss,pss}_bytes`` and ``minireranker_cache_mapped_files``."""

    PROCESS = (("rss", "Resident bytes of this process (shared pages counted in full)."),
               ("pss", "Proportional set size: each resident page divided by the processes that map it."),
               ("shared", "Resident bytes that other processes map too (Shared_Clean + Shared_Dirty)."),
               ("private", "Resident bytes that no other process maps (Private_Clean + Private_Dirty)."))

    def __init__(self, store_directory: Callable[[], os.PathLike | None]) -> None:
        self.store_directory = store_directory

    def collect(self):
        from .memory import mapped_memory, process_memory

        for name, value in process_memory().items():
            if value is not None:
                yield GaugeMetricFamily(f"minireranker_memory_{name}_bytes", dict(self.PROCESS)[name], value=value)
        directory = self.store_directory()
        mapped = mapped_memory(directory) if directory is not None else None
        if mapped is not None:
            yield GaugeMetricFamily("minireranker_cache_mapped_rss_bytes", "Resident bytes of the K/V entry files "
                                    "this process maps (page cache, shared with every process mapping them).",
                                    value=mapped["rss"])
            yield GaugeMetricFamily("minireranker_cache_mapped_pss_bytes", "This process's proportional share of "
                                    "the resident bytes of the K/V entry files it maps.", value=mapped["pss"])
            yield GaugeMetricFamily("minireranker_cache_mapped_files", "K/V entry files this process maps now.",
                                    value=mapped["files"])


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector metrics on it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text format."""
    return generate_latest(registry).decode("utf-8")
