"""Carrying bytes between the origin and the client: a response relayed (streamed, or written whole), a WebSocket
bridged. HEAD/1xx/204/304 without bodies; an origin failing mid-body cuts the client's connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edgeproxy.exchange.decorate import ResponseHook, client_headers
from edgeproxy.http.origin import UpstreamResponse
from edgeproxy.http.prebuilt import prebuilt_allowed, whole_response
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.visitor.identity import SetCookies

log = logging.getLogger("edgeproxy.proxy")
NO_BODY_STATUSES = frozenset({204, 304})


async def relay(
    request: web.BaseRequest,
    upstream: UpstreamResponse,
    cookies: SetCookies,
    personalized: bool,
    config: ProxyConfig,
    *,
    x_cache: str | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
    impressions: ResponseHook | None = None,
) -> tuple[web.StreamResponse, bool]:
    """Stream the origin's response to the client. Returns (response, the body arrived complete)."""
    headers = client_headers(upstream.headers, cookies, personalized, config, x_cache, impressions)
    length = upstream.headers.get("Content-Length")
    no_body = request.method == "HEAD" or upstream.status in NO_BODY_STATUSES or upstream.status < 200
    if no_body:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and request.method == "HEAD":
            response.headers["Content-Length"] = length
        await response.prepare(request)
        await response.write_eof()
        return response, True
    if upstream.body_complete:
        # The whole body came with the headers (most pages): one write of headers and body to the client.
        body = upstream.take_body()
        if on_chunk is not None:
            on_chunk(body)
        if prebuilt_allowed(request):
            return whole_response(upstream.status, upstream.reason, headers, body), True
        headers.popall("Content-Length", None)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body), True
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = int(length)
    await response.prepare(request)
    try:
        async for chunk in upstream.iter_chunks():
            if on_chunk is not None:
                on_chunk(chunk)
            await response.write(chunk)
    except OSError as exc:  # UpstreamError, TimeoutError: the origin failed mid-body
        # Headers are gone already: the only honest signal left is to cut the connection.
        log.warning("%s %s: origin body failed mid-stream: %r", request.method, request.path_qs, exc)
        if request.transport is not None:
            request.transport.close()
        return response, False
    await response.write_eof()
    return response, True


OriginFailed = Callable[[web.BaseRequest, int, str, str, BaseException], web.Response]


async def bridge_websocket(
    request: web.BaseRequest, session: aiohttp.ClientSession, target: URL, headers: CIMultiDict[str],
    failed: OriginFailed,
) -> web.StreamResponse | None:  # fmt: skip
    """Bridge a WebSocket to `target` (ws:// or wss://); None when the origin answered the handshake with something
    else than 101 (its plain answer is then fetched as an ordinary request). `failed` answers an origin failure."""
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept"):
        headers.popall(name, None)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers.popall("Sec-WebSocket-Protocol", None)
    try:
        upstream = await session.ws_connect(
            target, headers=headers, protocols=protocols, autoping=False, max_msg_size=0
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status != 101:
            return None
        return failed(request, 502, "origin_websocket_refused", "The origin refused the WebSocket.", exc)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return failed(request, 502, "origin_unreachable", "The origin could not be reached.", exc)
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (), autoping=False, max_msg_size=0
    )
    await client.prepare(request)

    async def pump(
        source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    ) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == aiohttp.WSMsgType.PONG:
                await sink.pong(message.data)
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                break
        if not sink.closed:
            await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)

    tasks = [asyncio.ensure_future(pump(client, upstream)), asyncio.ensure_future(pump(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not upstream.closed:
            await upstream.close()
        if not client.closed:
            await client.close()
    return client
