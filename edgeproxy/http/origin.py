"""The proxy's HTTP/1.1 client to its one origin: pooled keep-alive connections, streamed bodies both ways.

A reverse proxy needs a small part of a general HTTP client (no cookies, redirects, proxies, auth, tracing or
decompression), and that general machinery was over half of edgeproxy's CPU per proxied request with aiohttp's
ClientSession. This module is the part a proxy needs, on asyncio protocols and the llhttp parser (httptools):

- a pool of keep-alive connections (LIFO, at most `limit`, idle ones closed after `keepalive` seconds, and a
  connection the origin closed is dropped as soon as it goes);
- the request head written in one `write`, the body streamed after it (Content-Length as given, else chunked),
  honouring the transport's write flow control;
- the response parsed as it arrives: status and headers, then body chunks through a bounded buffer that pauses
  reading from the origin while the client is slower (so a large download never sits in memory);
  bodies delimited by Content-Length, chunked encoding or (HTTP/1.0 style) the connection closing;
  responses to HEAD and 1xx/204/304 without bodies; 1xx interim responses skipped;
- connect timeout and read timeout (no byte from the origin for that long while a response is awaited);
- a request that fails on a reused idle connection before any byte of a response (the origin closed it while
  it sat in the pool, or as the request arrived) is retried once on a new connection when it is safe to: an
  idempotent method (RFC 9110 §9.2.2) without a streamed body.

Errors: `TimeoutError` for timeouts, `UpstreamError` (an `OSError`) for everything else.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
from aiohttp import StreamReader
from multidict import CIMultiDict

HIGH_WATER = 256 * 1024  # buffered response bytes above which reading from the origin pauses
LOW_WATER = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2: safe to resend


class UpstreamError(OSError):
    """The origin could not be reached, broke the connection or sent something that is not HTTP/1.x."""


class ClientBodyError(Exception):
    """The client's request body failed while it was relayed: its framing broke, the client went away, or it
    sent nothing for the read timeout. Not the origin's failure (not an OSError): a 4xx, never a 502/504."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Connection(asyncio.Protocol):
    """One connection to the origin; carries one exchange at a time."""

    __slots__ = (
        "_exchange",
        "_write_ready",
        "closed",
        "idle_since",
        "pool",
        "transport",
    )

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._exchange: UpstreamResponse | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not registered as one

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            self.abort()  # bytes nobody asked for: the connection is out of step, never reuse it
            return
        exchange.feed(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        exchange = self._exchange
        if exchange is not None:
            exchange.connection_lost(exc)
        waiter = self._write_ready
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamError(f"origin closed the connection: {exc!r}"))

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter = self._write_ready
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the exchange -------------------------------------------------------------------------------

    async def drain(self) -> None:
        waiter = self._write_ready
        if waiter is not None and not waiter.done():
            await waiter
        if self.closed:
            raise UpstreamError("origin closed the connection while the request was being sent")

    def begin(self, exchange: UpstreamResponse) -> None:
        self._exchange = exchange

    def finish(self, reusable: bool) -> None:
        """The exchange is over: back to the pool when the message ended cleanly and keep-alive holds."""
        self._exchange = None
        if reusable and not self.closed:
            self.pool._release(self)
        else:
            self.abort()
            self.pool._release(None)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class UpstreamResponse:
    """The origin's answer: `status`, `reason`, `headers` (CIMultiDict) once `request` returns; the body with
    `iter_chunks()` (or `body_complete` + `take_body()` when it has all arrived already). Call `release()`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_eof_delimited",
        "_error",
        "_head_only",
        "_headers_done",
        "_last_data",
        "_loop",
        "_paused",
        "_timeout",
        "_timer",
        "_waiter",
        "body_complete",
        "got_bytes",
        "headers",
        "keep_alive",
        "parser",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection, head_only: bool, timeout: float | None) -> None:
        self._conn = conn
        self._head_only = head_only
        self._loop = asyncio.get_running_loop()
        # The parser calls back into this object: a reference cycle, broken in `release()` so that a finished
        # exchange is freed at once rather than left to the cyclic GC (whose pauses were the proxy's p99).
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.keep_alive = False
        self.got_bytes = False
        self.body_complete = False
        self._headers_done = False
        self._eof_delimited = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timeout = timeout
        self._timer = False  # watched by the pool's read-timeout timer
        self._last_data = self._loop.time()

    # -- parser callbacks (httptools) -------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self.headers = CIMultiDict()
            self.reason = ""
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self._headers_done = True
        if self._head_only or status in NO_BODY_STATUSES:
            self._complete()
        elif (
            "Content-Length" not in self.headers and "chunked" not in self.headers.get("Transfer-Encoding", "").lower()
        ):
            self._eof_delimited = True  # the body ends when the origin closes the connection
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.body_complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._headers_done and not self.body_complete:
            self._complete()
            self._wake()

    # -- fed by the connection --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.got_bytes = True
        self._last_data = self._loop.time()
        parser = self.parser
        if self.body_complete or parser is None:
            # Anything after a complete response (or a HEAD response's would-be body) means the stream is out
            # of step; that connection will not be reused.
            self.keep_alive = False
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the origin switched protocols on a plain request"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the origin sent a malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.body_complete:
            return
        if self._headers_done and self._eof_delimited:
            self._complete()  # HTTP/1.0 style: the close ends the body
            self._wake()
            return
        self._fail(UpstreamError(f"the origin closed the connection mid-response: {exc!r}" if exc else
                                 "the origin closed the connection mid-response"))  # fmt: skip

    # -- internals --------------------------------------------------------------------------------------

    def _complete(self) -> None:
        self.body_complete = True
        self._cancel_timer()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.keep_alive = False
        self._cancel_timer()
        self._conn.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm_timer(self) -> None:
        # Watched by the pool's one timer (`OriginPool._watch`), not a timer per exchange: arming and cancelling
        # a timer for every request cost more than the rest of waiting for the origin's answer.
        if self._timeout is not None and not self._timer and not self.body_complete:
            self._timer = True
            self._conn.pool._watch(self)

    def _cancel_timer(self) -> None:
        if self._timer:
            self._timer = False
            self._conn.pool._watched.discard(self)

    def timed_out(self, now: float) -> bool:
        """Fail the exchange when the origin has sent nothing for the read timeout (the pool's timer asks)."""
        if self.body_complete or self._error is not None:
            self._timer = False
            return True  # nothing left to watch
        assert self._timeout is not None
        if now - self._last_data >= self._timeout:
            self._timer = False
            self._fail(TimeoutError(f"the origin sent nothing for {self._timeout:g} s"))
            return True
        return False

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        self._arm_timer()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_headers(self) -> None:
        if not self.got_bytes:
            self._last_data = self._loop.time()  # the read timeout runs from the end of the request
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    # -- for the caller ---------------------------------------------------------------------------------

    def take_body(self) -> bytes:
        """The whole body, when `body_complete` (else what has arrived so far)."""
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < LOW_WATER and self._conn.transport is not None:
                    self._paused = False
                    self._last_data = self._loop.time()  # the read timeout runs from here, not from the pause
                    self._conn.transport.resume_reading()
                yield chunk
                continue
            if self.body_complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self) -> None:
        """Give the connection back (reusable only after a complete body with keep-alive), else close it."""
        self.parser = None
        conn = self._conn
        if conn._exchange is not self:
            return
        self._cancel_timer()
        conn.finish(self.body_complete and self.keep_alive and self._error is None and not self._chunks)


