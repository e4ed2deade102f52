"""The floor for a Python HTTP/1.1 proxy: uvloop + httptools and nothing else, the yardstick benchmarks/proxy.py
holds edgeproxy's machinery against (what Python itself costs per request on this machine).

    python benchmarks/floor_proxy.py proxy --origin 127.0.0.1:8000 --listen 127.0.0.1:8081
    python benchmarks/floor_proxy.py hit --origin 127.0.0.1:8000 --listen 127.0.0.1:8082 --path /cached/page

proxy: one keep-alive origin connection per client connection, request headers copied but Host and Connection,
the response re-framed with Content-Length. hit: GETs --path from the origin once at start-up and answers every
request with that page, prebuilt (what a cache hit costs with no lookup). No personalization, no safety, GET only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
from collections import deque
from http import HTTPStatus
from typing import cast

import httptools
import uvloop

DROPPED_REQUEST = frozenset({b"host", b"connection", b"keep-alive"})
DROPPED_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


class OriginConnection(asyncio.Protocol):
    """One keep-alive connection to the origin; `exchange` sends a request and waits for the whole response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport, not an asyncio subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("the origin closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))

    async def exchange(self, request: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


class ClientConnection(asyncio.Protocol):
    """One visitor connection; requests are answered in order (a queue drained by one task at a time)."""

    def __init__(self, mode: str, origin: tuple[str, int], hit: bytes) -> None:
        self.mode, self.origin, self.hit = mode, origin, hit
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: OriginConnection | None = None
        self.pending: deque[bytes] = deque()
        self.draining = False
        self.url = b""
        self.head: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport, not an asyncio subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.head = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in DROPPED_REQUEST:
            self.head.append(name + b": " + value + b"\r\n")

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.mode == "hit":
            self.transport.write(self.hit)
            return
        host = b"%s:%d" % (self.origin[0].encode(), self.origin[1])
        self.pending.append(
            b"GET " + self.url + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + b"".join(self.head) + b"\r\n"
        )
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self.forward_pending())

    async def forward_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            request = self.pending.popleft()
            try:
                status, headers, body = await self.exchange(loop, request)
            except OSError:  # the origin is gone: so is this visitor's connection
                if self.transport is not None:
                    self.transport.close()
                return
            lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
            lines += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in DROPPED_RESPONSE]
            lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(lines) + body)
        self.draining = False

    async def exchange(
        self, loop: asyncio.AbstractEventLoop, request: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self.upstream is not None and self.upstream.transport is not None:
            try:
                return await self.upstream.exchange(request)
            except ConnectionError:
                pass  # an idle keep-alive connection the origin closed: one retry on a new one
        _, self.upstream = await loop.create_connection(OriginConnection, *self.origin)
        return await self.upstream.exchange(request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


def prebuilt_page(origin: tuple[str, int], path: str) -> bytes:
    """The origin's answer to GET `path`, as the bytes of a complete response that the hit mode writes as is."""
    connection = http.client.HTTPConnection(*origin, timeout=10)
    connection.request("GET", path)
    reply = connection.getresponse()
    body = reply.read()
    connection.close()
    head = [f"HTTP/1.1 {reply.status} {reply.reason}\r\n".encode()]
    head += [
        f"{name}: {value}\r\n".encode()
        for name, value in reply.getheaders()
        if name.lower().encode() not in DROPPED_RESPONSE
    ]
    head.append(b"X-Cache: HIT\r\nContent-Length: %d\r\n\r\n" % len(body))
    return b"".join(head) + body


async def serve(mode: str, listen: tuple[str, int], origin: tuple[str, int], hit: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientConnection(mode, origin, hit), *listen, backlog=1024)
    await server.serve_forever()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("proxy", "hit"))
    parser.add_argument("--origin", type=address, required=True, help="HOST:PORT of the origin")
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT to listen on")
    parser.add_argument("--path", default="/", help="hit mode: the page fetched once and served (default /)")
    args = parser.parse_args()
    hit = prebuilt_page(args.origin, args.path) if args.mode == "hit" else b""
    uvloop.run(serve(args.mode, args.listen, args.origin, hit))


if __name__ == "__main__":
    main()
