"""Run the proxy: load or sync the snapshot, build the app, serve until SIGTERM/SIGINT, then drain.

Snapshot sources: `--rules PATH` (loaded at start; SIGHUP or `--watch` reload it) or Admin (`--admin-url` /
`--region`): synced at start, polled in the background, the last good snapshot from `snapshot_dir` used
when Admin is unreachable at a cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgeproxy.analytics.live import LiveDecisions
from edgeproxy.cache.keys import CacheQuery
from edgeproxy.cache.layer import ResponseCache
from edgeproxy.cache.store import CacheStore, MemoryCacheStore, RedisCacheStore
from edgeproxy.clock import Clock, clock_for
from edgeproxy.endpoints.edge_api import edge_api_handler
from edgeproxy.endpoints.ops import ops_handler
from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.exchange.plan import Planner
from edgeproxy.exchange.routes import RouteTable
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.http.access_log import JsonAccessLogger
from edgeproxy.http.aiohttp_internals import parser_rejection
from edgeproxy.http.server import build_server
from edgeproxy.runtime.config import ProxyConfig, listen_address, source_of
from edgeproxy.runtime.listen import ListenError, bind_sockets
from edgeproxy.runtime.metrics import ProxyMetrics
from edgeproxy.runtime.snapshots import SnapshotHolder
from edgeproxy.runtime.state import ProxyState
from edgeproxy.store import AttributeLimits, StoreError, open_store
from edgeproxy.store.base import StateStore

if TYPE_CHECKING:
    from edgeproxy.store.event_drain import EventTransport
from edgeproxy.sync.client import ManagementClient, SyncError, admin_base_url
from edgeproxy.sync.poller import AdminSource, RulesSource, SnapshotPoller

log = logging.getLogger("edgeproxy")


def make_state(
    config: ProxyConfig, *, load_rules: bool = True, clock: Clock | None = None, serving: bool = False
) -> ProxyState:
    """The process state, built in one step. With `load_rules`, a `--rules` snapshot is loaded now (RulesError if
    broken). `clock`: the process clock (default: the `now` setting's, else the system clock). `serving`: for
    `serve`, with the poller that keeps the snapshot fresh, the impression recorder and the fleet follower."""
    clock = clock or clock_for(config.now)
    holder = SnapshotHolder(clock)
    geo_lookup = None
    if config.geoip:
        from edgeproxy.geo import MaxMindGeo

        geo_lookup = MaxMindGeo(config.geoip).lookup
    limits = AttributeLimits(
        max_attributes_per_user=config.max_attributes_per_user,
        max_value_bytes=config.max_attribute_value_bytes,
        ttl_seconds=int(config.attribute_ttl_days * 86_400),
        max_users=config.max_users,
    )
    store = open_store(config.state, limits, clock, config.events_buffer_max if config.events else 0)
    events = make_event_transport(config, store) if serving else None
    live = LiveDecisions(clock)
    classifier = UserAgentClassifier()
    poller = make_poller(config, holder, classifier) if serving else None
    metrics = ProxyMetrics(clock(), live, holder, poller)
    cache = make_cache(config, clock, metrics) if config.cache else None
    behaviour = None
    behaviour_config = config.behaviour_expiring()
    if behaviour_config is not None:
        from edgeproxy.runtime.behaviour import BehaviourTracker

        behaviour = BehaviourTracker(behaviour_config, store, lambda: _project_uid(holder, config))
    planner = Planner(config, clock, geo_lookup, store.cached_attributes, cache, classifier, behaviour)
    if cache is not None:
        count_cache_by_route(metrics, cache, planner.routes)
    decision_log = None
    if config.decision_log:
        from edgeproxy.runtime.decision_log import DecisionLog

        decision_log = DecisionLog(config.decision_log, clock)
    forwarder = None
    if serving and config.forward_edge_api:
        from edgeproxy.forward.forwarder import Forwarder
        from edgeproxy.forward.items import edge_api_base
        from edgeproxy.forward.opener import open_outbox

        outbox = open_outbox(config.state, config.forward_outbox_max)
        forwarder = Forwarder(outbox, edge_api_base(config.forward_edge_api), config.forward_outbox_max,
                              timeout=config.forward_timeout)  # fmt: skip
    metrics.forwarder = forwarder
    metrics.events = events
    impressions = None
    if serving and config.impressions != "off":
        from edgeproxy.analytics.impressions import ImpressionRecorder

        impressions = ImpressionRecorder(store, lambda: _project_uid(holder, config), clock=clock,
                                         forwarder=forwarder)  # fmt: skip
    fleet = None
    if serving and config.fleet_redis:
        from edgeproxy.sync.fleet import FleetFollower

        fleet = FleetFollower(config.fleet_redis, holder, classifier)
    retention, tombstones = None, None
    if serving:
        from edgeproxy.runtime.users import Retention, TombstoneFollower

        tombstones = TombstoneFollower(store, planner.tombstones, behaviour=behaviour)
        if config.retention_days > 0:
            retention = Retention(store, clock, config.retention_days, events=events if config.events else None)
    if load_rules and config.rules:
        holder.swap(load_snapshot(config.rules, classifier), config.rules)
    return ProxyState(
        config, clock, holder, store, planner, metrics, live, cache=cache, decision_log=decision_log,
        impressions=impressions, poller=poller, fleet=fleet, retention=retention, tombstones=tombstones,
        forwarder=forwarder, behaviour=behaviour, events=events,
    )  # fmt: skip


def make_event_transport(config: ProxyConfig, store: StateStore) -> EventTransport | None:
    """With Redis state: the event streams, drained into the `events` store when one is set (each process drains:
    one consumer per process, so workers and instances share the work), else only watched for status."""
    from edgeproxy.store.redis_store import RedisStore

    if not isinstance(store, RedisStore):
        return None  # SQLite state: events are rows of the state file (validate refuses `events` with it)
    from edgeproxy.store.event_drain import EventTransport

    if not config.events:
        return EventTransport(store, None)
    from edgeproxy.store.events_url import shown_url
    from edgeproxy.store.postgres_events import PostgresEventStore

    return EventTransport(store, PostgresEventStore(config.events), shown_url(config.events))


def _project_uid(holder: SnapshotHolder, config: ProxyConfig) -> str:
    """The project of the snapshot being served (read per use: the first snapshot may load after start)."""
    loaded = holder.current
    return loaded.snapshot.project.uid if loaded is not None else config.project_uid


def make_cache(config: ProxyConfig, clock: Clock, metrics: ProxyMetrics) -> ResponseCache:
    """The response cache, counting into `metrics`."""
    store: CacheStore
    if config.cache_store == "memory":
        store = MemoryCacheStore(config.cache_max_bytes, clock)
    elif config.cache_store.startswith(("redis://", "rediss://", "unix://")):
        store = RedisCacheStore(config.cache_store)
    else:
        raise ValueError(f"setting 'cache_store': {config.cache_store!r} is not 'memory' or a redis:// URL")
    return ResponseCache(
        store,
        key_headers=config.cache_key_headers,
        default_ttl=config.cache_default_ttl,
        max_object_bytes=config.cache_max_object_bytes,
        events=metrics.cache_events,
        not_stored=metrics.not_stored,
        query=CacheQuery(config.cache_ignored_query_params, sort=config.cache_sort_query),
        soft_purge_grace=config.cache_soft_purge_grace,
    )


def count_cache_by_route(metrics: ProxyMetrics, cache: ResponseCache, routes: RouteTable) -> None:
    """The per-route cache metrics: every route counted from the start, and the variant sets stored per URL
    counted by route at scrape time."""
    metrics.bind_routes(routes.names)
    metrics.variant_census = lambda: cache.variant_sets_by_route(routes.name_of_target)


def make_poller(config: ProxyConfig, holder: SnapshotHolder, classifier: UserAgentClassifier) -> SnapshotPoller:
    if config.rules:
        source = RulesSource(Path(config.rules), classifier)
        return SnapshotPoller(holder, source, interval=config.sync_interval, watch=config.watch)
    client = ManagementClient(
        admin_base_url(config.admin_url or None, config.region or None),
        config.project_uid,
        authtoken=config.authtoken or None,
        oauth_token=config.oauth_token or None,
        timeout=config.sync_timeout,
    )
    admin = AdminSource(client, Path(config.snapshot_dir), classifier, publish_to=config.fleet_redis or None)
    return SnapshotPoller(holder, admin, interval=config.sync_interval)


class StartupError(Exception):
    """The proxy cannot start; the message says why (logged as is, exit 2)."""


class _StartupRejection(logging.Filter):
    """While the first snapshot loads there is no previous one: the poller's "previous snapshot keeps serving"
    would not be true. `initial_snapshot` reports that outcome itself (start-up fails, or what is served)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "keeps serving" in record.getMessage())


