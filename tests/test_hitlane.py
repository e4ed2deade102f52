"""The hit lane: fresh cache hits answered as they are parsed (executor.hit_answer, asked by the data plane,
edgeproxy/http/dataplane.py; with EDGEPROXY_DATA_PLANE=off by aiohttp's hit lane, aiohttp_internals.py, which
test_aiohttp_internals.py covers).

The proxy runs in-process in front of the Node example origin. The same requests, over raw sockets, are answered
once by the lane and once by the general path (the same server with the lane declining everything, so the same
stored entries): the bytes must be the same (Date and Age aside), and so must the bookkeeping (counters,
metrics, live counts, impressions, decision and access logs). Requests the lane must leave alone still reach the general
path, pipelined requests keep their order, and the keep-alive timer still closes idle connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from support.processes import node_origin
from support.proxy_server import ProxyTestServer, proxy_server
from support.raw_http import Exchange, raw_exchange, read_responses

from edgeproxy.analytics.impressions import ImpressionRecorder
from edgeproxy.analytics.live import LiveDecisions
from edgeproxy.http.access_log import JsonAccessLogger
from edgeproxy.http.aiohttp_internals import HitLaneServer
from edgeproxy.http.dataplane import DataPlaneServer
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.metrics import ProxyMetrics
from edgeproxy.runtime.serve import make_state

ROOT = Path(__file__).resolve().parents[1]
CACHEABLE = "/cacheable?cc=public,%20s-maxage=600"
TAGGED = "/cacheable?cc=public,%20s-maxage=600&tag=shoes"
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
)
# Query strings and referrers some of the example rules read, so the visitors fall into several variant sets.
QUERIES = ("", "&utm_campaign=black-friday", "&utm_source=newsletter")


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    # Pages a shared cache may keep too: personalized HTML hits, with the origin's applied-variants report.
    with node_origin("--page-cache-control", "public, s-maxage=600") as url:
        yield url


def request_bytes(
    target: str, uid: str | None, agent: str = AGENTS[0], *, extra: str = "", version: str = "1.1"
) -> bytes:
    cookie = f"Cookie: cs-personalize-user-uid={uid}\r\n" if uid else ""
    return (
        f"GET {target} HTTP/{version}\r\nHost: shop.test\r\nUser-Agent: {agent}\r\nAccept: text/html\r\n"
        f"Accept-Language: en-GB\r\n{cookie}{extra}\r\n"
    ).encode()


def visitors() -> list[bytes]:
    """24 returning visitors x 2 cacheable JSON URLs and 2 pages, several variant sets among them."""
    out = []
    for n in range(24):
        query = QUERIES[n % len(QUERIES)]
        agent = AGENTS[n % len(AGENTS)]
        for base in (CACHEABLE, TAGGED):
            out.append(request_bytes(base + query, f"lane-visitor-{n:02d}", agent))
        for page in ("/", "/products/trail-runner-shoes"):
            out.append(request_bytes(page + ("?" + query[1:] if query else ""), f"lane-visitor-{n:02d}", agent))
    return out


def comparable(exchange: Exchange) -> tuple[str, dict[str, list[str]], bytes]:
    status, headers, body = exchange
    headers = {name: values for name, values in headers.items() if name not in ("date", "age")}
    return status, headers, body


def config_for(origin: str, tmp: Path, name: str, **settings: Any) -> ProxyConfig:
    return replace(
        ProxyConfig(origin=origin, rules=str(ROOT / "rules"), state=f"sqlite:///{tmp}/{name}.sqlite3"),
        decision_log=str(tmp / f"{name}-decisions.jsonl"), impressions="proxy", **settings,
    )  # fmt: skip


@contextmanager
def general_path_only(server: ProxyTestServer) -> Iterator[None]:
    """The same server, cache and state with the lane declining everything: the general path's answers."""
    proxy = server.proxy
    if isinstance(proxy, DataPlaneServer):
        hit = proxy.hit
        proxy.hit = None
        try:
            yield
        finally:
            proxy.hit = hit
        return
    assert isinstance(proxy, HitLaneServer)
    answer = proxy.answer
    proxy.answer = lambda message, peer, scheme: None
    try:
        yield
    finally:
        proxy.answer = answer


