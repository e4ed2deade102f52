"""Everything edgeproxy takes from aiohttp's private members, in one module that checks them at start-up.

aiohttp's server is used through its public API (`web.Server`, a handler, `web.StreamResponse`) except here.
What this module reaches into, and what is lost without it:

- the hit lane (`HitLaneServer`): fresh cache hits answered as soon as aiohttp's parser hands them over, below
  aiohttp's request machinery. Needs `RequestHandler`'s `_waiter`, `_messages`, `_paused`, `_close`,
  `_force_close`, `_request_count`, `_keepalive*`, `_process_keepalive`, `_loop`, `_manager`, a swapped
  `_parser` (with `feed_data` and `message_consumed`), and `Server.requests_count`. Without it, fresh hits
  take the general path (a task, a request and a response object each: about 30 µs more CPU per hit).
- edgeproxy's own page for what aiohttp's parser refuses (`GatedServer`, an override of
  `RequestHandler.handle_error`, built from `Server._loop` and `Server._kwargs`; it reads
  `request.writer.output_size` and aiohttp's `HttpProcessingError`/`LineTooLong`). Without it, aiohttp's own
  400 page answers those requests.
- `answer_in_http11`: a refusal of an `HTTP/2.0` or `HTTP/0.9` request line written as HTTP/1.1
  (`BaseRequest._version`, `BaseRequest._cache`). Without it, aiohttp answers in the request's version.
- `send_continue`: after `100 Continue` the writer's byte count is reset (`output_size`), so a failure while
  the body is relayed still gets its 5xx page. Without it, such a failure closes the connection instead.
- `header_values_checked()`: whether aiohttp's request parser refuses control characters in header values
  itself (found by feeding it such requests), so the gate can skip that scan. Without it, the gate scans.

`installed()` checks all of this once per process against the installed aiohttp — on real objects: a
`RequestHandler` built on a `web.Server` with a loop of its own, fed real requests — and `data_plane_server`
picks the server accordingly, logging once what is off and why. `EDGEPROXY_AIOHTTP_INTERNALS=off` turns it all
off (the public path only); tests run the hit lane's behaviour both ways. pyproject pins aiohttp to the minor
version this was written against, but aiohttp has changed exactly this code in patch releases: the check is
what keeps a new patch release from breaking the proxy rather than the pin.

Two values still come from aiohttp's internal modules when they are there, with standard-library fallbacks, as
they change no behaviour: the Server header's text and the once-a-second formatted Date (`prebuilt.py`).

The hit lane, in more detail:

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
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import aiohttp
from aiohttp import HttpVersion11, web

from edgeproxy.http.errors import error_response

# aiohttp's internal modules. Should a release move one of these, everything that needs it stays off (the check
# reports the import) instead of the proxy failing to start.
try:
    from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
    from aiohttp.http_parser import RawRequestMessage
    from aiohttp.http_writer import StreamWriter
    from aiohttp.streams import EMPTY_PAYLOAD

    ParsedRequest: TypeAlias = RawRequestMessage  # a request as aiohttp's parser hands it over
    _IMPORT_PROBLEM: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the aiohttp release
    _IMPORT_PROBLEM = f"cannot import {exc.name or exc} ({exc})"
try:
    from aiohttp.helpers import rfc822_formatted_time as _aiohttp_date
except ImportError:  # pragma: no cover - depends on the aiohttp release
    _aiohttp_date = None  # type: ignore[assignment]

log = logging.getLogger("edgeproxy.proxy")

SWITCH = "EDGEPROXY_AIOHTTP_INTERNALS"  # `off` (or 0, false, no): aiohttp's public path only
_OFF = frozenset({"off", "0", "false", "no"})

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# (the parsed request, the peer's IP address, "http" or "https") -> the whole response, or None
LaneAnswer = Callable[["ParsedRequest", str | None, str], Sequence[bytes] | None]


# -- the values prebuilt responses take from aiohttp -----------------------------------------------------------


def _server_software() -> str:
    try:
        from aiohttp.http import SERVER_SOFTWARE

        return SERVER_SOFTWARE
    except ImportError:  # pragma: no cover - depends on the aiohttp release
        return f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp.__version__}"


SERVER_SOFTWARE = _server_software()  # the Server header aiohttp's responses carry


def http_date() -> str:
    """Now as an HTTP date (RFC 9110 §5.6.7), as aiohttp's responses carry it (aiohttp formats it once a second)."""
    if _aiohttp_date is not None:
        return _aiohttp_date()
    return email.utils.formatdate(usegmt=True)  # pragma: no cover - depends on the aiohttp release


