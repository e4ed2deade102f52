"""A response whose bytes are already built, written to the client with one vectored write.

Cache hits are the proxy's hottest path, and most of their cost was aiohttp assembling the same response again
for every visitor: copying the header multidict, working out framing, serialising the status line and headers,
then writing headers and body. A stored entry's status line and headers are the same for every hit except a few
per-visitor lines (cookies, Age, X-Cache), so caching.py builds the constant part once per entry and hands the
parts to `PrebuiltResponse`, which aiohttp's server drives like any other response (prepare, write_eof, access
log, keep-alive) but which only writes.

Used for plain HTTP/1.1 keep-alive GETs only; anything else (HEAD, HTTP/1.0, conditional requests, debug
headers) goes through `web.Response`, where aiohttp handles the framing rules.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter


class PrebuiltResponse(web.StreamResponse):
    """`parts`: the status line and header block (ending with the blank line), then the body. `headers` holds
    only what the proxy's own bookkeeping reads back (X-Cache), not what is sent: that is in `parts`."""

    def __init__(self, status: int, reason: str, parts: Sequence[bytes], body_length: int, x_cache: str) -> None:
        super().__init__(status=status, reason=reason, headers={"X-Cache": x_cache})
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