def answered(server: ProxyTestServer) -> int:
    proxy = server.proxy
    return proxy.answered if isinstance(proxy, HitLaneServer | DataPlaneServer) else 0


async def exchange(server: ProxyTestServer, data: bytes, responses: int = 1) -> list[Exchange]:
    return await asyncio.to_thread(raw_exchange, server.port, data, responses)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


@dataclass
class Round:
    """One pass of the same requests, with what it left behind in the proxy's bookkeeping."""

    replies: list[Exchange]
    counters: tuple[int, int, int]
    requests: dict[tuple[str, int], int]
    cache_results: dict[str, int]
    hits: int
    decisions: int
    live: dict[Any, int]
    impressions: list[tuple[str, str, str | None, str]]
    decision_log: list[dict[str, Any]]
    access_log: list[dict[str, Any]]


def untimed_decision(line: str) -> dict[str, Any]:
    record = {k: v for k, v in json.loads(line).items() if k not in ("ts", "ms")}
    record["request"].pop("now")
    return record


async def measured_round(
    server: ProxyTestServer, requests: list[bytes], decision_log: Path, caplog: pytest.LogCaptureFixture
) -> Round:
    state = server.state
    loaded = state.holder.current
    assert loaded is not None and state.cache is not None
    state.impressions = ImpressionRecorder(state.store, lambda: loaded.snapshot.project.uid)  # not started: events wait
    state.live = LiveDecisions()
    state.metrics = ProxyMetrics(0.0, state.live, state.holder, None)
    state.cache.counts = state.metrics.cache_events
    assert state.decision_log is not None
    state.decision_log.flush()
    logged = len(decision_log.read_text().splitlines())
    caplog.clear()
    replies = [reply for data in requests for reply in await exchange(server, data)]
    state.decision_log.flush()
    untimed = ("ts", "ms")
    return Round(
        replies=replies,
        counters=tuple(state.metrics.request_counts()[name] for name in ("total", "personalized", "passedThrough")),
        requests=dict(state.metrics.requests),
        cache_results=dict(state.metrics.cache_results),
        hits=state.metrics.cache_results.get("HIT", 0),
        decisions=sum(state.metrics.decisions.counts),
        live=state.live.totals,
        impressions=sorted(
            (e.user_uid, e.experience_short_uid, e.variant_short_uid, e.source) for e in state.impressions._pending
        ),
        decision_log=[untimed_decision(line) for line in decision_log.read_text().splitlines()[logged:]],
        access_log=[
            {k: v for k, v in json.loads(r.getMessage()).items() if k not in untimed}
            for r in caplog.records
            if r.name == "edgeproxy.access.test"
        ],
    )


def test_lane_answers_hits_with_the_bytes_and_bookkeeping_of_the_general_path(
    origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeproxy.access.test")

    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "same", access_log=True))
        logger = logging.getLogger("edgeproxy.access.test")
        async with proxy_server(state, access_log=logger, access_log_class=JsonAccessLogger) as server:
            requests = visitors()
            labels = []
            for data in requests:  # first round: stored (visitors of one variant set share entries)
                ((status, headers, _),) = await exchange(server, data)
                assert status.startswith("HTTP/1.1 200")
                labels += headers["x-cache"]
            assert labels.count("MISS") >= 12, labels
            decision_log = tmp_path / "same-decisions.jsonl"
            before = answered(server)
            lane = await measured_round(server, requests, decision_log, caplog)
            assert answered(server) - before == len(requests), "every fresh hit went through the lane"
            with general_path_only(server):
                general = await measured_round(server, requests, decision_log, caplog)
            assert answered(server) - before == len(requests)

        for mine, theirs in zip(lane.replies, general.replies, strict=True):
            assert comparable(mine) == comparable(theirs)
            assert mine[1]["x-cache"] == ["HIT"]
            assert abs(int(mine[1]["age"][0]) - int(theirs[1]["age"][0])) <= 1
        assert len({reply[1]["set-cookie"][1] for reply in lane.replies}) >= 3, "several variant sets"
        assert any("no-store" in reply[1]["cache-control"] for reply in lane.replies), "personalized HTML hits"
        lane.replies = general.replies = []
        assert lane == general
        assert lane.hits == len(requests) and lane.counters[0] == len(requests)
        assert {source for *_, source in lane.impressions} == {"proxy", "origin"}
        assert len(lane.decision_log) == len(lane.access_log) == len(requests)

    run(scenario)


