"""Run the proxy: load the snapshot, build the app, serve until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.snapshot_file import load_snapshot
from edgeproxy.proxy.app import ProxyState, build_app
from edgeproxy.proxy.config import ProxyConfig, listen_address
from edgeproxy.proxy.edge_api import edge_api_handler
from edgeproxy.proxy.ops import ops_handler
from edgeproxy.proxy.snapshots import SnapshotHolder
from edgeproxy.store.base import AttributeLimits, StoreError, open_store

log = logging.getLogger("edgeproxy")


def make_state(config: ProxyConfig) -> ProxyState:
    holder = SnapshotHolder()
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
    state = ProxyState(config, holder, geo_lookup, open_store(config.state, limits))
    snapshot = load_snapshot(config.rules, state.classifier)  # RulesError: refuse to start on broken rules
    holder.swap(snapshot, config.rules)
    return state


async def serve(config: ProxyConfig) -> None:
    state = make_state(config)
    app = build_app(state, {config.ops_prefix: ops_handler, config.edge_api_prefix: edge_api_handler})
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("edgeproxy.access") if config.access_log else None,
        handle_signals=False,
        max_line_size=config.max_header_size,
        max_field_size=config.max_header_size,
        shutdown_timeout=10.0,
    )
    await runner.setup()
    host, port = listen_address(config)
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    loaded = state.holder.current
    assert loaded is not None
    log.info(
        "edgeproxy listening on http://%s:%d -> %s (snapshot %s, %d experiences)",
        host, port, config.origin, loaded.snapshot.version, len(loaded.snapshot.experiences),
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    await runner.cleanup()


def run(config: ProxyConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional on platforms without it
        loop_factory = asyncio.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config))
    except RulesError as exc:
        log.error("rules error: %s", exc)
        return 2
    except StoreError as exc:
        log.error("state store: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.listen, exc)
        return 2
    return 0