# -- the start-up check ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Internals:
    """What of aiohttp's internals this process may use: each field is None when usable, else why not."""

    aiohttp_version: str
    gate: str | None  # GatedServer: edgeproxy's page for what aiohttp's parser refuses
    lane: str | None  # HitLaneServer (builds on the gate's override)
    http11: str | None  # answer_in_http11
    interim: str | None  # send_continue's reset of the writer's count
    values_checked: bool  # aiohttp's parser refuses control characters in header values (the gate may skip it)
    switched_off: bool = False  # by EDGEPROXY_AIOHTTP_INTERNALS: all of the above off on purpose

    def lost(self, *, lane: bool) -> str | None:
        """What this process goes without, and why, in one line (None: nothing). `lane`: a hit lane was asked for."""
        losses = [(what, why) for what, why in (
            ("hit lane off, fresh cache hits take the general path", self.lane if lane else None),
            ("requests aiohttp's parser refuses get aiohttp's own 400 page", self.gate),
            ("refusals of HTTP/0.9 and HTTP/2.0 request lines are answered in that version", self.http11),
            ("a failure after `100 Continue` closes the connection without a 5xx page", self.interim),
        ) if why is not None]  # fmt: skip
        if not losses:
            return None
        if len({why for _, why in losses}) == 1:
            return f"aiohttp {self.aiohttp_version} ({losses[0][1]}): " + "; ".join(what for what, _ in losses)
        return f"aiohttp {self.aiohttp_version}: " + "; ".join(f"{what} ({why})" for what, why in losses)


class _Missing(Exception):
    """A private member of aiohttp that is absent or not of the kind this module uses."""


_ABSENT = object()


def _member(obj: object, name: str, kind: type | tuple[type, ...] | None = None) -> Any:
    value = getattr(obj, name, _ABSENT)
    where = f"{type(obj).__name__}.{name}"
    if value is _ABSENT:
        raise _Missing(f"{where} is missing")
    if kind is not None and not isinstance(value, kind):
        raise _Missing(f"{where} is a {type(value).__name__}, not a {kind}")
    return value


def _method(obj: object, name: str) -> Any:
    value = _member(obj, name)
    if not callable(value):
        raise _Missing(f"{type(obj).__name__}.{name} is not callable")
    return value


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise _Missing(what)


async def _never_called(request: web.BaseRequest) -> web.StreamResponse:  # pragma: no cover - probe handler
    raise AssertionError("the probe's server serves no request")


def _problem(check: Callable[[], object]) -> str | None:
    try:
        check()
    except _Missing as missing:
        return str(missing)
    except Exception as exc:  # a changed signature or behaviour: the same verdict, with aiohttp's own words
        return f"{type(exc).__name__}: {exc}"
    return None


def probe(
    *,
    switch: str | None = None,
    server_class: type[web.Server] = web.Server,
    handler_class: type[web.RequestHandler] = web.RequestHandler,
) -> Internals:
    """Check every private member this module uses on real aiohttp objects. `switch`: the value of
    EDGEPROXY_AIOHTTP_INTERNALS. `server_class`, `handler_class`: what is checked (tests pass ones that lack
    a member)."""
    version = aiohttp.__version__
    if switch is not None and switch.strip().lower() in _OFF:
        off = f"turned off by {SWITCH}={switch}"
        return Internals(version, off, off, off, off, values_checked=False, switched_off=True)
    if _IMPORT_PROBLEM is not None:  # pragma: no cover - depends on the aiohttp release
        return Internals(version, _IMPORT_PROBLEM, _IMPORT_PROBLEM, _IMPORT_PROBLEM, _IMPORT_PROBLEM, False)
    loop = asyncio.new_event_loop()  # never run: the objects only need one to hold
    try:
        server = server_class(_never_called, loop=loop, keepalive_timeout=75.0)

        def protocol() -> web.RequestHandler:  # as GatedServer.__call__ builds one
            _need(_member(server, "_loop") is loop, f"{type(server).__name__}._loop is not the server's loop")
            kwargs = _member(server, "_kwargs", dict)
            _need(kwargs.get("keepalive_timeout") == 75.0, f"{type(server).__name__}._kwargs lacks the settings")
            return handler_class(server, loop=loop, **kwargs)

        def plain() -> web.RequestHandler:  # as aiohttp's own server builds one
            return handler_class(server, loop=loop)

        gate = _problem(lambda: _check_gate(protocol(), loop))
        lane = gate or _problem(lambda: _check_lane(protocol(), server, loop))
        http11 = _problem(lambda: _check_http11(plain(), loop))
        interim = _problem(lambda: _check_interim(plain(), loop))
        values_checked = _problem(lambda: _check_header_values(plain)) is None
    finally:
        loop.close()
    return Internals(version, gate, lane, http11, interim, values_checked)