def _rules_setting(config: ProxyConfig) -> str:
    """Which setting named the rules and where it came from, for a start-up error a user can act on."""
    return f"setting 'rules' = {config.rules!r}, from {source_of(config, 'rules')}"


async def initial_snapshot(config: ProxyConfig, state: ProxyState, poller: SnapshotPoller) -> None:
    quiet = _StartupRejection()
    sync_log = logging.getLogger("edgeproxy.sync")
    sync_log.addFilter(quiet)
    try:
        outcome = await poller.refresh("startup")
    finally:
        sync_log.removeFilter(quiet)
    if outcome["result"] != "rejected":
        return
    if config.rules:  # refuse to start on broken rules: there is nothing else to serve
        raise StartupError(
            f"rules error, not starting (exit 2): {str(outcome['error']).removeprefix('RulesError: ')} "
            f"({_rules_setting(config)})"
        )
    source = poller.source
    assert isinstance(source, AdminSource)
    try:
        last = source.last_good()
    except RulesError as exc:
        log.error("last good snapshot in %s is unreadable: %s", config.snapshot_dir, exc)
        last = None
    if last is None:
        log.warning("first sync from Admin failed (%s) and there is no last good snapshot in %s: not ready, "
                    "passing requests through unpersonalized until a sync succeeds",
                    outcome["error"], config.snapshot_dir)  # fmt: skip
        return
    state.holder.swap(last, f"last good {config.snapshot_dir}/snapshot.msgpack")
    log.warning("first sync from Admin failed (%s); serving last good snapshot %s", outcome["error"], last.version)