# What the lane must leave to the general path: each of these, for a URL whose hit is stored, is still answered
# correctly, and not by the lane.
LEFT_ALONE = {
    "HEAD": (request_bytes(CACHEABLE, "left-1").replace(b"GET ", b"HEAD ", 1), "HIT"),
    "HTTP/1.0": (request_bytes(CACHEABLE, "left-1", version="1.0"), "HIT"),
    "Connection: close": (request_bytes(CACHEABLE, "left-1", extra="Connection: close\r\n"), "HIT"),
    "If-None-Match": (request_bytes(CACHEABLE, "left-1", extra='If-None-Match: "nope"\r\n'), "HIT"),
    "a body": (request_bytes(CACHEABLE, "left-1", extra="Content-Length: 3\r\n") + b"abc", "BYPASS"),
    "Expect": (request_bytes(CACHEABLE, "left-1", extra="Expect: 100-continue\r\nContent-Length: 0\r\n"), "HIT"),
    # Forwarded in origin-form with the target's authority as Host (RFC 9112 §3.2.2): the same URL, the same hit.
    "absolute-form": (request_bytes("http://shop.test" + CACHEABLE, "left-1"), "HIT"),
    "explain": (request_bytes(CACHEABLE, "left-1", extra="X-Edgeproxy-Explain: ops-secret\r\n"), "HIT"),
    "Upgrade": (request_bytes(CACHEABLE, "left-1", extra="Upgrade: h2c\r\n"), "HIT"),
    "stale": (request_bytes("/cacheable?cc=public,%20s-maxage=1,%20stale-while-revalidate=60", "left-1"), "STALE"),
}


@pytest.mark.parametrize("case", list(LEFT_ALONE))
def test_requests_the_lane_leaves_to_the_general_path(origin: str, tmp_path: Path, case: str) -> None:
    data, expected = LEFT_ALONE[case]

    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "left", ops_token="ops-secret"))
        async with proxy_server(state) as server:
            warm = request_bytes(CACHEABLE, "left-1")
            await exchange(server, warm)
            if case == "stale":
                await exchange(server, request_bytes("/cacheable?cc=public,%20s-maxage=1,%20stale-while-revalidate=60",
                                                     "left-1"))  # fmt: skip
                await asyncio.sleep(2.1)
            ((_, headers, _),) = await exchange(server, warm)
            assert headers["x-cache"] == ["HIT"] and answered(server) == 1, "the plain request is a lane hit"
            *interim, (status, headers, body) = await exchange(server, data, 2 if case == "Expect" else 1)
            assert [line for line, _, _ in interim] == (["HTTP/1.1 100 Continue"] if case == "Expect" else [])
            assert status.split()[1] in ("200", "304"), (case, status, body)
            assert headers["x-cache"] == [expected], case
            assert answered(server) == 1, f"{case}: answered by the lane"
            if case == "explain":
                assert headers["x-edgeproxy-explain"][0].startswith("snapshot=")

    run(scenario)


def test_pipelined_hits_and_misses_keep_their_order(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "pipelined"))
        async with proxy_server(state) as server:
            a = request_bytes(CACHEABLE, "pipe-1")
            b = request_bytes(TAGGED + "&utm_campaign=black-friday", "pipe-2", AGENTS[1])
            miss = request_bytes("/echo?pipelined=1", "pipe-1")
            await exchange(server, a)
            await exchange(server, b)
            batch = a + b + miss + a + b + a
            lane_replies = await exchange(server, batch, 6)
            # Every hit went through the lane, in order: those after the miss once it was answered.
            assert answered(server) == 5
            with general_path_only(server):
                general_replies = await exchange(server, batch, 6)
        assert [r[1]["x-cache"] for r in lane_replies] == [["HIT"], ["HIT"], ["MISS"], ["HIT"], ["HIT"], ["HIT"]]
        assert json.loads(lane_replies[2][2])["url"] == "/echo?pipelined=1"
        for n, (mine, theirs) in enumerate(zip(lane_replies, general_replies, strict=True)):
            if n != 2:
                assert comparable(mine) == comparable(theirs)

    run(scenario)