def _check_gate(protocol: web.RequestHandler, loop: asyncio.AbstractEventLoop) -> None:
    name = type(protocol).__name__
    parameters = list(inspect.signature(type(protocol).handle_error).parameters)
    _need(parameters == ["self", "request", "status", "exc", "message"],
          f"{name}.handle_error takes {parameters[1:]}, not (request, status, exc, message)")  # fmt: skip
    _need(getattr(protocol, "transport", _ABSENT) is None, f"{name}.transport is missing")
    _member(StreamWriter(protocol, loop), "output_size", int)


def _check_lane(protocol: web.RequestHandler, server: web.Server, loop: asyncio.AbstractEventLoop) -> None:
    expected: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("_waiter", type(None)), ("_messages", deque), ("_force_close", bool), ("_close", bool),
        ("_paused", bool), ("_request_count", int), ("_keepalive", bool), ("_keepalive_timeout", (int, float)),
        ("_next_keepalive_close_time", (int, float)), ("_keepalive_handle", type(None)),
    )  # fmt: skip
    for name, kind in expected:
        _member(protocol, name, kind)
    name = type(protocol).__name__
    _need(_member(protocol, "_loop") is loop, f"{name}._loop is not the server's loop")
    _need(_member(protocol, "_manager") is server, f"{name}._manager is not its server")
    _method(protocol, "_process_keepalive")
    _member(server, "requests_count", int)
    parser = _member(protocol, "_parser")
    feed, consumed = _method(parser, "feed_data"), _method(parser, "message_consumed")
    protocol._parser = parser  # the lane swaps it: it must be assignable
    messages, upgraded, tail = feed(b"GET /probe?q=1 HTTP/1.1\r\nHost: probe\r\n\r\n")
    _need(len(messages) == 1 and upgraded is False and tail == b"", "the parser's feed_data returns otherwise")
    message, payload = messages[0]
    _need(payload is EMPTY_PAYLOAD, "a GET without a body has no EMPTY_PAYLOAD")
    seen = (message.method, message.path, message.version, message.should_close, message.upgrade,
            message.headers.get("Host"), tuple(message.raw_headers), message.url.path)  # fmt: skip
    _need(seen == ("GET", "/probe?q=1", HttpVersion11, False, False, "probe", ((b"Host", b"probe"),), "/probe"),
          f"the parsed request reads {seen}")  # fmt: skip
    consumed()
    _need(not feed(b"")[0], "the parser hands out a message from nothing")


def _parsed(protocol: web.RequestHandler, data: bytes) -> ParsedRequest:
    messages, _, _ = _member(protocol, "_parser").feed_data(data)
    return cast(ParsedRequest, messages[0][0])


def _check_http11(protocol: web.RequestHandler, loop: asyncio.AbstractEventLoop) -> None:
    message = _parsed(protocol, b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
    request = web.BaseRequest(message, EMPTY_PAYLOAD, protocol, StreamWriter(protocol, loop), cast(Any, None), loop)
    _need(request.version == (1, 0), "BaseRequest.version does not read the request line")
    _member(request, "_version")
    _member(request, "_cache", dict)
    _set_version_11(request)
    _need(request.version == HttpVersion11, "BaseRequest.version is not read from _version or _cache")


def _check_interim(protocol: web.RequestHandler, loop: asyncio.AbstractEventLoop) -> None:
    message = _parsed(protocol, b"POST / HTTP/1.1\r\nHost: probe\r\nContent-Length: 0\r\n\r\n")
    writer = StreamWriter(protocol, loop)
    request = web.BaseRequest(message, EMPTY_PAYLOAD, protocol, writer, cast(Any, None), loop)
    _need(request.writer is writer, "BaseRequest.writer is not the request's writer")
    _member(writer, "output_size", int)


# Not allowed in a field value (RFC 9110 §5.5): controls but HTAB, and DEL — at the start, inside and at the end.
def _bad_values() -> Iterator[bytes]:
    for octet in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F):
        bad = bytes([octet])
        yield from (bad + b"v", b"v" + bad + b"v", b"v" + bad)


