"""Prebuilt responses (edgeproxy/http/prebuilt.py) send the bytes aiohttp's own response path would send.

A low-level aiohttp server answers each request twice over — once with `web.Response`, once with
`whole_response` for the same status, headers and body — and the raw bytes on the wire are compared (Date aside).
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from multidict import CIMultiDict
from support.raw_http import raw_exchange

from edgeproxy.http.prebuilt import whole_response

CASES = [
    (200, "OK", [("Content-Type", "text/html; charset=utf-8"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b"<p>x"),
    (200, "OK", [("ETag", '"v1"')], b"no content type given"),  # aiohttp adds application/octet-stream
    (404, "Not Found", [("Content-Type", "text/plain"), ("Server", "origin/1.0"), ("X-Cache", "MISS")], b"gone\n"),
    (200, "OK", [("Content-Type", "application/json"), ("Content-Length", "999")], b"{}"),  # ours wins
    (201, "Made", [("X-Unicode", "caf\u00e9")], b"\x00\x01"),
]


def wire(port: int, n: int) -> tuple[str, dict[str, list[str]], bytes]:
    """One response to `GET /n`, headers without Date (it changes every second)."""
    ((status, headers, body),) = raw_exchange(port, f"GET /{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), 1)
    headers.pop("date")
    return status, headers, body


@pytest.mark.parametrize("n", range(len(CASES)))
def test_whole_response_matches_aiohttp(n: int) -> None:
    async def main() -> tuple[object, object]:
        async def general(request: web.BaseRequest) -> web.StreamResponse:
            status, reason, headers, body = CASES[int(request.path[1:])]
            clean = CIMultiDict(headers)
            clean.popall("Content-Length", None)  # what relay does before web.Response
            return web.Response(status=status, reason=reason, headers=clean, body=body)

        async def prebuilt(request: web.BaseRequest) -> web.StreamResponse:
            status, reason, headers, body = CASES[int(request.path[1:])]
            return whole_response(status, reason, CIMultiDict(headers), body)

        answers = []
        for handler in (general, prebuilt):
            server = RawTestServer(handler, host="127.0.0.1")
            await server.start_server()
            try:
                answers.append(await asyncio.get_running_loop().run_in_executor(None, wire, server.port, n))
            finally:
                await server.close()
        return answers[0], answers[1]

    general, prebuilt = asyncio.run(main())
    assert prebuilt == general
