"""The data plane's side of a proxied request (dataplane.py): the request as parsed, and its response written as
bytes straight to the client's transport — no aiohttp request or response objects on the way.

A response leaves in one of three shapes, each framed as aiohttp frames the same response on its own server:
- prebuilt parts (a cache hit: constant head, this visitor's lines, body) — `WireRequest.send_parts`;
- an origin response relayed (`WireRequest.relay`): written whole when its body came with its head, else streamed
  with the origin's Content-Length or chunked;
- a `web.Response` built by code both servers share (error pages, 304s, explained hits) — `WireRequest.send`.
What was sent is returned as a `Sent`, which the executor's bookkeeping reads like a response (status, X-Cache).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Protocol

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy.exchange.decorate import ResponseHook, client_headers
from edgeproxy.http.aiohttp_internals import SERVER_SOFTWARE
from edgeproxy.http.origin import UpstreamResponse
from edgeproxy.http.prebuilt import date_line
from edgeproxy.http.relay import NO_BODY_STATUSES
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.visitor.identity import SetCookies

log = logging.getLogger("edgeproxy.proxy")
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class Writer(Protocol):
    """The client connection a response is written to (dataplane.Connection)."""

    transport: asyncio.Transport | None

    async def drain(self) -> None: ...


class Sent:
    """A response the data plane has written: what the executor's bookkeeping and the access log read."""

    __slots__ = ("body_length", "close", "status", "x_cache")

    def __init__(self, status: int, x_cache: str | None, body_length: int, close: bool = False) -> None:
        self.status = status
        self.x_cache = x_cache
        self.body_length = body_length
        self.close = close  # the connection is closed after it (or already was)


