"""The data plane: edgeproxy's own HTTP/1.1 server protocol (uvloop/asyncio + httptools) in front of aiohttp's.

Every connection starts here. The requests a site's pages are made of — a GET or HEAD over HTTP/1.1 keep-alive,
in origin-form, without a body, upgrade or `Expect`, outside the reserved prefixes, that the gate lets through —
are parsed here and carried out by the same executor as ever (executor.handle_proxied, and `hit_answer` for fresh
hits of the in-memory cache, answered as they are parsed), their responses written as bytes (wire.py). That is
what the proxy spends its time on, and aiohttp's per-request machinery (a task, a request, a response and a
writer each) was most of that time.

Anything else — the Edge API and ops (reserved prefixes), request bodies, WebSocket upgrades, `Expect`, HTTP/1.0,
`Connection: close`, absolute-form targets, and every request the gate or the parser would refuse — is handed,
with the connection, to aiohttp's server (`fallback`) exactly as it arrived: the bytes from that request's first
byte on are fed to an aiohttp protocol put in this one's place on the transport, and the connection stays there.
aiohttp's public protocol interface is all this needs (`web.Server()` makes a protocol; `connection_made`,
`data_received`, `eof_received`). So what aiohttp answers, and how, is unchanged; the data plane only takes the
common case off it. `EDGEPROXY_DATA_PLANE=off` leaves every connection to aiohttp.

Requests on a connection are answered one at a time, in order (pipelined ones wait in the buffer); a client that
does not read its responses stops being read (flow control both ways); idle keep-alive connections are closed
after aiohttp's `keepalive_timeout`; shutdown lets requests in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edgeproxy.cache.store import MemoryCacheStore
from edgeproxy.http.access_log import access_line
from edgeproxy.http.errors import error_response
from edgeproxy.http.executor import Decided, HitAnswer, handle_proxied, hit_answer
from edgeproxy.http.gate import ReservedPrefixes
from edgeproxy.http.gate import check as check_request
from edgeproxy.http.wire import Sent, WireRequest
from edgeproxy.runtime.state import ProxyState

log = logging.getLogger("edgeproxy.proxy")
SWITCH = "EDGEPROXY_DATA_PLANE"  # `off` (or 0, false, no): every connection to aiohttp's server
_OFF = frozenset({"off", "0", "false", "no"})
KEEPALIVE_TIMEOUT = 3630.0  # aiohttp's default, kept so that both servers close idle connections alike
_READ_LIMIT = 262_144  # buffered bytes (pipelined requests) past which the client is not read until they are served
_HEAD_END = b"\r\n\r\n"
_VERSION = (1, 1)


def _parser_refuses_control_characters() -> bool:
    """Whether httptools refuses control characters in header values itself (llhttp in strict mode does), so the
    gate need not scan every value: checked once, at import, on the installed httptools."""

    class Probe:
        pass

    for octet in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F):
        bad = bytes([octet])
        for value in (bad + b"v", b"v" + bad + b"v", b"v" + bad):
            try:
                httptools.HttpRequestParser(Probe()).feed_data(b"GET / HTTP/1.1\r\nX-Probe: " + value + b"\r\n\r\n")
            except httptools.HttpParserError:
                continue
            return False
    return True


_VALUES_CHECKED = _parser_refuses_control_characters()


def _plausible(partial: bytearray) -> bool:
    """Whether an incomplete head may still become a request line: an upper-case method, then a space."""
    space = partial.find(b" ", 0, 24)
    method = partial[:space] if space >= 0 else partial[:24]
    return bool(method) and method.isalpha() and method.isupper() and (space >= 0 or len(partial) < 24)


def data_plane_on() -> bool:
    return os.environ.get(SWITCH, "").strip().lower() not in _OFF


class DataPlaneServer(web.Server):
    """The protocol factory the listening socket uses (aiohttp's runner and sites drive it as a `web.Server`):
    data-plane connections, each handed to `fallback` (aiohttp's server) when it meets what it does not serve."""

    def __init__(
        self, state: ProxyState, fallback: web.Server, reserved: Sequence[str], *, max_head: int,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT, access_log: logging.Logger | None = None,
    ) -> None:  # fmt: skip
        super().__init__(fallback.request_handler)
        self.loop = asyncio.get_running_loop()
        self.state = state
        self.fallback = fallback
        self.reserved = ReservedPrefixes(reserved)  # matched as aiohttp's door matches them (server.py)
        self.max_head = max_head
        self.keepalive_timeout = keepalive_timeout
        self.access_log = access_log if state.config.access_log else None
        cache = state.cache
        self.hit: HitAnswer | None = None
        if cache is not None and isinstance(cache.store, MemoryCacheStore):
            # _parse asks the gate first; the heads of fresh hits are remembered (their repeats answered at once)
            self.hit = hit_answer(state, self.access_log, gated=True, remember=state.config.cache_remembered_hits)
        self.live: set[Connection] = set()
        self.counts = state.metrics.data_plane  # hit, executor, handed_off: the process's one count
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def answered(self) -> int:
        """Fresh hits answered as they were parsed (`hit`)."""
        return self.counts["hit"]

    @property
    def served(self) -> int:
        """Requests answered by the executor."""
        return self.counts["executor"]

    @property
    def handed_off(self) -> int:
        """Connections handed to aiohttp's server."""
        return self.counts["handed_off"]

    def __call__(self) -> Connection:  # type: ignore[override]
        if self._sweeper is None and self.keepalive_timeout > 0:
            self._sweeper = self.loop.call_later(min(self.keepalive_timeout, 10.0), self._sweep)
        return Connection(self)

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout (one timer for all of them)."""
        deadline = self.loop.time() - self.keepalive_timeout
        for conn in list(self.live):
            if not conn.busy and conn.last_active < deadline:
                conn.close()
        self._sweeper = None if self._closing else self.loop.call_later(min(self.keepalive_timeout, 10.0),
                                                                         self._sweep)  # fmt: skip

    def pre_shutdown(self) -> None:
        self._closing = True
        for conn in list(self.live):
            if not conn.busy:
                conn.close()
        self.fallback.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Let requests in progress finish (within `timeout`), then close what is left; aiohttp's the same."""
        self._closing = True
        loop = self.loop
        deadline = None if timeout is None else loop.time() + timeout
        for conn in list(self.live):
            conn.closing = True
            if not conn.busy:
                conn.close()
        while self.live and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.05)
        for conn in list(self.live):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self.fallback.shutdown(timeout)


class Connection(asyncio.Protocol):
    """One client connection on the data plane (httptools parses the heads; see the module's docstring)."""

    __slots__ = (
        "buffer", "busy", "closing", "complete", "drain_waiter", "eof", "keep_alive", "last_active", "lines",
        "parser", "peer", "reading_paused", "server", "task", "transport", "url", "writing_paused",
    )  # fmt: skip

    def __init__(self, server: DataPlaneServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buffer = bytearray()
        self.busy = False  # a request is being answered (its task runs, or its response waits for the client)
        self.closing = False  # close once the request in progress is answered
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.peer: str | None = None
        self.last_active = 0.0
        self.url = b""
        self.lines: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.keep_alive = False
        self.task: asyncio.Task[None] | None = None  # the request in progress (held: the loop keeps weak refs)

    # -- asyncio's protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is no asyncio subclass
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # as aiohttp does (tcp_keepalive): the kernel finds dead peers
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.last_active = self.server.loop.time()
        self.server.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.live.discard(self)
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client went away"))

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.busy:
            self.closing = True
            return True  # keep the transport open for the response in progress; closed after it
        return None  # nothing in progress: the transport closes

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.buffer and data[-4:] == _HEAD_END and data.find(_HEAD_END) == len(data) - 4:
            # The usual read: exactly one whole head, nothing buffered before it. Parsed as it came, unless it
            # repeats a head whose fresh hit is remembered (executor.HitAnswer.again).
            server = self.server
            self.last_active = server.loop.time()
            hit = server.hit
            if hit is not None and hit.remembered:
                parts = hit.again(data, self.peer)
                if parts is not None:
                    self._write_hit(parts)
                    server.counts["remembered"] += 1
                    return
            request = self._parse(data)
            if request is not None:
                self._serve(request, data)
                return
            self.buffer += data
            self._hand_off()
            return
        self.buffer += data
        if self.busy:
            if len(self.buffer) > _READ_LIMIT and not self.reading_paused and self.transport is not None:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        self.last_active = self.server.loop.time()
        self._next()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the client is not reading what it was sent (the transport's buffer over its high mark)."""
        if self.writing_paused and self.transport is not None:
            waiter = self.drain_waiter
            if waiter is None:
                waiter = self.drain_waiter = self.server.loop.create_future()
            await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- httptools' callbacks -------------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.lines.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # (only known here: the parser resets it after the body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- requests -------------------------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the buffered requests in order while they are ours; hand the connection off at the first that
        is not."""
        buffer = self.buffer
        while buffer and not self.busy and self.transport is not None:
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > self.server.max_head or b"\n\n" in buffer or not _plausible(buffer):
                    # Too long for us, bare LFs, or not HTTP at all: aiohttp's parser and the gate judge it now.
                    self._hand_off()
                return  # the rest of the head is on its way
            size = end + 4
            head = bytes(buffer[:size]) if size < len(buffer) else bytes(buffer)
            request = self._parse(head)
            if request is None:
                self._hand_off()
                return
            if size < len(buffer):
                del buffer[:size]
            else:
                buffer.clear()
            self._serve(request, head)

    def _parse(self, head: bytes) -> WireRequest | None:
        """The head as a request the data plane serves, or None (it goes to aiohttp, the connection with it)."""
        if len(head) > self.server.max_head or head[:1] in (b"\r", b"\n", b" ", b"\t"):
            return None
        self.url = b""
        self.lines = []
        self.complete = self.keep_alive = False
        parser = self.parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Bare LFs or CRs, obs-fold, bad tokens (httptools is strict), an upgrade: the parser is left
            # mid-message, and the connection is aiohttp's from here on, whose parser and gate judge it.
            return None
        if not self.complete:
            return None  # a body follows
        method = parser.get_method()
        if (method != b"GET" and method != b"HEAD") or parser.get_http_version() != "1.1":
            return None
        if not self.keep_alive:
            return None
        url = self.url
        if url[:1] != b"/":
            return None  # absolute-form (or refused by the gate)
        raw_path = url.decode("latin-1")
        lines = self.lines
        method_name = "GET" if method == b"GET" else "HEAD"
        if check_request(method_name, raw_path, _VERSION, lines, values_checked=_VALUES_CHECKED) is not None:
            return None  # refused: aiohttp's path answers the gate's refusal, as ever
        headers = CIMultiDictProxy(
            CIMultiDict([(name.decode("latin-1"), value.decode("utf-8", "surrogateescape")) for name, value in lines])
        )
        host = headers.get("Host")
        if (
            host is None or "Upgrade" in headers or "Expect" in headers or "Content-Length" in headers
            or "Transfer-Encoding" in headers
        ):  # fmt: skip
            return None
        path = raw_path.partition("?")[0]
        if "%" in path:
            path = URL.build(path=path, encoded=True).path  # decoded, as aiohttp's request.path
        if self.server.reserved.match(path, raw_path) is not None:
            return None
        return WireRequest(method_name, raw_path, path, lines, headers, host, self.peer, self)

    def _serve(self, request: WireRequest, head: bytes) -> None:
        """Answer a request parsed from `head` (its bytes, under which a fresh hit's answer is remembered)."""
        server = self.server
        hit = server.hit
        if hit is not None and request.method == "GET":
            try:
                parts = hit(request.raw_path, request.path, _VERSION, request.raw_headers, request.headers,
                            request.host, request.peer, "http", head)  # fmt: skip
            except Exception:  # a bug here must cost the lane, not the connection: the executor answers
                log.exception("hit lane failed on %s %s; the general path answers", request.method, request.raw_path)
                parts = None
            if parts is not None:  # answered whole, recorded already
                self._write_hit(parts)
                return
        self.busy = True
        self.task = server.loop.create_task(self._answer(request))

    def _write_hit(self, parts: Sequence[bytes]) -> None:
        server = self.server
        assert self.transport is not None
        self.transport.writelines(parts)
        server.counts["hit"] += 1
        if self.writing_paused:
            self.busy = True
            self.task = server.loop.create_task(self._after_drain())

    async def _after_drain(self) -> None:
        try:
            await self.drain()
        except ConnectionError:
            return
        self._done(close=False)

    async def _answer(self, request: WireRequest) -> None:
        server = self.server
        started = perf_counter()
        decided = Decided()
        close = False
        try:
            answer = await handle_proxied(request, server.state, decided)
            if not isinstance(answer, Sent):
                answer = request.send(answer)
                await self.drain()
            close = answer.close
            server.counts["executor"] += 1
            log_line = server.access_log
            if log_line is not None and log_line.isEnabledFor(logging.INFO):
                log_line.info(access_line(
                    remote=request.peer, method=request.method, raw_path=request.raw_path, status=answer.status,
                    body_bytes=answer.body_length, seconds=perf_counter() - started, manifest=decided.manifest,
                    snapshot=decided.snapshot or None, cache=answer.x_cache,
                ))  # fmt: skip
        except ConnectionError:
            close = True  # the client went away while its response was written
        except Exception:
            log.exception("%s %s failed", request.method, request.raw_path)
            transport = self.transport
            if transport is not None and not transport.is_closing() and not request.wrote:  # else: cut
                request.send(error_response(500, "internal_error", "The proxy failed on this request.",
                                            request.headers.get("Accept")))  # fmt: skip
            close = True
        self._done(close)

    def _done(self, close: bool) -> None:
        """The request in progress is answered: the next buffered one, or the connection closed."""
        self.busy = False
        self.task = None
        self.last_active = self.server.loop.time()
        transport = self.transport
        if transport is None:
            return
        if close or self.closing or self.eof:
            transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self._next()

    def _hand_off(self) -> None:
        """This connection to aiohttp's server, with every byte from the current request's first on."""
        transport = self.transport
        assert transport is not None
        server = self.server
        server.live.discard(self)
        server.counts["handed_off"] += 1
        data = bytes(self.buffer)
        self.buffer.clear()
        protocol: Any = server.fallback()
        transport.set_protocol(protocol)
        self.transport = None
        protocol.connection_made(transport)
        if self.writing_paused:
            protocol.pause_writing()
        if data:
            protocol.data_received(data)
        if self.reading_paused:
            transport.resume_reading()
        if self.eof:
            protocol.eof_received()
