"""Run the proxy's real server in-process for tests: the same low-level aiohttp server `serve` uses (with the hit
lane when the cache is in memory), on a free loopback port, with the state started and stopped around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import BaseTestServer, TestClient
from aiohttp.web_runner import ServerRunner

from edgeproxy.endpoints.edge_api import edge_api_handler
from edgeproxy.endpoints.ops import ops_handler
from edgeproxy.http.server import ReservedHandler, build_server
from edgeproxy.runtime.state import ProxyState


def reserved_for(state: ProxyState) -> dict[str, tuple[str, ReservedHandler]]:
    """Ops and the Edge API under the configured prefixes, as `serve` mounts them."""
    config = state.config
    return {config.ops_prefix: ("ops", ops_handler), config.edge_api_prefix: ("edge_api", edge_api_handler)}


class ProxyTestServer(BaseTestServer):
    """`build_server`'s server (the hit lane included) as an aiohttp test server."""

    def __init__(self, state: ProxyState, **kwargs: Any) -> None:
        self.state = state
        super().__init__(host="127.0.0.1", **kwargs)

    async def _make_runner(self, **kwargs: Any) -> ServerRunner:
        self.proxy = build_server(self.state, reserved_for(self.state), **kwargs)
        return ServerRunner(self.proxy, **kwargs)


@asynccontextmanager
async def proxy_server(
    state: ProxyState, **server_kwargs: Any
) -> AsyncIterator[ProxyTestServer]:
    """`server_kwargs`: aiohttp server settings (access_log, keepalive_timeout, ...)."""
    await state.start()
    server = ProxyTestServer(state)
    try:
        await server.start_server(**server_kwargs)
        yield server
    finally:
        await server.close()
        await state.stop()


@asynccontextmanager
async def proxy_client(state: ProxyState) -> AsyncIterator[TestClient[Any, Any]]:
    async with proxy_server(state) as server, TestClient(server) as client:
        yield client
