"""The data plane (edgeproxy/http/dataplane.py): edgeproxy's own server protocol serves pages and hits, and hands a
connection to aiohttp's server, exactly as it arrived, at the first request it does not serve.

The proxy runs in-process in front of the Node example origin; requests go over raw sockets so the test sees
what is on the wire: which server answered (the counters), in which order, framed how.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import node_origin
from support.proxy_server import proxy_server
from support.raw_http import raw_exchange, read_responses

from edgeproxy.http.aiohttp_internals import HitLaneServer
from edgeproxy.http.dataplane import SWITCH, DataPlaneServer
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.serve import make_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with node_origin() as url:
        yield url


def get(target: str, *extra: str, method: str = "GET") -> bytes:
    lines = "".join(f"{line}\r\n" for line in extra)
    head = f"{method} {target} HTTP/1.1\r\nHost: shop.test\r\nCookie: cs-personalize-user-uid=plane-1\r\n"
    return f"{head}{lines}\r\n".encode()


def post(target: str, body: bytes) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: shop.test\r\nCookie: cs-personalize-user-uid=plane-1\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def config(origin: str, tmp: Path) -> ProxyConfig:
    return ProxyConfig(origin=origin, rules=str(ROOT / "rules"), state=f"sqlite:///{tmp}/plane.sqlite3")


def plane_of(server: object) -> DataPlaneServer:
    proxy = getattr(server, "proxy", None)
    assert isinstance(proxy, DataPlaneServer)
    return proxy


def test_pages_are_served_by_the_data_plane_and_a_body_hands_the_connection_to_aiohttp(
    origin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with proxy_server(make_state(config(origin, tmp_path))) as server:
            plane = plane_of(server)
            batch = (
                get("/echo?n=1") + get("/echo?n=2")
                + post("/echo?n=body", b'{"a": 1}')  # a request body: the connection is aiohttp's from here on
                + get("/echo?n=3") + get("/echo?n=4", "Connection: close")
            )  # fmt: skip
            replies = await asyncio.to_thread(raw_exchange, server.port, batch, 5)
            assert [status.split()[1] for status, _, _ in replies] == ["200", "200", "200", "200", "200"]
            urls = [json.loads(body)["url"] for _, _, body in replies]
            assert urls == ["/echo?n=1", "/echo?n=2", "/echo?n=body", "/echo?n=3", "/echo?n=4"], "in order, none lost"
            assert json.loads(replies[2][2])["bodyLength"] == 8
            assert plane.served == 2 and plane.handed_off == 1, "two on the data plane, then aiohttp's"
            # Counted once, in the process's metrics: /status and Prometheus read them.
            assert server.state.metrics.request_counts()["dataPlane"] == {
                "hits": 0,
                "remembered": 0,
                "executor": 2,
                "handedOff": 1,
            }
            exposition = server.state.metrics.exposition().decode()
            assert 'edgeproxy_data_plane_total{event="executor"} 2.0' in exposition
            assert 'edgeproxy_data_plane_total{event="handed_off"} 1.0' in exposition
            # Both servers send the origin what the decision says.
            sent = [json.loads(body)["headers"] for _, _, body in replies]
            assert len({h.get("x-cs-personalize-user-uid") for h in sent}) == 1 and sent[0].get("x-cs-variant-uid")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("HTTP/1.0", get("/echo").replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        ("Connection: close", get("/echo", "Connection: close")),
        ("absolute-form", get("/echo").replace(b"GET /echo", b"GET http://shop.test/echo", 1)),
        ("ops prefix", get("/_edgeproxy/healthz")),
        ("re-cased, encoded ops prefix", get("/_EdgeProxy%2Fhealthz")),
        ("Expect", get("/echo", "Expect: 100-continue", "Content-Length: 0")),
        ("a head that is not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
    ],
)
def test_what_the_data_plane_does_not_serve_goes_to_aiohttp(
    origin: str, tmp_path: Path, case: str, data: bytes
) -> None:
    async def scenario() -> None:
        async with proxy_server(make_state(config(origin, tmp_path))) as server:
            plane = plane_of(server)

            def conversation() -> bytes:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(data)
                    received = b""
                    while b"\r\n\r\n" not in received.split(b"HTTP/1.1 100 Continue\r\n\r\n")[-1]:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        received += chunk
                    return received

            received = await asyncio.to_thread(conversation)
            assert received.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), (case, received[:200])
            assert plane.served == 0 and plane.handed_off == 1, case

    asyncio.run(scenario())


def test_head_304_and_streamed_responses_are_framed_as_aiohttp_frames_them(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxy_server(make_state(config(origin, tmp_path))) as server:
            plane = plane_of(server)

            size = 8_000_000  # more than arrives with the head: streamed

            def conversation() -> tuple[bytes, bytes, dict[str, list[str]], bytes]:
                with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                    sock.sendall(get(f"/download?bytes={size}&chunked=1"))
                    received = b""
                    while not received.endswith(b"\r\n0\r\n\r\n"):
                        chunk = sock.recv(1 << 20)
                        assert chunk
                        received += chunk
                    head, _, rest = received.partition(b"\r\n\r\n")
                    sock.sendall(get(f"/download?bytes={size}"))  # the same connection, still in step
                    ((_, headers, body),) = read_responses(sock, 1)
                    return head, rest, headers, body

            head, chunks, sized, body = await asyncio.to_thread(conversation)
            assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
            decoded, rest = b"", chunks
            while True:
                line, _, rest = rest.partition(b"\r\n")
                length = int(line, 16)
                if not length:
                    break
                decoded, rest = decoded + rest[:length], rest[length + 2 :]
            assert len(decoded) == size and decoded == body, "the same bytes, either framing"
            assert sized["content-length"] == [str(size)] and "transfer-encoding" not in sized
            (head,) = await asyncio.to_thread(raw_exchange, server.port, get("/download?bytes=5000", method="HEAD"), 1)
            assert head[0].startswith("HTTP/1.1 200") and head[1]["content-length"] == ["5000"] and head[2] == b""
            assert plane.served == 3 and plane.handed_off == 0

    asyncio.run(scenario())


def test_an_origin_that_cannot_be_reached_gets_our_502_page_on_the_data_plane(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        async with proxy_server(make_state(config(f"http://127.0.0.1:{port}", tmp_path))) as server:
            ((status, headers, body),) = await asyncio.to_thread(
                raw_exchange, server.port, get("/page", "Accept: application/json") + get("/page"), 1
            )
            assert status.startswith("HTTP/1.1 502") and json.loads(body)["error"] == "origin_unreachable"
            assert headers["content-length"] == [str(len(body))]
            assert plane_of(server).served >= 1 and plane_of(server).handed_off == 0

    asyncio.run(scenario())


def test_shutdown_lets_a_request_in_progress_finish(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        state = make_state(config(origin, tmp_path))
        async with proxy_server(state) as server:
            plane = plane_of(server)

            def slow() -> list[tuple[str, dict[str, list[str]], bytes]]:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(get("/slow?ms=500"))
                    return read_responses(sock, 1)

            pending = asyncio.ensure_future(asyncio.to_thread(slow))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            plane.pre_shutdown()
            await plane.shutdown(5.0)
            ((status, _, body),) = await pending
            assert status.startswith("HTTP/1.1 200") and body == b"waited 500 ms\n"
            assert time.monotonic() - started < 4.0, "shutdown waited for the request, not for its timeout"

    asyncio.run(scenario())


def test_the_switch_leaves_every_connection_to_aiohttp(
    origin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SWITCH, "off")

    async def scenario() -> None:
        async with proxy_server(make_state(config(origin, tmp_path))) as server:
            assert isinstance(server.proxy, HitLaneServer)
            ((status, _, body),) = await asyncio.to_thread(raw_exchange, server.port, get("/echo?off=1"), 1)
            assert status.startswith("HTTP/1.1 200") and json.loads(body)["url"] == "/echo?off=1"

    asyncio.run(scenario())
