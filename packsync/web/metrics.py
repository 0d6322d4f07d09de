"""Prometheus metrics (``prometheus_client``): what the daemon counts as it works, and what the state
holds, read at each scrape.

Label values are bounded: a mapping is named by its pack (never a path), an API call by its route
template (never an id or a URL), a problem by a reason from a fixed list. No token reaches a metric:
none is ever passed in.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from packsync.views.status import read_status

if TYPE_CHECKING:
    from packsync.config import Config
    from packsync.state.store import State

#: A problem's reason as a metric label: the first pattern that matches its text, else "other".
REASONS = [
    ("unreadable", re.compile(r"cannot (be )?read|permission", re.I)),
    ("symlink", re.compile(r"symbolic link", re.I)),
    ("not a file", re.compile(r"not a regular file", re.I)),
    ("corrupt", re.compile(r"truncated|corrupt", re.I)),
    ("unsupported type", re.compile(r"not accepted|not an image|unknown image type|not a supported", re.I)),
    ("too large", re.compile(r"larger than|too large", re.I)),
    ("empty", re.compile(r"empty", re.I)),
    ("changing", re.compile(r"changed while", re.I)),
    ("download failed", re.compile(r"download|HTTP \d", re.I)),
]
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SYNC_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


disable_created_metrics()  # type: ignore[no-untyped-call]  # a ``_created`` series beside every counter is noise here


def reason_label(reason: str) -> str:
    return next((label for label, pattern in REASONS if pattern.search(reason)), "other")


class Metrics:
    """The daemon's counters (an ``Observer`` of the API client) and the state's gauges, in one registry."""

    def __init__(self, config: Config, state: State) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = PromCounter("packsync_api_requests", "API and storage requests made, by route and "
                                    "HTTP status (0: no answer)", ["route", "code"], registry=self.registry)
        self.latency = Histogram("packsync_api_request_seconds", "API and storage request latency, by route",
                                 ["route"], buckets=SECONDS_BUCKETS, registry=self.registry)
        self.uploaded = PromCounter("packsync_uploaded_bytes", "Bytes sent to the API and storage in answered "
                                    "requests", registry=self.registry)
        self.sync_seconds = Histogram("packsync_sync_seconds", "Duration of the syncs that included a mapping, "
                                      "by its pack", ["pack"], buckets=SYNC_BUCKETS, registry=self.registry)
        self.safety_stops = PromCounter("packsync_safety_stops", "Syncs that withheld deletes (a safety stop), "
                                        "by pack", ["pack"], registry=self.registry)
        self.queued = Gauge("packsync_queued_paths", "Changed paths waiting for their folder to settle",
                            registry=self.registry)
        self.state = StateCollector(config, state)
        self.registry.register(self.state)

    def request(self, route: str, status: int, seconds: float, sent: int) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if sent:
            self.uploaded.inc(sent)

    def synced(self, packs: Iterable[str], seconds: float, stopped: Iterable[str]) -> None:
        for pack in packs:
            self.sync_seconds.labels(pack).observe(seconds)
        for pack in stopped:
            self.safety_stops.labels(pack).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges read from the state at a scrape: the status read model's counts, which SQLite makes.

    Counting costs as much as the tree (tens of ms per scrape at 100,000 files), and a scrape comes every
    15 s or so whether anything changed or not: the gauges are read again only once the state changed
    (its ``data_version``: this connection only reads, so any commit changes it) or the config did.
    """

    def __init__(self, config: Config, state: State) -> None:
        self.config, self.state = config, state
        self._read: tuple[int, Config, list[Metric]] | None = None  # (data version, config, gauges)

    def describe(self) -> list[Metric]:
        return []  # the metrics depend on the state: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        version, config = self.state.data_version(), self.config
        if self._read is None or self._read[:2] != (version, config):
            self._read = (version, config, list(self._gauges(config)))
        yield from self._read[2]

    def _gauges(self, config: Config) -> Iterator[Metric]:
        files = GaugeMetricFamily("packsync_files", "Items of a mapping's source, by state (synced, pending, skipped, "
                                  "failed)", labels=["pack", "state"])
        images = GaugeMetricFamily("packsync_images", "packsync's images in a mapping's pack, by AI metadata "
                                   "status", labels=["pack", "metadata"])
        problems = GaugeMetricFamily("packsync_problems", "Items skipped, by reason", labels=["pack", "reason"])
        success = GaugeMetricFamily("packsync_last_success_timestamp_seconds", "When a mapping last synced "
                                    "without error (Unix time)", labels=["pack"])
        stopped = GaugeMetricFamily("packsync_safety_stop", "1 while a mapping's deletes wait for allow-deletes "
                                    "or --force", labels=["pack"])
        paused = GaugeMetricFamily("packsync_paused", "1 while a person has paused a mapping (packsync pause)",
                                   labels=["pack"])
        seen: set[str] = set()
        for mapping in read_status(config, self.state, problems=True).mappings:
            pack = mapping.pack_label
            if pack in seen:  # two mappings whose packs read alike ("pack 1" by name, and pack id 1)
                pack = f"{pack} [{len(seen)}]"
            seen.add(pack)
            for state, count in mapping.counts.items():
                files.add_metric([pack, state], count)
            for status_name, count in mapping.metadata.items():
                images.add_metric([pack, status_name], count)
            reasons = Counter(reason_label(p.reason) for p in mapping.problems or () if p.skipped)
            for reason, count in reasons.items():
                problems.add_metric([pack, reason], count)
            record = mapping.record
            if record and record.ok_at:
                success.add_metric([pack], record.ok_at)
            stopped.add_metric([pack], 1 if record and record.safety else 0)
            paused.add_metric([pack], 1 if record and record.paused else 0)
        yield from (files, images, problems, success, stopped, paused)
