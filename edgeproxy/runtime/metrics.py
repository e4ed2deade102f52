"""Prometheus metrics of one proxy process, in its own registry (no global state).

    edgeproxy_requests_total{kind, code}                 kind: page, passthrough, edge_api, ops
    edgeproxy_request_duration_seconds{kind}            histogram, whole request in the proxy
    edgeproxy_decision_duration_seconds                 histogram, the engine's decide() per manifest
    edgeproxy_variants_served_total{experience, variant}
    edgeproxy_cache_results_total{result}               HIT, MISS, STALE, REVALIDATED, BYPASS
    edgeproxy_cache_events_total{event}                 stored, coalesced, purged, store_errors, background_*
    edgeproxy_cache_not_stored_total{reason}            why a response was not stored
    edgeproxy_origin_errors_total{code}                 502/504 answered for the origin
    edgeproxy_store_errors                              state store failures (reads degrade, writes 503)
    edgeproxy_snapshot_info{version}, edgeproxy_snapshot_loaded_timestamp_seconds
    edgeproxy_sync_failures, edgeproxy_sync_consecutive_failures, edgeproxy_sync_last_success_timestamp_seconds
    edgeproxy_forward_writes_total{result}              forwarding (SPEC §12), this process: queued, sent, retried,
                                                        dead_lettered, refused (outbox full), failed (outbox away)
    edgeproxy_forward_backlog{kind}                     queued, dead_letters: the shared outbox, as last read
    edgeproxy_forward_oldest_age_seconds                age of the oldest queued write (0 when none)

The one count of what a process did: Prometheus, `/status` and the dashboard all read these numbers, and the
request path, the cache and the endpoints all add to them.

The request path only adds to plain ints and bucket lists (the event loop is one thread); the collector turns
them into Prometheus families when scraped. prometheus_client's own metric objects take a lock per update,
which is a measurable share of a proxied request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edgeproxy.analytics.live import LiveDecisions
    from edgeproxy.forward.forwarder import Forwarder
    from edgeproxy.runtime.snapshots import SnapshotHolder
    from edgeproxy.sync.poller import SnapshotPoller


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DECISION_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005)


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        running = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class ProxyMetrics(Collector):
    def __init__(
        self, started: float, live: LiveDecisions, holder: SnapshotHolder, poller: SnapshotPoller | None
    ) -> None:
        self.started = started
        self.live = live  # decisions by variant: counted once there, read here at scrape time
        self.holder = holder
        self.poller = poller
        self.requests: dict[tuple[str, int], int] = {}  # kind (page, passthrough, edge_api, ops), status
        self.durations: dict[str, _Histogram] = {}
        self.decisions = _Histogram(DECISION_BUCKETS)
        self.cache_results: dict[str, int] = {}  # X-Cache of every answered proxied request
        self.cache_events: Counter[str] = Counter()  # what the cache did besides answering (cache/layer.py)
        self.not_stored: Counter[str] = Counter()  # why responses were not stored
        self.origin_errors: dict[int, int] = {}
        self.store_errors = 0
        self.websockets = 0
        self.forwarder: Forwarder | None = None  # its counts are read at scrape time (forward_edge_api)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- the request path: plain arithmetic --------------------------------------------------------------

    def observe_request(self, kind: str, status: int, seconds: float) -> None:
        key = (kind, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(kind)
        if histogram is None:
            histogram = self.durations[kind] = _Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def observe_decision(self, seconds: float) -> None:
        self.decisions.observe(seconds)  # what was decided is counted once, by state.live (read at scrape time)

    def cache_result(self, result: str) -> None:
        self.cache_results[result] = self.cache_results.get(result, 0) + 1

    def origin_error(self, status: int) -> None:
        self.origin_errors[status] = self.origin_errors.get(status, 0) + 1

    # -- scrape time ------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("edgeproxy_requests", "Requests answered", labels=["kind", "code"])
        for (kind, code), n in sorted(self.requests.items()):
            requests.add_metric([kind, str(code)], n)
        yield requests
        duration = HistogramMetricFamily("edgeproxy_request_duration_seconds", "Time in the proxy per request",
                                         labels=["kind"])  # fmt: skip
        for kind, histogram in sorted(self.durations.items()):
            duration.add_metric([kind], histogram.buckets(), histogram.total)
        yield duration
        decision = HistogramMetricFamily("edgeproxy_decision_duration_seconds", "decide() per manifest")
        decision.add_metric([], self.decisions.buckets(), self.decisions.total)
        yield decision
        variants = CounterMetricFamily(
            "edgeproxy_variants_served", "Variants decided", labels=["experience", "variant"]
        )
        served = self.live.totals
        for (experience, variant), n in sorted((slot, n) for slot, n in served.items() if slot[1] is not None):
            variants.add_metric([experience, str(variant)], n)
        yield variants
        cache = CounterMetricFamily("edgeproxy_cache_results", "Cache results", labels=["result"])
        for result, n in sorted(self.cache_results.items()):
            cache.add_metric([result], n)
        yield cache
        events = CounterMetricFamily("edgeproxy_cache_events", "What the cache did", labels=["event"])
        for event, n in sorted(self.cache_events.items()):
            events.add_metric([event], n)
        yield events
        not_stored = CounterMetricFamily("edgeproxy_cache_not_stored", "Responses not stored", labels=["reason"])
        for reason, n in sorted(self.not_stored.items()):
            not_stored.add_metric([reason], n)
        yield not_stored
        origin = CounterMetricFamily("edgeproxy_origin_errors", "Origin failures answered", labels=["code"])
        for code, n in sorted(self.origin_errors.items()):
            origin.add_metric([str(code)], n)
        yield origin
        yield from self._state_metrics()

    def _state_metrics(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("edgeproxy_snapshot_info", "The snapshot serving now (value 1)", labels=["version"])
        loaded_at = GaugeMetricFamily("edgeproxy_snapshot_loaded_timestamp_seconds", "When it was swapped in")
        loaded = self.holder.current
        if loaded is not None:
            info.add_metric([loaded.snapshot.version], 1.0)
            loaded_at.add_metric([], loaded.loaded_at)
        yield info
        yield loaded_at
        store_errors = GaugeMetricFamily("edgeproxy_store_errors", "State store failures since start")
        store_errors.add_metric([], float(self.store_errors))
        yield store_errors
        poller = self.poller
        if poller is not None:
            status = poller.status
            failures = GaugeMetricFamily("edgeproxy_sync_failures", "Rejected snapshot refreshes since start")
            failures.add_metric([], float(status.failures))
            consecutive = GaugeMetricFamily("edgeproxy_sync_consecutive_failures", "Rejected refreshes in a row")
            consecutive.add_metric([], float(status.consecutive_failures))
            success = GaugeMetricFamily("edgeproxy_sync_last_success_timestamp_seconds", "Last good refresh")
            success.add_metric([], status.last_success or 0.0)
            yield failures
            yield consecutive
            yield success
        if self.forwarder is not None:
            yield from self._forward_metrics(self.forwarder)

    @staticmethod
    def _forward_metrics(forwarder: Forwarder) -> Iterator[Metric]:
        counts = forwarder.counts
        writes = CounterMetricFamily("edgeproxy_forward_writes", "Writes forwarded to the Edge API, by result",
                                     labels=["result"])  # fmt: skip
        for result in ("queued", "sent", "retried", "dead_lettered", "refused", "failed"):
            writes.add_metric([result], getattr(counts, result))
        yield writes
        backlog = GaugeMetricFamily("edgeproxy_forward_backlog", "Writes in the outbox", labels=["kind"])
        oldest = GaugeMetricFamily("edgeproxy_forward_oldest_age_seconds", "Age of the oldest queued write")
        status = forwarder.status()
        backlog.add_metric(["queued"], float(status["queued"]))
        backlog.add_metric(["dead_letters"], float(status["deadLetters"]))
        oldest.add_metric([], float(status["oldestQueuedSeconds"] or 0.0))
        yield backlog
        yield oldest

    def request_counts(self) -> dict[str, int]:
        """`/status`'s requests: proxied (personalized or passed through), WebSockets, Edge API calls, errors."""
        by_kind: Counter[str] = Counter()
        for (kind, _), n in self.requests.items():
            by_kind[kind] += n
        return {
            "total": by_kind["page"] + by_kind["passthrough"], "personalized": by_kind["page"],
            "passedThrough": by_kind["passthrough"], "websockets": self.websockets,
            "originErrors": sum(self.origin_errors.values()), "storeErrors": self.store_errors,
            "edgeApi": by_kind["edge_api"],
        }  # fmt: skip

    def cache_counts(self) -> dict[str, Any]:
        """`/status`'s cache results: answers by X-Cache (lower-case, as ever), and what the cache did."""
        results: dict[str, int] = {label.lower(): n for label, n in self.cache_results.items() if label != "BYPASS"}
        results.update(self.cache_events)
        return {"results": results, "notStored": dict(self.not_stored)}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