class OriginPool:
    """Keep-alive connections to one origin (scheme://host:port)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        limit: int = 100,
        connect_timeout: float | None = 5.0,
        read_timeout: float | None = 60.0,
        keepalive: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.limit = limit if limit > 0 else 1 << 30
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self._idle: list[_Connection] = []  # LIFO: the most recently used connection is the warmest
        self._open = 0  # connections open or being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self.connects = 0  # new connections made (for tests and metrics)
        # Exchanges waiting for the origin, checked against the read timeout by one timer every `_tick` seconds:
        # a timeout fires between `read_timeout` and `read_timeout + _tick` after the origin's last byte.
        self._watched: set[UpstreamResponse] = set()
        self._watcher: asyncio.TimerHandle | None = None
        self._tick = min(1.0, read_timeout / 8) if read_timeout else 1.0

    # -- pool bookkeeping -------------------------------------------------------------------------------

    def _watch(self, exchange: UpstreamResponse) -> None:
        self._watched.add(exchange)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().call_later(self._tick, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._watcher = None
        now = asyncio.get_running_loop().time()
        for exchange in list(self._watched):
            if exchange.timed_out(now):
                self._watched.discard(exchange)
        if self._watched:
            self._watcher = asyncio.get_running_loop().call_later(self._tick, self._check_timeouts)

    def _forget(self, conn: _Connection) -> None:
        """A connection closed (by either side): out of the idle list if it was there."""
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self._open -= 1
        self._wake_one()

    def _release(self, conn: _Connection | None) -> None:
        if conn is None or self._closed:
            self._open -= 1
            if conn is not None:
                conn.abort()
        else:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A connection: (conn, reused)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()
                if conn.closed or now - conn.idle_since > self.keepalive:
                    self._open -= 1
                    conn.abort()
                    continue
                return conn, True
            if self._open < self.limit:
                break
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter
        self._open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout,
            )  # fmt: skip
        except TimeoutError:
            raise TimeoutError(f"connecting to {self.host}:{self.port} took over {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self.connects += 1
        return conn

    # -- requests ---------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: StreamReader | None = None,
        data: bytes = b"",
    ) -> UpstreamResponse:
        """Send `method target` with `headers` (Host included, hop-by-hop removed by the caller) and the body
        streamed from `body`, or `data` written with the head (whose Content-Length the caller gives); return once
        the response's status and headers have arrived."""
        if self._closed:
            raise UpstreamError("the origin pool is closed")
        head = _request_head(method, target, headers, chunked=body is not None and "Content-Length" not in headers)
        if data:
            head += data
        head_only = method == "HEAD"
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            response = UpstreamResponse(conn, head_only, self.read_timeout)
            conn.begin(response)
            try:
                assert conn.transport is not None
                conn.transport.write(head)
                if body is not None:
                    await _send_body(conn, body, chunked="Content-Length" not in headers, timeout=self.read_timeout)
                await response.wait_headers()
                return response
            except BaseException as exc:
                response.release()
                retry = (
                    attempt == 0 and reused and body is None and not response.got_bytes
                    and method in IDEMPOTENT and isinstance(exc, UpstreamError)
                )  # fmt: skip
                if not retry:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
        self._open -= len(idle)