async def serve(config: ProxyConfig, *, worker: int | None = None, ready: Any = None) -> None:
    host, port = listen_address(config)
    # Workers share the port (SO_REUSEPORT); the kernel spreads connections between them.
    sockets = bind_sockets(host, port, reuse_port=worker is not None)  # first: a busy port fails before any sync
    listening = False
    state: ProxyState | None = None
    runner: web.ServerRunner | None = None
    try:
        state = make_state(config, load_rules=False, serving=True)
        poller = state.poller
        assert poller is not None
        await initial_snapshot(config, state, poller)
        server = build_server(
            state,
            {config.ops_prefix: ("ops", ops_handler), config.edge_api_prefix: ("edge_api", edge_api_handler)},
            access_log=logging.getLogger("edgeproxy.access") if config.access_log else None,
            access_log_class=JsonAccessLogger,
            max_line_size=config.max_header_size,
            max_field_size=config.max_header_size,
        )
        await state.start()
        # Everything built so far (snapshot, compiled rules, tables, Bloom filters) lives as long as the process:
        # out of the cyclic collector's reach, so a full collection walks only what requests made since.
        gc.freeze()
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=10.0)
        await runner.setup()
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=1024).start()  # listens from here on
            listening = True
        if ready is not None:
            ready.put(os.getpid())
        loaded = state.holder.current
        log.info(
            "edgeproxy listening on http://%s:%d -> %s (snapshot %s)",
            host, port, config.origin, loaded.snapshot.version if loaded else "none yet",
        )  # fmt: skip
        await _run_until_stopped(config, state, poller)
    finally:
        if runner is not None:
            await runner.cleanup()  # stop accepting, drain in-flight requests
        if state is not None:
            try:
                await state.stop()  # close what was opened, also when the start failed
            except Exception as exc:  # do not hide why the start failed
                log.warning("closing the proxy state: %s", exc)
        if not listening:
            for sock in sockets:
                sock.close()


async def _run_until_stopped(config: ProxyConfig, state: ProxyState, poller: SnapshotPoller) -> None:
    background = None
    if not config.rules or config.watch:
        background = asyncio.create_task(poller.run())
    follower_task = None
    if state.fleet is not None:
        follower_task = asyncio.create_task(state.fleet.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(poller.refresh("SIGHUP")))
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    for task in (background, follower_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _BadRequestLogFilter(logging.Filter):
    """aiohttp logs a full traceback for every malformed request it answers with 400; one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            rejected = parser_rejection(record.exc_info[1])
            if rejected is not None:
                record.msg = "rejected malformed request (%d): %s"
                record.args = rejected
                record.exc_info = None
                record.exc_text = None
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def run(config: ProxyConfig, *, worker: int | None = None, ready: Any = None) -> int:
    prefix = f"[worker {worker}] " if worker is not None else ""
    logging.basicConfig(
        level=config.log_level.upper(), format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.server").addFilter(_BadRequestLogFilter())
    if config.access_log:  # JSON lines on stdout, without the log prefix, for log shippers
        access = logging.getLogger("edgeproxy.access")
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    if config.workers > 1 and worker is None:
        from edgeproxy.runtime.workers import Supervisor

        return Supervisor(config, run).run()
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional on platforms without it
        loop_factory = asyncio.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config, worker=worker, ready=ready))
    except RulesError as exc:
        log.error("rules error, not starting (exit 2): %s (%s)", exc, _rules_setting(config))
        return 2
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    except SyncError as exc:
        log.error("sync: %s", exc)
        return 2
    except StoreError as exc:
        log.error("state store: %s", exc)
        return 2
    except ListenError as exc:
        log.error("%s (setting 'listen'; is another server on that port?)", exc)
        return 2
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0
