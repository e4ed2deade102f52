"""Run the proxy's real request handler in-process for tests: the same low-level aiohttp server `serve` uses,
on a free loopback port, with the state started and stopped around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import RawTestServer, TestClient

from edgeproxy.proxy.app import ProxyState, ReservedHandler, build_handler
from edgeproxy.proxy.edge_api import edge_api_handler
from edgeproxy.proxy.ops import ops_handler


def reserved_for(state: ProxyState) -> dict[str, tuple[str, ReservedHandler]]:
    """Ops and the Edge API under the configured prefixes, as `serve` mounts them."""
    config = state.config
    return {config.ops_prefix: ("ops", ops_handler), config.edge_api_prefix: ("edge_api", edge_api_handler)}


@asynccontextmanager
async def proxy_server(state: ProxyState) -> AsyncIterator[RawTestServer]:
    await state.start()
    server = RawTestServer(build_handler(state, reserved_for(state)), host="127.0.0.1")
    try:
        await server.start_server()
        yield server
    finally:
        await server.close()
        await state.stop()


@asynccontextmanager
async def proxy_client(state: ProxyState) -> AsyncIterator[TestClient[Any, Any]]:
    async with proxy_server(state) as server, TestClient(server) as client:
        yield client