def _check_header_values(protocol: Callable[[], web.RequestHandler]) -> None:
    for value in _bad_values():
        parser = _member(protocol(), "_parser")
        try:
            parser.feed_data(b"GET / HTTP/1.1\r\nHost: probe\r\nX-Probe: " + value + b"\r\n\r\n")
        except HttpProcessingError:
            continue
        raise _Missing(f"the request parser accepts {value!r} in a header value")


@functools.cache
def installed() -> Internals:
    """The check against the installed aiohttp, with EDGEPROXY_AIOHTTP_INTERNALS read once: made on first use
    (building the server), then the same for the life of the process."""
    return probe(switch=os.environ.get(SWITCH))


def internals_supported() -> str | None:
    """None when every private member this module uses is as expected; else the first reason why not."""
    found = installed()
    return found.lane or found.http11 or found.interim


def header_values_checked() -> bool:
    """Whether aiohttp's request parser refuses control characters in header values itself (llhttp in strict
    mode does, and so does aiohttp's pure-Python parser as of 3.14), so the gate need not scan every value."""
    return installed().values_checked


# Messages already logged by this process: a fallback is said once, not once per server built.
_SAID: set[str] = set()


def data_plane_server(
    handler: Handler, lane_answer: LaneAnswer | None, *, internals: Internals | None = None, **kwargs: Any
) -> web.Server:
    """aiohttp's low-level server for `handler`: with the hit lane offering each parsed request to `lane_answer`
    first (when given), with edgeproxy's page for requests aiohttp's parser refuses, or — when the installed
    aiohttp's internals are not what this module expects, or EDGEPROXY_AIOHTTP_INTERNALS=off — plain
    `web.Server`. `kwargs`: aiohttp's server settings. `internals`: the check to go by (default `installed()`).
    What is off is logged once per process."""
    found = internals or installed()
    message = found.lost(lane=lane_answer is not None)
    if message is not None and message not in _SAID:
        _SAID.add(message)
        log.log(logging.INFO if found.switched_off else logging.WARNING, "%s", message)
    if lane_answer is not None and found.lane is None:
        return HitLaneServer(handler, lane_answer, **kwargs)
    if found.gate is None:
        return GatedServer(handler, **kwargs)
    return web.Server(handler, **kwargs)


# -- the pieces: status line version, interim response, parser refusals ------------------------------------------


def _set_version_11(request: web.BaseRequest) -> None:
    request._version = HttpVersion11
    request._cache["version"] = HttpVersion11  # `version` is reified: its cached value too


def answer_in_http11(request: web.BaseRequest) -> None:
    """Make aiohttp write the response's status line as HTTP/1.1 whatever version the request line claimed
    (aiohttp answers in the request's version; this server speaks HTTP/1.1, RFC 9110 §6.2). Does nothing when
    the check found the members it sets otherwise."""
    if installed().http11 is None:
        _set_version_11(request)


async def send_continue(request: web.BaseRequest) -> None:
    """`100 Continue` (RFC 9110 §10.1.1) before the body is read, as aiohttp's router sends it. The writer then
    counts no response bytes yet (when the check allows), so a failure while the body is relayed still gets
    its error page."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if installed().interim is None:
        request.writer.output_size = 0


def parser_rejection(exc: BaseException) -> tuple[int, str] | None:
    """(status, aiohttp's message) when `exc` is aiohttp's parser refusing a request; None for anything else
    (and when the check could not import aiohttp's exception)."""
    if _IMPORT_PROBLEM is None and isinstance(exc, HttpProcessingError):
        return exc.code, str(exc.message)
    return None


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


# -- the servers -------------------------------------------------------------------------------------------------


class GatedServer(web.Server):
    """aiohttp's low-level server whose connections answer what aiohttp's parser rejects (before any handler,
    so before the request gate) with edgeproxy's own short page and status, never echoing the input.
    Build it with `data_plane_server`, which checks first."""

    def __call__(self) -> web.RequestHandler:
        return _GatedProtocol(self, loop=self._loop, **self._kwargs)


class _GatedProtocol(web.RequestHandler):
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
    """aiohttp's low-level server, whose connections offer each parsed request to `answer` first.
    Build it with `data_plane_server`, which checks first."""

    def __init__(self, handler: Handler, answer: LaneAnswer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.answer = answer
        self.answered = 0  # requests the lane answered, for tests and ops

    def __call__(self) -> web.RequestHandler:
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

    def feed_data(self, data: bytes) -> tuple[Sequence[tuple[ParsedRequest, Any]], bool, bytes]:
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
