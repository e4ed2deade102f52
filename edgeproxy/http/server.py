"""The door: aiohttp's low-level server, every request through the gate (gate.py) first, then to the Edge API or
ops under their reserved prefixes, or to the executor (executor.py) that carries out the request's plan."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from edgeproxy.cache.store import MemoryCacheStore
from edgeproxy.http.aiohttp_internals import data_plane_server, header_values_checked, send_continue
from edgeproxy.http.dataplane import KEEPALIVE_TIMEOUT, DataPlaneServer, data_plane_on
from edgeproxy.http.executor import ALLOWED_METHODS, lane_answer, proxy_handler, refuse
from edgeproxy.http.gate import ReservedPrefixes, origin_form
from edgeproxy.http.gate import check as check_request
from edgeproxy.runtime.state import ProxyState

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# Ops and the Edge API: handlers of (request, state) under a reserved prefix.
ReservedHandler = Callable[[web.BaseRequest, ProxyState], Awaitable[web.StreamResponse]]


def build_handler(state: ProxyState, reserved: dict[str, tuple[str, ReservedHandler]]) -> RequestHandler:
    """The one handler every request goes to. `reserved` maps path prefixes to (metrics kind, handler): ops and
    the Edge API, never forwarded; everything else is proxied."""
    prefixes = ReservedPrefixes(list(reserved))
    handlers = list(reserved.values())
    values_checked = header_values_checked()  # the parser in front refuses control characters in values itself

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        # The gate first, for every request (the hit lane, executor.lane_answer, asks it too, before it answers).
        refusal = check_request(
            request.method, request.raw_path, request.version, request.raw_headers, values_checked=values_checked
        )
        if refusal is not None:
            return refuse(request, refusal)
        if request.raw_path[:1] != "/":  # absolute-form or `OPTIONS *`, as the gate let through
            if request.raw_path == "*":
                return web.Response(status=200, headers={"Allow": ALLOWED_METHODS, "Content-Length": "0"})
            request = _in_origin_form(request)
        if "Expect" in request.headers:
            expected = await _expect(request)
            if expected is not None:
                return expected
        found = prefixes.match(request.path, request.raw_path)
        if found is not None:
            kind, handler = handlers[found]
            started = time.perf_counter()
            response = await handler(request, state)
            state.metrics.observe_request(kind, response.status, time.perf_counter() - started)
            return response
        return await proxy_handler(request, state)

    return dispatch


def _in_origin_form(request: web.BaseRequest) -> web.BaseRequest:
    """RFC 9112 §3.2.2: an absolute-form target is forwarded in origin-form, its authority replacing Host."""
    path, authority = origin_form(request.raw_path)
    headers = request.headers.copy()
    headers["Host"] = authority
    return request.clone(rel_url=URL(path, encoded=True), headers=headers)


async def _expect(request: web.BaseRequest) -> web.StreamResponse | None:
    """RFC 9110 §10.1.1, as aiohttp's router does it: `100 Continue` before the body is read (and streamed on)."""
    if request.headers["Expect"].lower() != "100-continue":
        return web.Response(status=417, text="Only Expect: 100-continue is supported.\n")
    if request.version >= (1, 1):
        await send_continue(request)
    return None


def build_server(state: ProxyState, reserved: dict[str, tuple[str, ReservedHandler]], **kwargs: Any) -> web.Server:
    """aiohttp's low-level server around `build_handler`: no router, middleware chain or Application
    signals, which one catch-all route would not use anyway (about 30 µs less CPU per request, measured with
    wrk on a minimal handler). With the response cache on, fresh hits of the in-memory store are
    answered as they are parsed (aiohttp_internals.py, executor.lane_answer).
    The caller starts and stops `state` (see runtime/serve.py)."""
    handler = build_handler(state, reserved)
    keepalive_timeout = kwargs.get("keepalive_timeout", KEEPALIVE_TIMEOUT)
    plane = data_plane_on()
    # Request bodies are relayed as the exact bytes the client framed: never inflated (a gzip body could
    # otherwise carry a request of its own past the gate). The Edge API decodes what it reads itself.
    kwargs["auto_decompress"] = False
    access_log = kwargs.get("access_log")
    answer = None
    if not plane and state.cache is not None and isinstance(state.cache.store, MemoryCacheStore):
        answer = lane_answer(state, access_log if state.config.access_log else None, header_values_checked())
    aiohttp_server = data_plane_server(handler, answer, **kwargs)
    if not plane:
        return aiohttp_server
    max_head = min(kwargs.get("max_line_size", 8190), kwargs.get("max_field_size", 8190))
    return DataPlaneServer(state, aiohttp_server, tuple(reserved), max_head=max_head,
                           keepalive_timeout=keepalive_timeout, access_log=access_log)  # fmt: skip
