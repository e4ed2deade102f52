"""Prometheus metrics of one proxy process, in its own registry (no global state).

edgeproxy_requests_total{kind, code}                 kind: page, passthrough, edge_api, ops
edgeproxy_request_duration_seconds{kind}            histogram, whole request in the proxy
edgeproxy_decision_duration_seconds                 histogram, the engine's decide() per manifest
edgeproxy_variants_served_total{experience, variant}
edgeproxy_cache_results_total{result}               HIT, MISS, STALE, REVALIDATED, BYPASS
edgeproxy_origin_errors_total{code}                 502/504 answered for the origin
edgeproxy_store_errors_total                        state store failures (reads degrade, writes 503)
edgeproxy_snapshot_info{version}, edgeproxy_snapshot_loaded_timestamp_seconds
edgeproxy_sync_failures_total, edgeproxy_sync_consecutive_failures, edgeproxy_sync_last_success_timestamp_seconds
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from edgeproxy.engine.decide import Manifest
    from edgeproxy.proxy.app import ProxyState

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DECISION_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005)


class _StateCollector(Collector):
    """Values read from the proxy state at scrape time (snapshot, sync, store counters)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        info = GaugeMetricFamily("edgeproxy_snapshot_info", "The snapshot serving now (value 1)", labels=["version"])
        loaded_at = GaugeMetricFamily("edgeproxy_snapshot_loaded_timestamp_seconds", "When it was swapped in")
        loaded = state.holder.current
        if loaded is not None:
            info.add_metric([loaded.snapshot.version], 1.0)
            loaded_at.add_metric([], loaded.loaded_at)
        yield info
        yield loaded_at
        store_errors = GaugeMetricFamily("edgeproxy_store_errors", "State store failures since start")
        store_errors.add_metric([], float(state.counters.store_errors))
        yield store_errors
        poller = state.poller
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


class ProxyMetrics:
    def __init__(self, state: ProxyState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgeproxy_requests", "Requests answered", ["kind", "code"], registry=r)
        self.duration = Histogram("edgeproxy_request_duration_seconds", "Time in the proxy per request", ["kind"],
                                  buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.decision = Histogram("edgeproxy_decision_duration_seconds", "decide() per manifest",
                                  buckets=DECISION_BUCKETS, registry=r)  # fmt: skip
        self.variants = Counter("edgeproxy_variants_served", "Variants decided", ["experience", "variant"], registry=r)
        self.cache = Counter("edgeproxy_cache_results", "Cache results", ["result"], registry=r)
        self.origin_errors = Counter("edgeproxy_origin_errors", "Origin failures answered", ["code"], registry=r)
        r.register(_StateCollector(state))
        # Children resolved once: label lookups cost more than the increments on the hot path.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._variant_children: dict[tuple[str, str], Counter] = {}
        self._cache_children: dict[str, Counter] = {}

    def observe_request(self, kind: str, status: int, seconds: float) -> None:
        key = (kind, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(kind, str(status))
        child.inc()
        duration = self._duration_children.get(kind)
        if duration is None:
            duration = self._duration_children[kind] = self.duration.labels(kind)
        duration.observe(seconds)

    def observe_manifest(self, manifest: Manifest, seconds: float) -> None:
        self.decision.observe(seconds)
        for experience, variant in manifest.entries:
            if variant is None:
                continue
            key = (experience, variant.short_uid)
            child = self._variant_children.get(key)
            if child is None:
                child = self._variant_children[key] = self.variants.labels(*key)
            child.inc()

    def cache_result(self, result: str) -> None:
        child = self._cache_children.get(result)
        if child is None:
            child = self._cache_children[result] = self.cache.labels(result)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
