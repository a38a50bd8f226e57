"""Prometheus metrics of every role: what a hospital's monitoring scrapes and alerts on.

Each process of the service serves its own ``/metrics`` (Prometheus text format) from a registry
of its own: the SCP front-end counts instances, a worker its analyses and their seconds, an
exporter its deliveries and failures. Prometheus adds the processes up; nothing here has to
share memory across processes or hosts. The queue itself (how many studies wait, how long the
oldest has waited) is read from the shared database at scrape time, so every role reports the
same figures whichever one is scraped.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "QueueCollector"]

logger = logging.getLogger("listener.metrics")

# a radiograph study takes from a fraction of a second (a GPU, small images) to a minute (a busy CPU)
_ANALYSIS_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class QueueCollector(Collector):
    """Queue depth per state and the age of the oldest waiting study, from the store."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        depth = GaugeMetricFamily("mura_queue_depth", "Studies per state in the shared queue", labels=["state"])
        oldest = GaugeMetricFamily("mura_oldest_waiting_seconds",
                                   "Seconds since the oldest study waiting for analysis became complete (0: none)")
        try:
            counts, oldest_at = self.store.queue_summary()
        except Exception as exc:  # a scrape must not fail because the database is restarting
            logger.warning("queue metrics unavailable", extra={"error": type(exc).__name__})
            return
        finally:  # each scrape runs in a thread of its own: its connection would outlive it unclosed
            self.store.close()
        for state, count in sorted(counts.items()):
            depth.add_metric([state], count)
        oldest.add_metric([], max(0.0, time.time() - oldest_at) if oldest_at is not None else 0.0)
        yield depth
        yield oldest


class Metrics:
    """The metrics of one process; ``serve`` exposes them (and the queue's, given a store)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        self.instances_received = Counter("mura_instances_received", "DICOM instances received, by outcome",
                                          ["outcome"], registry=self.registry)
        self.studies_analysed = Counter("mura_studies_analysed", "Study analyses, by outcome (analysed, failed, retry)",
                                        ["outcome"], registry=self.registry)
        self.analysis_seconds = Histogram("mura_analysis_seconds", "Seconds per study analysis (decode, networks, "
                                          "heatmaps, DICOM outputs; a batch's time shared among its studies)",
                                          buckets=_ANALYSIS_BUCKETS, registry=self.registry)
        self.batch_studies = Histogram("mura_batch_studies", "Studies analysed together in one batch",
                                       buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.exports = Counter("mura_exports", "Files delivered to a destination", ["destination"],
                               registry=self.registry)
        self.export_failures = Counter("mura_export_failures", "Failed deliveries to a destination (each attempt)",
                                       ["destination"], registry=self.registry)
        self.server: Any = None

    def watch_queue(self, store) -> None:
        self.registry.register(QueueCollector(store))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0: a free one) in a thread; returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        actual = server.server_address[1]
        logger.info("metrics", extra={"role": self.role, "url": f"http://{host}:{actual}/metrics"})
        return actual

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
