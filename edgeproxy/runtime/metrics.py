"""Prometheus metrics of one proxy process, in its own registry (no global state).

    edgeproxy_requests_total{kind, code}                 kind: page, passthrough, edge_api, ops
    edgeproxy_request_duration_seconds{kind}            histogram, whole request in the proxy
    edgeproxy_decision_duration_seconds                 histogram, the engine's decide() per manifest
    edgeproxy_variants_served_total{experience, variant}
    edgeproxy_cache_results_total{result}               HIT, MISS, STALE, REVALIDATED, BYPASS
    edgeproxy_cache_route_results_total{route, result}  the same per route ([[routes]] name, else its glob;
                                                        default, skip_paths, static): the hit ratio per route
    edgeproxy_cache_variant_sets_per_url{route}         histogram at scrape time (memory store): distinct variant
                                                        sets stored per cached URL
    edgeproxy_cache_events_total{event}                 stored, coalesced, purged, store_errors, background_*
    edgeproxy_cache_not_stored_total{reason}            why a response was not stored
    edgeproxy_origin_errors_total{code}                 502/504 answered for the origin
    edgeproxy_data_plane_total{event}                   the data plane (http/dataplane.py): hits answered as parsed
                                                        (hit), of those answered from a remembered head
                                                        (remembered), requests answered by the executor
                                                        (executor), connections handed to aiohttp's server
                                                        (handed_off)
    edgeproxy_store_errors                              state store failures (reads degrade, writes 503)
    edgeproxy_snapshot_info{version}, edgeproxy_snapshot_loaded_timestamp_seconds
    edgeproxy_sync_failures, edgeproxy_sync_consecutive_failures, edgeproxy_sync_last_success_timestamp_seconds
    edgeproxy_forward_writes_total{result}              forwarding (SPEC §12), this process: queued, sent, retried,
                                                        dead_lettered, refused (outbox full), failed (outbox away)
    edgeproxy_forward_backlog{kind}                     queued, dead_letters: the shared outbox, as last read
    edgeproxy_forward_oldest_age_seconds                age of the oldest queued write (0 when none)
    edgeproxy_events_backlog{kind}                      Redis state: events in the streams (stream) and read by a
                                                        drain, not yet acknowledged (pending), as last read
    edgeproxy_events_oldest_age_seconds                 age of the oldest event not yet in the event store
    edgeproxy_events_buffer_max                         the cap of each stream (events_buffer_max; with `events`)
    edgeproxy_events_drained_total{result}              this process's drain: stored, repeated (already there),
                                                        unreadable (removed, not stored)
    edgeproxy_events_refused_total{source}              events refused because the buffer was full (sdk, proxy, origin)
    edgeproxy_events_sink_failures_total                inserts into the event store that failed and were retried
    edgeproxy_events_sink_up                            1 when the last insert succeeded, 0 when it failed

The one count of what a process did: Prometheus, `/status` and the dashboard all read these numbers, and the
request path, the cache and the endpoints all add to them.

The request path only adds to plain ints and bucket lists (the event loop is one thread); the collector turns
them into Prometheus families when scraped. prometheus_client's own metric objects take a lock per update,
which is a measurable share of a proxied request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edgeproxy.analytics.live import LiveDecisions
    from edgeproxy.forward.forwarder import Forwarder
    from edgeproxy.runtime.snapshots import SnapshotHolder
    from edgeproxy.store.event_drain import EventTransport
    from edgeproxy.sync.poller import SnapshotPoller


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
VARIANT_SET_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0, 256.0)
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
        # X-Cache of every answered proxied request, per route name: each route's dict is bound once (bind_routes)
        self.route_cache_results: dict[str, dict[str, int]] = {}
        # At scrape time: route -> distinct variant sets stored per cached URL (None: not counted for this store)
        self.variant_census: Callable[[], Mapping[str, list[int]] | None] | None = None
        self.cache_events: Counter[str] = Counter()  # what the cache did besides answering (cache/layer.py)
        self.not_stored: Counter[str] = Counter()  # why responses were not stored
        self.origin_errors: dict[int, int] = {}
        self.store_errors = 0
        self.websockets = 0
        self.data_plane: Counter[str] = Counter()  # hit, remembered, executor, handed_off (http/dataplane.py)
        self.forwarder: Forwarder | None = None  # its counts are read at scrape time (forward_edge_api)
        self.events: EventTransport | None = None  # Redis state: the event streams and their drain, read at scrape
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

    def cache_result(self, route: str, result: str) -> None:
        counts = self.route_cache_results.get(route)
        if counts is None:
            counts = self.route_cache_results[route] = {}
        counts[result] = counts.get(result, 0) + 1

    def bind_routes(self, names: Iterable[str]) -> None:
        """Every route counted from the start (zero until used), so a hit ratio per route is there to query."""
        for name in names:
            self.route_cache_results.setdefault(name, {})

    @property
    def cache_results(self) -> dict[str, int]:
        """X-Cache of every answered proxied request, all routes together."""
        totals: Counter[str] = Counter()
        for counts in self.route_cache_results.values():
            totals.update(counts)
        return dict(totals)

    def origin_error(self, status: int) -> None:
        self.origin_errors[status] = self.origin_errors.get(status, 0) + 1

    # -- scrape time ------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("edgeproxy_requests", "Requests answered", labels=["kind", "code"])
        for (kind, code), n in sorted(self.requests.items()):
            requests.add_metric([kind, str(code)], n)
        yield requests
        plane = CounterMetricFamily("edgeproxy_data_plane", "The data plane's answers and hand-offs", labels=["event"])
        for event in ("hit", "remembered", "executor", "handed_off"):
            plane.add_metric([event], self.data_plane[event])
        yield plane
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
        yield from self._route_cache_metrics()
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

    def _route_cache_metrics(self) -> Iterator[Metric]:
        by_route = CounterMetricFamily("edgeproxy_cache_route_results", "Cache results per route",
                                       labels=["route", "result"])  # fmt: skip
        for route, counts in sorted(self.route_cache_results.items()):
            for result in ("HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"):
                by_route.add_metric([route, result], counts.get(result, 0))
        yield by_route
        census = self.variant_census() if self.variant_census is not None else None
        if census is None:
            return
        sets = HistogramMetricFamily("edgeproxy_cache_variant_sets_per_url",
                                     "Distinct variant sets stored per cached URL", labels=["route"])  # fmt: skip
        for route, per_url in sorted(census.items()):
            histogram = _Histogram(VARIANT_SET_BUCKETS)
            for count in per_url:
                histogram.observe(float(count))
            sets.add_metric([route], histogram.buckets(), histogram.total)
        yield sets

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
        if self.events is not None:
            yield from self._event_metrics(self.events)

    @staticmethod
    def _event_metrics(events: EventTransport) -> Iterator[Metric]:
        backlog = GaugeMetricFamily("edgeproxy_events_backlog", "Events on their way to the event store",
                                    labels=["kind"])  # fmt: skip
        backlog.add_metric(["stream"], float(events.backlog.length))
        backlog.add_metric(["pending"], float(events.backlog.pending))
        yield backlog
        oldest = GaugeMetricFamily("edgeproxy_events_oldest_age_seconds", "Age of the oldest event not yet stored")
        oldest.add_metric([], events.backlog.oldest_age or 0.0)
        yield oldest
        refused = CounterMetricFamily("edgeproxy_events_refused", "Events refused: the buffer was full",
                                      labels=["source"])  # fmt: skip
        for source in ("sdk", "proxy", "origin"):
            refused.add_metric([source], float(events.store.events_refused[source]))
        yield refused
        if events.sink is None:
            return
        cap = GaugeMetricFamily("edgeproxy_events_buffer_max", "Most events buffered per stream (events_buffer_max)")
        cap.add_metric([], float(events.cap))
        yield cap
        counts = events.counts
        drained = CounterMetricFamily("edgeproxy_events_drained", "Stream entries this process moved to the event "
                                      "store, by result", labels=["result"])  # fmt: skip
        drained.add_metric(["stored"], float(counts.drained))
        drained.add_metric(["repeated"], float(counts.repeated))
        drained.add_metric(["unreadable"], float(counts.unreadable))
        yield drained
        failures = CounterMetricFamily("edgeproxy_events_sink_failures", "Event store inserts failed and retried")
        failures.add_metric([], float(counts.failures))
        yield failures
        up = GaugeMetricFamily("edgeproxy_events_sink_up", "1: the last insert into the event store succeeded")
        up.add_metric([], 0.0 if events.sink_ok is False else 1.0)
        yield up

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

    def request_counts(self) -> dict[str, Any]:
        """`/status`'s requests: proxied (personalized or passed through), WebSockets, Edge API calls, errors."""
        by_kind: Counter[str] = Counter()
        for (kind, _), n in self.requests.items():
            by_kind[kind] += n
        return {
            "total": by_kind["page"] + by_kind["passthrough"], "personalized": by_kind["page"],
            "passedThrough": by_kind["passthrough"], "websockets": self.websockets,
            "originErrors": sum(self.origin_errors.values()), "storeErrors": self.store_errors,
            "edgeApi": by_kind["edge_api"],
            "dataPlane": {"hits": self.data_plane["hit"], "remembered": self.data_plane["remembered"],
                          "executor": self.data_plane["executor"],
                          "handedOff": self.data_plane["handed_off"]},
        }  # fmt: skip

    def cache_counts(self) -> dict[str, Any]:
        """`/status`'s cache results: answers by X-Cache (lower-case, as ever), and what the cache did; the
        answers per route too."""
        results: dict[str, int] = {label.lower(): n for label, n in self.cache_results.items() if label != "BYPASS"}
        results.update(self.cache_events)
        routes = {route: {label.lower(): n for label, n in sorted(counts.items())}
                  for route, counts in sorted(self.route_cache_results.items())}  # fmt: skip
        return {"results": results, "notStored": dict(self.not_stored), "routes": routes}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
