"""A response whose bytes are already built, written to the client with one vectored write.

Cache hits are the proxy's hottest path, and most of their cost was aiohttp assembling the same response again
for every visitor: copying the header multidict, working out framing, serialising the status line and headers,
then writing headers and body. A stored entry's status line and headers are the same for every hit except a few
per-visitor lines (cookies, Age, X-Cache), so caching.py builds the constant part once per entry and hands the
parts to `PrebuiltResponse`, which aiohttp's server drives like any other response (prepare, write_eof, access
log, keep-alive) but which only writes.

The same goes for an origin response whose whole body arrived with its headers (most pages): `whole_response`
serialises its headers the way aiohttp would and writes them and the body at once.

Used for HTTP/1.1 keep-alive requests with a body to send only (`prebuilt_allowed`); anything else (HEAD,
HTTP/1.0, 1xx/204/304, conditional cache hits, debug headers) goes through `web.Response`, where aiohttp
handles the framing rules. `head_lines` follows what aiohttp's `StreamResponse._prepare_headers` adds to such a
response (Content-Type default, Date, Server, Content-Length), and tests hold the two paths to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from edgeproxy.http.aiohttp_internals import SERVER_SOFTWARE, http_date


class RequestLine(Protocol):
    """What `prebuilt_allowed` reads of a request (aiohttp's, or the data plane's wire.WireRequest)."""

    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def keep_alive(self) -> bool: ...
    @property
    def method(self) -> str: ...


def prebuilt_allowed(request: RequestLine) -> bool:
    """A request whose response may be prebuilt: HTTP/1.1, keep-alive, and one that gets a body."""
    return request.version == HttpVersion11 and request.keep_alive and request.method != "HEAD"


def head_lines(
    status: int, reason: str, headers: Iterable[tuple[str, str]], body_length: int, *, names: set[str]
) -> list[str]:
    """Status line and headers (no blank line yet), as aiohttp's response path would send them. `names`: the
    lower-case names in `headers`. Date is left to the caller (it changes every second)."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if body_length and "content-type" not in names:
        lines.append("Content-Type: application/octet-stream\r\n")  # RFC 9110 §8.3, as aiohttp does
    if "server" not in names:
        lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
    lines.append(f"Content-Length: {body_length}\r\n")
    return lines


def date_line() -> str:
    return f"Date: {http_date()}\r\n"


_date_bytes: list[Any] = ["", b""]  # the last http_date() and its Date line's bytes


def date_line_bytes() -> bytes:
    """`date_line()` encoded, once per second (http_date changes once a second)."""
    date = http_date()
    if date != _date_bytes[0]:
        _date_bytes[:] = [date, f"Date: {date}\r\n".encode()]
    line: bytes = _date_bytes[1]
    return line


def whole_response(status: int, reason: str, headers: CIMultiDict[str], body: bytes) -> PrebuiltResponse:
    """A response with all of its body at hand, for a `prebuilt_allowed` request (Content-Length is ours)."""
    names = {name.lower() for name in headers}
    names.discard("content-length")
    lines = head_lines(status, reason, [(k, v) for k, v in headers.items() if k.lower() != "content-length"],
                       len(body), names=names)  # fmt: skip
    if "date" not in names:
        lines.append(date_line())
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8", "surrogateescape")
    return PrebuiltResponse(status, reason, (head, body), len(body), headers.get("X-Cache"))


class PrebuiltResponse(web.StreamResponse):
    """`parts`: the status line and header block (ending with the blank line), then the body. `headers` holds
    only what the proxy's own bookkeeping reads back (X-Cache), not what is sent: that is in `parts`."""

    def __init__(self, status: int, reason: str, parts: Sequence[bytes], body_length: int, x_cache: str | None) -> None:
        super().__init__(status=status, reason=reason, headers={"X-Cache": x_cache} if x_cache else None)
        self._parts = parts
        self._sent_length = body_length
        self._written = False

    @property
    def prepared(self) -> bool:
        return self._written

    @property
    def keep_alive(self) -> bool:
        return True  # only HTTP/1.1 keep-alive requests get one (see caching.serve_entry)

    @property
    def body_length(self) -> int:
        return self._sent_length

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._written:
            return None
        self._written = True
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away before its response")
        transport.writelines(self._parts)
        await request.writer.drain()  # a slow client: wait while the transport's buffer is over its high mark
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None  # written whole by prepare
