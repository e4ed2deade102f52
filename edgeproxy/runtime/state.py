"""Everything a request needs in one proxy process, built in one step (`runtime/serve.py make_state`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from edgeproxy.analytics.live import LiveDecisions
from edgeproxy.clock import Clock
from edgeproxy.engine.decide import Manifest
from edgeproxy.exchange.plan import Decision, Planner
from edgeproxy.http.origin import OriginPool, pool_for_origin
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.metrics import ProxyMetrics
from edgeproxy.runtime.snapshots import SnapshotHolder
from edgeproxy.store.base import StateStore, StoreError

if TYPE_CHECKING:
    from edgeproxy.analytics.impressions import ImpressionRecorder
    from edgeproxy.cache.layer import ResponseCache
    from edgeproxy.forward.forwarder import Forwarder
    from edgeproxy.runtime.behaviour import BehaviourTracker
    from edgeproxy.runtime.decision_log import DecisionLog
    from edgeproxy.runtime.users import Retention, TombstoneFollower
    from edgeproxy.store.event_drain import EventTransport
    from edgeproxy.sync.fleet import FleetFollower
    from edgeproxy.sync.poller import SnapshotPoller

log = logging.getLogger("edgeproxy.proxy")


class ProxyState:
    """The process's parts, given whole at construction; `start`/`stop` open and close their connections."""

    def __init__(
        self,
        config: ProxyConfig,
        clock: Clock,
        holder: SnapshotHolder,
        store: StateStore,
        planner: Planner,
        metrics: ProxyMetrics,
        live: LiveDecisions,
        *,
        cache: ResponseCache | None,
        decision_log: DecisionLog | None,
        impressions: ImpressionRecorder | None,
        poller: SnapshotPoller | None,
        fleet: FleetFollower | None,
        retention: Retention | None = None,
        tombstones: TombstoneFollower | None = None,
        forwarder: Forwarder | None = None,
        behaviour: BehaviourTracker | None = None,
        events: EventTransport | None = None,
    ) -> None:
        self.config = config
        self.clock = clock  # the one clock of the process: decisions, cache ages, stored TTLs, logs
        self.holder = holder
        self.store = store
        self.planner = planner  # the pure part of every request (exchange/plan.py)
        self.metrics = metrics  # the one count of what happened: Prometheus, /status and the dashboard read it
        self.cache = cache
        self.decision_log = decision_log
        self.impressions = impressions
        self.poller = poller  # keeps the snapshot fresh (serve), None in tests that swap snapshots themselves
        self.fleet = fleet  # when following a fleet channel (--fleet-redis)
        self.retention = retention  # deletes events past retention_days (serve, when set)
        self.tombstones = tombstones  # learns of deleted users from the store (serve)
        self.live = live  # decision counts by variant, for the dashboard and Prometheus
        self.forwarder = forwarder  # queues accepted writes for Contentstack's Edge API (forward_edge_api)
        self.behaviour = behaviour  # visitors' behavioural attributes, written behind ([behaviour])
        self.events = events  # Redis state: the event streams, drained into the `events` store when one is set
        self.origin = URL(config.origin.rstrip("/"))
        self._session: aiohttp.ClientSession | None = None  # WebSocket upgrades only
        self._upstream: OriginPool | None = None  # every other request to the origin

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the origin session starts with the proxy (ProxyState.start)")
        return self._session

    @property
    def upstream(self) -> OriginPool:
        if self._upstream is None:
            raise RuntimeError("the origin pool starts with the proxy (ProxyState.start)")
        return self._upstream

    def count_decision(self, decision: Decision) -> None:
        """A decision whose answer is being sent: its time (metrics) and its variants (live counts)."""
        self.count_manifest(decision.manifest, decision.seconds)
        if decision.behaviour is not None and self.behaviour is not None:  # a page view counted (SPEC §13)
            self.behaviour.record(decision.manifest.user_uid, decision.behaviour)

    def count_manifest(self, manifest: Manifest, seconds: float) -> None:
        """A decision's variants being sent (live counts), decided in `seconds` (metrics): `count_decision`'s
        part for an answer the data plane remembered (executor.HitAnswer.again)."""
        self.metrics.observe_decision(seconds)
        self.live.record(manifest)

    async def stored_attributes(self, project_uid: str, user_uid: str) -> Mapping[str, object]:
        """Stored attributes for a decision; a store outage degrades to request-local data, logged."""
        try:
            return await self.store.get_attributes(project_uid, user_uid)
        except StoreError as exc:
            self.metrics.store_errors += 1
            log.warning("stored attributes unavailable for this decision: %s", exc)
            return {}

    async def start(self) -> None:
        await self.store.start()
        self._upstream = pool_for_origin(
            self.origin.scheme, self.origin.raw_host or "127.0.0.1", self.origin.port,
            limit=self.config.pool_size, connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout, keepalive=30.0,
        )  # fmt: skip
        connector = aiohttp.TCPConnector(
            limit=self.config.pool_size, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.config.connect_timeout, sock_read=self.config.read_timeout
            ),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        if self.forwarder is not None:
            await self.forwarder.start()
        if self.events is not None:
            self.events.start()
        if self.impressions is not None:
            self.impressions.start()
        if self.behaviour is not None:
            self.behaviour.start()
        if self.retention is not None:
            self.retention.start()
        if self.tombstones is not None:
            self.tombstones.start()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._upstream is not None:
            await self._upstream.close()
        if self.cache is not None:
            await self.cache.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.impressions is not None:
            await self.impressions.stop()  # its last flush queues for forwarding too, so the forwarder stops after
        if self.forwarder is not None:
            await self.forwarder.stop()
        if self.behaviour is not None:
            await self.behaviour.stop()  # every page view counted is written: exact after a clean shutdown
        if self.events is not None:
            await self.events.stop()  # after the impressions' last append; the batch in flight is finished
        if self.retention is not None:
            await self.retention.stop()
        if self.tombstones is not None:
            await self.tombstones.stop()
        await self.store.close()
