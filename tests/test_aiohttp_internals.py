"""aiohttp's private members, contained (edgeproxy/http/aiohttp_internals.py): checked at start-up, with the public
path when they are not what the module expects or when EDGEPROXY_AIOHTTP_INTERNALS=off.

The check is run on aiohttp classes made to lack one member each, as a later aiohttp release might; the proxy
then serves with what is left and says so once. The hit lane's behaviour is run both ways, with the internals
and with the switch off, against the Node example origin, and the same responses must come back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from support.processes import node_origin
from support.proxy_server import ProxyTestServer, proxy_server
from support.raw_http import Exchange, raw_exchange

from edgeproxy.http import aiohttp_internals
from edgeproxy.http.aiohttp_internals import (
    SWITCH,
    GatedServer,
    HitLaneServer,
    answer_in_http11,
    data_plane_server,
    header_values_checked,
    installed,
    probe,
    send_continue,
)
from edgeproxy.http.dataplane import SWITCH as DATA_PLANE_SWITCH
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.serve import make_state

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ("_waiter", "_messages", "_paused", "_keepalive_handle", "_request_count", "_close", "_force_close")


@contextmanager
def internals_switched_off(off: bool) -> Iterator[None]:
    """The process as started with (or without) EDGEPROXY_AIOHTTP_INTERNALS=off."""
    with pytest.MonkeyPatch.context() as patch:
        if off:
            patch.setenv(SWITCH, "off")
        else:
            patch.delenv(SWITCH, raising=False)
        installed.cache_clear()
        try:
            yield
        finally:
            installed.cache_clear()


def lacking(name: str) -> type[web.RequestHandler]:
    """aiohttp's server protocol as a release without `name` would build it."""

    class Lacking(web.RequestHandler):
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            delattr(self, name)

    return Lacking


async def no_handler(request: web.BaseRequest) -> web.StreamResponse:
    raise AssertionError("not called")


def no_answer(message: Any, peer: str | None, scheme: str) -> None:
    return None


# -- the check ---------------------------------------------------------------------------------------------------


def test_the_installed_aiohttp_has_every_private_member_edgeproxy_uses() -> None:
    found = probe()
    assert (found.gate, found.lane, found.http11, found.interim) == (None, None, None, None)
    assert found.values_checked, "aiohttp's request parser refuses control characters in header values"


@pytest.mark.parametrize("name", MEMBERS)
def test_a_missing_member_of_the_server_protocol_turns_the_hit_lane_off(name: str) -> None:
    found = probe(handler_class=lacking(name))
    assert found.lane is not None and f"{name} is missing" in found.lane
    assert found.gate is None, "edgeproxy's page for parser refusals needs none of the lane's members"