class WireRequest:
    """A bodiless GET or HEAD over HTTP/1.1 keep-alive, in origin-form, as the data plane parsed it: what the
    executor reads of a request (the same names as aiohttp's `BaseRequest`)."""

    __slots__ = ("headers", "host", "method", "path", "peer", "raw_headers", "raw_path", "writer", "wrote")

    scheme = "http"
    version = HttpVersion11
    keep_alive = True
    body_exists = False
    content = None

    def __init__(
        self, method: str, raw_path: str, path: str, raw_headers: Sequence[tuple[bytes, bytes]],
        headers: CIMultiDictProxy[str], host: str, peer: str | None, writer: Writer,
    ) -> None:  # fmt: skip
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.raw_headers = raw_headers
        self.headers = headers
        self.host = host
        self.peer = peer
        self.writer = writer
        self.wrote = False  # a response (or part of one) has been written

    @property
    def path_qs(self) -> str:
        return self.raw_path

    # -- writing ------------------------------------------------------------------------------------------

    def _write(self, parts: Sequence[bytes]) -> bool:
        transport = self.writer.transport
        if transport is None or transport.is_closing():
            return False  # the client went away: nothing to write to
        self.wrote = True
        transport.writelines(parts)
        return True

    def send_parts(self, parts: Sequence[bytes], status: int, body_length: int, x_cache: str | None) -> Sent:
        """A prebuilt response (executor.entry_parts): written as it is."""
        self._write(parts)
        return Sent(status, x_cache, body_length)

    def send(self, response: web.StreamResponse) -> Sent:
        """A `web.Response` the shared code built (an error page, a 304, an explained hit), framed as aiohttp
        frames it; `force_close()` on it closes the connection after it."""
        assert isinstance(response, web.Response)
        body = response.body
        assert body is None or isinstance(body, bytes)
        close = not response.keep_alive if response.keep_alive is not None else False
        data = body or b""
        head = head_block(response.status, response.reason, response.headers, self.method,
                          length=len(data), close=close)  # fmt: skip
        self._write((head,) if self.method == "HEAD" or response.status in NO_BODY_STATUSES else (head, data))
        return Sent(response.status, response.headers.get("X-Cache"), len(data), close)

    async def relay(
        self,
        upstream: UpstreamResponse,
        cookies: SetCookies,
        personalized: bool,
        config: ProxyConfig,
        *,
        x_cache: str | None = None,
        on_chunk: Callable[[bytes], None] | None = None,
        impressions: ResponseHook | None = None,
    ) -> tuple[Sent, bool]:
        """The origin's response to the client (relay.relay's counterpart). Returns (what was sent, the body
        arrived complete)."""
        headers = client_headers(upstream.headers, cookies, personalized, config, x_cache, impressions)
        status, method = upstream.status, self.method
        if method == "HEAD" or status in NO_BODY_STATUSES or status < 200:
            declared = upstream.headers.get("Content-Length")
            head = head_block(status, upstream.reason, headers, method, length=None, close=False,
                              head_length=declared if method == "HEAD" else None)  # fmt: skip
            self._write((head,))
            await self.writer.drain()
            return Sent(status, x_cache, 0), True
        if upstream.body_complete:
            # The whole body came with the headers (most pages): one write of head and body.
            body = upstream.take_body()
            if on_chunk is not None:
                on_chunk(body)
            self._write((head_block(status, upstream.reason, headers, method, length=len(body), close=False), body))
            await self.writer.drain()
            return Sent(status, x_cache, len(body)), True
        declared = upstream.headers.get("Content-Length")
        length = int(declared) if declared is not None else None  # the origin's framing, kept
        self._write((head_block(status, upstream.reason, headers, method, length=length, close=False),))
        sent = 0
        try:
            async for chunk in upstream.iter_chunks():
                if not chunk:
                    continue  # (an empty chunk would read as the chunked body's end)
                if on_chunk is not None:
                    on_chunk(chunk)
                sent += len(chunk)
                if length is None:
                    self._write((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    self._write((chunk,))
                await self.writer.drain()
        except ConnectionError:
            raise  # the client went away: the data plane closes the connection
        except OSError as exc:  # UpstreamError, TimeoutError: the origin failed mid-body
            # Headers are gone already: the only honest signal left is to cut the connection.
            log.warning("%s %s: origin body failed mid-stream: %r", method, self.raw_path, exc)
            transport = self.writer.transport
            if transport is not None:
                transport.close()
            return Sent(status, x_cache, sent, close=True), False
        if length is None:
            self._write((b"0\r\n\r\n",))
        await self.writer.drain()
        return Sent(status, x_cache, sent), True


def head_block(
    status: int,
    reason: str | None,
    headers: CIMultiDict[str] | CIMultiDictProxy[str],
    method: str,
    *,
    length: int | None,
    close: bool,
    head_length: str | None = None,
) -> bytes:
    """Status line and headers, framed as aiohttp frames a response to an HTTP/1.1 request: `length` the body's
    length (None: chunked, or no body for 1xx/204/304 and HEAD); `head_length` a HEAD response's Content-Length."""
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    names = set()
    for name, value in headers.items():  # one pass: the lines, and the names the defaults below look for
        low = name.lower()
        if low not in _FRAMING:
            names.add(low)
            lines.append(f"{name}: {value}\r\n")
    empty = status in NO_BODY_STATUSES or status < 200
    # What aiohttp adds (StreamResponse._prepare_headers; prebuilt.head_lines for whole bodies): a default
    # Content-Type for a body, Server, the framing.
    if not empty and method != "HEAD" and "content-type" not in names and length != 0:
        lines.append("Content-Type: application/octet-stream\r\n")  # RFC 9110 §8.3
    if "server" not in names:
        lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
    if length is not None and not empty:
        lines.append(f"Content-Length: {length}\r\n")
    elif not empty and method != "HEAD":
        lines.append("Transfer-Encoding: chunked\r\n")
    else:
        declared = head_length if head_length is not None else headers.get("Content-Length") if status == 304 else None
        if declared is not None:
            lines.append(f"Content-Length: {declared}\r\n")
    if "date" not in names:
        lines.append(date_line())
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")
