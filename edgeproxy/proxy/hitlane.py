"""The hit lane: requests answered whole as soon as they are parsed, below aiohttp's request machinery.

A fresh cache hit is a few dictionary lookups and one write, yet aiohttp serves every request through the
same steps: a task per request, a request object, a response object, and three turns of the event loop
between them (measured with wrk on one core: 30 µs a request for a handler returning fixed bytes, 20 µs when
the same bytes are written from the parser's callback). aiohttp's server protocol stays in charge of
everything; the lane sits between its parser and its request queue (`_LaneParser.feed_data`).

    bytes -> aiohttp's parser -> messages -> lane: answered now?  yes -> one write to the transport
                                                               no  -> aiohttp's queue, the handler, as ever

`answer(message, peer, scheme)` returns the response's bytes or None; it must not have done anything
observable when it returns None (the request is then handled from the start by the general path). A message
goes to the lane only when nothing can come before it or be disturbed by answering it on the spot:
- the connection is idle: no request in progress or queued (so responses stay in request order), the
  transport is writable (no backed-up client: that one waits for the general path's drain);
- a GET over HTTP/1.1 that keeps the connection, with no body, no upgrade and no `Expect`.
Everything aiohttp keeps per request for its own bookkeeping (request counts, keep-alive timer, the
parser's in-flight count) is kept for a lane answer too.

This reaches into aiohttp's server protocol (`RequestHandler`); pyproject pins aiohttp to the minor version
whose internals it was written against, and tests/test_hitlane.py drives it through real sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("edgeproxy.proxy")

# (the parsed request, the peer's IP address, "http" or "https") -> the whole response, or None
LaneAnswer = Callable[[RawRequestMessage, str | None, str], Sequence[bytes] | None]


class HitLaneServer(web.Server):
    """aiohttp's low-level server, whose connections offer each parsed request to `answer` first."""

    def __init__(self, handler: Any, answer: LaneAnswer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.answer = answer
        self.answered = 0  # requests the lane answered, for tests and ops

    def __call__(self) -> RequestHandler:
        return _LaneProtocol(self, loop=self._loop, **self._kwargs)


class _LaneProtocol(RequestHandler):
    __slots__ = ("_lane_peer", "_lane_scheme", "_lane_server")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        assert isinstance(server, HitLaneServer)
        self._lane_server = server
        peer = transport.get_extra_info("peername")
        self._lane_peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._lane_scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        self._parser = _LaneParser(self._parser, self)  # type: ignore[assignment]

    def lane_open(self) -> bool:
        """Whether a request parsed now would be the next one answered, on a writable connection."""
        waiter = self._waiter
        return (
            waiter is not None  # start() is waiting for a request: none in progress
            and not waiter.done()
            and not self._messages
            and not self._force_close
            and not self._close
            and not self._paused  # the client is reading what it was sent
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def lane_answered(self, parts: Sequence[bytes]) -> None:
        """What aiohttp's start() loop does around a response it sent, for one the lane sent."""
        transport = self.transport
        assert transport is not None
        transport.writelines(parts)
        self._request_count += 1
        self._lane_server.requests_count += 1
        self._lane_server.answered += 1
        self._keepalive = True
        if self._keepalive_timeout > 0:
            loop = self._loop
            self._next_keepalive_close_time = loop.time() + self._keepalive_timeout
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(self._next_keepalive_close_time, self._process_keepalive)


class _LaneParser:
    """aiohttp's request parser, with the lane between it and the protocol's queue."""

    __slots__ = ("_parser", "_protocol")

    def __init__(self, parser: Any, protocol: _LaneProtocol) -> None:
        self._parser = parser
        self._protocol = protocol

    def feed_data(self, data: bytes) -> tuple[Sequence[tuple[RawRequestMessage, Any]], bool, bytes]:
        messages, upgraded, tail = self._parser.feed_data(data)
        protocol = self._protocol
        answer = protocol._lane_server.answer
        while messages:
            answered = 0
            for message, payload in messages:
                if not (
                    payload is EMPTY_PAYLOAD
                    and message.method == "GET"
                    and message.version == HttpVersion11
                    and not message.should_close
                    and not message.upgrade
                    and "Expect" not in message.headers
                    and protocol.lane_open()
                ):
                    break
                try:
                    parts = answer(message, protocol._lane_peer, protocol._lane_scheme)
                except Exception:  # a bug here must cost the lane, not the connection: the general path answers
                    log.exception("hit lane failed on %s %s; the general path answers", message.method, message.path)
                    parts = None
                if parts is None:
                    break
                self._parser.message_consumed()  # the parser counts the messages it handed out
                protocol.lane_answered(parts)
                answered += 1
            if answered < len(messages):  # this one and the rest, in order, to aiohttp's queue
                return messages[answered:], upgraded, tail
            # All answered. The parser hands out a bounded number of messages at a time and keeps the rest of a
            # pipelined burst buffered until the queue drains (aiohttp then feeds it b""): do that here.
            messages, upgraded, tail = self._parser.feed_data(b"")
        return messages, upgraded, tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)