def test_without_the_lanes_members_the_factory_serves_the_gated_server_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = probe(handler_class=lacking("_waiter"))

    async def build() -> list[web.Server]:
        return [data_plane_server(no_handler, no_answer, internals=found) for _ in range(3)]

    with caplog.at_level(logging.INFO, logger="edgeproxy.proxy"):
        servers = asyncio.run(build())
    assert all(type(server) is GatedServer for server in servers)
    said = [record for record in caplog.records if "_waiter" in record.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert said[0].getMessage() == (
        f"aiohttp {found.aiohttp_version} (Lacking._waiter is missing): hit lane off, fresh cache hits take the "
        "general path"
    )


def test_a_server_without_its_settings_falls_back_to_aiohttps_own_server(caplog: pytest.LogCaptureFixture) -> None:
    class Unsettled(web.Server):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self._kwargs

    found = probe(server_class=Unsettled)
    assert found.gate == found.lane == "Unsettled._kwargs is missing"
    assert found.http11 is None and found.interim is None, "those do not need the server's settings"

    async def build() -> web.Server:
        return data_plane_server(no_handler, no_answer, internals=found, keepalive_timeout=5.0)

    with caplog.at_level(logging.WARNING, logger="edgeproxy.proxy"):
        server = asyncio.run(build())
    assert type(server) is web.Server
    assert "(Unsettled._kwargs is missing): hit lane off" in caplog.text
    assert "requests aiohttp's parser refuses get aiohttp's own 400 page" in caplog.text


def test_a_changed_error_handler_signature_turns_the_gated_server_off() -> None:
    class Older(web.RequestHandler):
        __slots__ = ()

        def handle_error(  # type: ignore[override]
            self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None
        ) -> web.StreamResponse:
            return super().handle_error(request, status, exc)

    found = probe(handler_class=Older)
    assert found.gate == "Older.handle_error takes ['request', 'status', 'exc'], not (request, status, exc, message)"
    assert found.lane == found.gate


def test_the_switch_turns_every_use_of_the_internals_off(caplog: pytest.LogCaptureFixture) -> None:
    found = probe(switch="off")
    assert found.switched_off and not found.values_checked
    assert {found.gate, found.lane, found.http11, found.interim} == {f"turned off by {SWITCH}=off"}
    assert probe(switch="on").lane is None and probe(switch="").lane is None

    async def build() -> web.Server:
        return data_plane_server(no_handler, no_answer, internals=found)

    with caplog.at_level(logging.INFO, logger="edgeproxy.proxy"):
        assert type(asyncio.run(build())) is web.Server
    (record,) = [r for r in caplog.records if SWITCH in r.getMessage()]
    assert record.levelno == logging.INFO, "asked for: not a warning"
    with internals_switched_off(True):
        assert installed() == found and not header_values_checked()
        assert aiohttp_internals.internals_supported() == f"turned off by {SWITCH}=off"
    with internals_switched_off(False):
        assert aiohttp_internals.internals_supported() is None and header_values_checked()


# -- the small pieces, both ways -----------------------------------------------------------------------------------


def status_lines(port: int, data: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):  # every server here closes the connection after its answer
            received += chunk
    return [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/")]


def served(handler: Any, data: bytes) -> list[bytes]:
    """The status lines aiohttp's own server sends for `data`, with `handler`."""

    async def main() -> list[bytes]:
        server = RawTestServer(handler, host="127.0.0.1")
        await server.start_server()
        try:
            return await asyncio.to_thread(status_lines, server.port, data)
        finally:
            await server.close()

    return asyncio.run(main())


@pytest.mark.parametrize("off", [False, True], ids=["internals", "switched-off"])
def test_refusals_of_other_versions_are_written_as_http11_unless_switched_off(off: bool) -> None:
    async def refuse(request: web.BaseRequest) -> web.StreamResponse:
        answer_in_http11(request)
        response = web.Response(status=400, text="no")
        response.force_close()
        return response

    with internals_switched_off(off):
        lines = served(refuse, b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
    assert lines == ([b"HTTP/2.0 400 Bad Request"] if off else [b"HTTP/1.1 400 Bad Request"])


@pytest.mark.parametrize("off", [False, True], ids=["internals", "switched-off"])
def test_a_failure_after_100_continue_gets_its_500_page_unless_switched_off(off: bool) -> None:
    async def fail(request: web.BaseRequest) -> web.StreamResponse:
        await send_continue(request)
        raise RuntimeError("the origin went away")

    with internals_switched_off(off):
        lines = served(fail, b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab")
    # Switched off, aiohttp sees bytes already sent and closes the connection instead of a second status line.
    expected = [b"HTTP/1.1 100 Continue"] + ([] if off else [b"HTTP/1.1 500 Internal Server Error"])
    assert lines == expected


# -- the hit lane's behaviour, both ways, through the proxy ----------------------------------------------------------

HIT = "/cacheable?cc=public,%20s-maxage=600"
TAGGED = "/cacheable?cc=public,%20s-maxage=600&tag=shoes&utm_campaign=black-friday"
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
)


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with node_origin("--page-cache-control", "public, s-maxage=600") as url:
        yield url


def get(target: str, uid: str, agent: str = AGENTS[0], *, extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"GET {target} HTTP/{version}\r\nHost: shop.test\r\nUser-Agent: {agent}\r\nAccept: text/html\r\n"
        f"Cookie: cs-personalize-user-uid={uid}\r\n{extra}\r\n"
    ).encode()


def visitors() -> list[bytes]:
    return [
        get(target, f"both-{n:02d}", AGENTS[n % 2])
        for n in range(8)
        for target in (HIT, TAGGED, "/", "/products/trail-runner-shoes?utm_source=newsletter")
    ]


# (what is sent, how many responses come back): what the lane answers and what it leaves to the general path
CONVERSATION: list[tuple[str, bytes, int]] = [
    *((f"hit {n}", data, 1) for n, data in enumerate(visitors())),
    ("pipelined", get(HIT, "both-00") + get(TAGGED, "both-01", AGENTS[1]) + get("/echo?pipelined=1", "both-00")
     + get(HIT, "both-00") + get(HIT, "both-02"), 5),
    ("HEAD", get(HIT, "both-00").replace(b"GET ", b"HEAD ", 1), 1),
    ("HTTP/1.0", get(HIT, "both-00", version="1.0"), 1),
    ("Connection: close", get(HIT, "both-00", extra="Connection: close\r\n"), 1),
    ("If-None-Match", get(HIT, "both-00", extra='If-None-Match: "nope"\r\n'), 1),
    ("Expect", get(HIT, "both-00", extra="Expect: 100-continue\r\nContent-Length: 0\r\n"), 2),
    ("absolute-form", get("http://shop.test" + HIT, "both-00"), 1),
]  # fmt: skip


def comparable(exchange: Exchange) -> tuple[str, dict[str, list[str]], bytes]:
    status, headers, body = exchange
    if "x-cache" in headers and headers["x-cache"] == ["MISS"]:  # a fresh origin answer: its own time and echo
        return status, {"x-cache": ["MISS"]}, b""
    return status, {name: values for name, values in headers.items() if name not in ("date", "age")}, body


async def talk(port: int) -> list[list[Exchange]]:
    return [await asyncio.to_thread(raw_exchange, port, data, n) for _, data, n in CONVERSATION]


def answered(server: web.Server) -> int:
    return server.answered if isinstance(server, HitLaneServer) else 0


def test_the_hit_lanes_requests_get_the_same_responses_with_the_internals_switched_off(
    origin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One proxy state (so one cache: the same stored entries), served twice: by the server built with the
    internals, then by one built with them switched off. (aiohttp's server serves every connection: the data
    plane, which needs none of them, is off.)"""
    monkeypatch.setenv(DATA_PLANE_SWITCH, "off")
    config = replace(ProxyConfig(origin=origin, rules=str(ROOT / "rules"), state=f"sqlite:///{tmp_path}/both.sqlite3"),
                     impressions="proxy")  # fmt: skip

    async def main() -> tuple[list[list[Exchange]], list[list[Exchange]], web.Server, web.Server, int]:
        state = make_state(config)
        async with proxy_server(state) as lane:
            for data in visitors():
                await asyncio.to_thread(raw_exchange, lane.port, data, 1)  # stored
            before = answered(lane.proxy)
            with_internals = await talk(lane.port)
            lane_answered = answered(lane.proxy) - before
            with internals_switched_off(True):
                plain = ProxyTestServer(state)
                await plain.start_server()
                try:
                    without = await talk(plain.port)
                finally:
                    await plain.close()
        return with_internals, without, lane.proxy, plain.proxy, lane_answered

    with internals_switched_off(False):
        with_internals, without, lane_server, plain_server, lane_answered = asyncio.run(main())
    assert isinstance(lane_server, HitLaneServer)
    assert type(plain_server) is web.Server, "switched off: aiohttp's own server, no private member touched"
    # Every plain fresh hit went through the lane; of the pipelined ones, those before the miss (those after it
    # waited behind it in aiohttp's queue).
    assert lane_answered == len(visitors()) + 2
    for (name, _, _), mine, theirs in zip(CONVERSATION, with_internals, without, strict=True):
        assert [comparable(reply) for reply in mine] == [comparable(reply) for reply in theirs], name
    labels = [reply[1].get("x-cache") for replies in with_internals for reply in replies]
    assert labels.count(["HIT"]) >= len(visitors()) and ["MISS"] in labels
    echo = json.loads(with_internals[len(visitors())][2][2])
    assert echo["url"] == "/echo?pipelined=1", "pipelined responses kept their order"
