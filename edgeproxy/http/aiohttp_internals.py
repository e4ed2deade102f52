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
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from edgeproxy.http.errors import error_response

log = logging.getLogger("edgeproxy.proxy")


def answer_in_http11(request: web.BaseRequest) -> None:
    """Make aiohttp write the response's status line as HTTP/1.1 whatever version the request line claimed
    (aiohttp answers in the request's version; this server speaks HTTP/1.1, RFC 9110 §6.2). `version` is a
    reified property, so its cached value is replaced too: aiohttp internals, kept in this one module."""
    request._version = HttpVersion11
    request._cache["version"] = HttpVersion11

# (the parsed request, the peer's IP address, "http" or "https") -> the whole response, or None
LaneAnswer = Callable[[RawRequestMessage, str | None, str], Sequence[bytes] | None]


class GatedServer(web.Server):
    """aiohttp's low-level server whose connections answer what aiohttp's parser rejects (before any handler,
    so before the request gate) with edgeproxy's own short page and status, never echoing the input."""

    def __call__(self) -> RequestHandler:
        return _GatedProtocol(self, loop=self._loop, **self._kwargs)


def parse_refusal(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp's parser rejected; nothing of the input is repeated."""
    if isinstance(exc, LineTooLong):
        # The request line's overflow carries the buffered target (a bytearray), a header's the bytes.
        frames = exc.__traceback__
        while frames is not None and frames.tb_next is not None:
            frames = frames.tb_next
        in_url = isinstance(exc.args[0] if exc.args else None, bytearray) or (
            frames is not None and "on_url" in frames.tb_frame.f_code.co_name
        )
        if in_url:
            return 414, "uri_too_long", "The request target is too long."
        return 431, "headers_too_large", "The request header fields are too large."
    if isinstance(exc, HttpProcessingError) and "too many headers" in str(exc.message).lower():
        return 431, "headers_too_large", "The request has too many header fields."
    return 400, "bad_request", "The request is not valid HTTP/1.1."


class _GatedProtocol(RequestHandler):
    __slots__ = ()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        if not isinstance(exc, HttpProcessingError) or status != 400:
            return super().handle_error(request, status, exc, message)
        # A request aiohttp's parser refused: one log line, our page, the connection closed.
        status, code, text = parse_refusal(exc)
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("refused malformed request from %s: %d %s", peer[0] if isinstance(peer, tuple) else None,
                 status, code)  # fmt: skip
        if request.writer.output_size > 0:
            raise ConnectionError("a response is under way: the connection is closed instead")
        response = error_response(status, code, text, None)
        response.force_close()
        return response


class HitLaneServer(GatedServer):
    """aiohttp's low-level server, whose connections offer each parsed request to `answer` first."""

    def __init__(self, handler: Any, answer: LaneAnswer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.answer = answer
        self.answered = 0  # requests the lane answered, for tests and ops

    def __call__(self) -> RequestHandler:
        return _LaneProtocol(self, loop=self._loop, **self._kwargs)


class _LaneProtocol(_GatedProtocol):
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