def test_a_hit_sent_while_a_slow_request_is_in_progress_waits_for_it(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "slow"))
        async with proxy_server(state) as server:
            hit = request_bytes(CACHEABLE, "slow-1")
            await exchange(server, hit)

            def conversation() -> list[bytes]:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(request_bytes("/slow?ms=400", "slow-1"))
                    time.sleep(0.15)  # the slow request is at the origin now
                    sock.sendall(hit)
                    data = b""
                    while data.count(b"HTTP/1.1 ") < 2 or not data.rstrip().endswith(b"}"):
                        chunk = sock.recv(65536)
                        assert chunk
                        data += chunk
                    return [part for part in data.split(b"HTTP/1.1 ") if part]

            first, second = await asyncio.to_thread(conversation)
            assert first.startswith(b"200") and b"waited 400 ms" in first
            assert second.startswith(b"200") and b"X-Cache: HIT" in second
            assert answered(server) == 1, "the hit waited for the request in progress, then the lane answered it"

    run(scenario)


def test_a_client_that_reads_late_gets_every_response_in_order(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "late"))
        async with proxy_server(state) as server:
            a, b = request_bytes("/", "late-1"), request_bytes("/products/trail-runner-shoes", "late-1")
            expected = {}
            for data in (a, b):
                await exchange(server, data)
                ((_, headers, body),) = await exchange(server, data)
                assert headers["x-cache"] == ["HIT"]
                expected[data] = body
            n = 3000  # ~15 MB of pages: far more than the socket buffers hold, so the proxy's writing pauses

            def conversation() -> list[bytes]:
                with socket.socket() as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
                    sock.settimeout(30)
                    sock.connect(("127.0.0.1", server.port))
                    sock.sendall((a + b) * (n // 2))
                    time.sleep(0.5)  # not reading yet: the proxy's transport fills up
                    return [body for _, _, body in read_responses(sock, n)]

            before = answered(server)
            bodies = await asyncio.to_thread(conversation)
            assert bodies == [expected[a], expected[b]] * (n // 2)
            assert answered(server) - before == n, "each waited for the client to read the one before"

    run(scenario)


def test_a_failing_lane_leaves_the_request_to_the_general_path(
    origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "failing"))
        async with proxy_server(state) as server:
            hit = request_bytes(CACHEABLE, "fail-1")
            await exchange(server, hit)
            ((_, expected, body),) = await exchange(server, hit)
            assert answered(server) == 1
            proxy = server.proxy
            assert isinstance(proxy, DataPlaneServer)

            def broken(*request: object) -> None:
                raise RuntimeError("a bug in the lane")

            proxy.hit = broken
            replies = await exchange(server, hit + hit, 2)  # one connection: it survives the failure
        assert [comparable(reply) for reply in replies] == [comparable(("HTTP/1.1 200 OK", expected, body))] * 2
        assert "hit lane failed on GET /cacheable" in caplog.text and "a bug in the lane" in caplog.text

    run(scenario)


def test_keep_alive_timer_runs_for_lane_hits(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        state = make_state(config_for(origin, tmp_path, "keepalive"))
        async with proxy_server(state, keepalive_timeout=0.6) as server:
            hit = request_bytes(CACHEABLE, "keep-1")
            await exchange(server, hit)

            def conversation() -> tuple[int, bytes]:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    served = 0
                    deadline = time.monotonic() + 1.8  # three keep-alive timeouts of steady hits: kept open
                    while time.monotonic() < deadline:
                        sock.sendall(hit)
                        read_responses(sock, 1)
                        served += 1
                        time.sleep(0.1)
                    sock.settimeout(3)
                    return served, sock.recv(1)  # idle now: closed by the timer (b"")

            served, after_idle = await asyncio.to_thread(conversation)
            assert served >= 10 and answered(server) == served
            assert after_idle == b""

    run(scenario)