def _request_head(method: str, target: str, headers: CIMultiDict[str], *, chunked: bool) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # One pass for line breaks smuggled in a name or value: each line above has exactly one CR and one LF.
    if head.count("\n") != len(lines) or head.count("\r") != len(lines):
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise UpstreamError(f"refusing to send header {name!r}: it contains a line break")
        raise UpstreamError(f"refusing to send {method} {target!r}: the request line contains a line break")
    return head.encode("utf-8", "surrogateescape")


async def _send_body(conn: _Connection, body: StreamReader, *, chunked: bool, timeout: float | None) -> None:
    transport = conn.transport
    assert transport is not None
    chunks = body.iter_any()
    while True:
        try:
            async with asyncio.timeout(timeout):  # a client that stalls mid-body must not pin an origin connection
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ClientBodyError(f"the client sent no body bytes for {timeout:g} s", 408) from None
        except Exception as exc:  # its framing broke (RequestPayloadError) or the client went away (OSError)
            raise ClientBodyError(f"the request body failed: {type(exc).__name__}") from exc
        if not chunk:
            continue
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        await conn.drain()
    if chunked:
        transport.write(b"0\r\n\r\n")
    await conn.drain()


def pool_for_origin(scheme: str, host: str, port: int | None, **options: Any) -> OriginPool:
    tls = scheme == "https"
    return OriginPool(host, port or (443 if tls else 80), tls=tls, **options)
