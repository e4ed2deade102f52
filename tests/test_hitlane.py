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
import gc
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
from edgeproxy.clock import parse_instant
from edgeproxy.http.access_log import JsonAccessLogger
from edgeproxy.http.aiohttp_internals import HitLaneServer
from edgeproxy.http.dataplane import DataPlaneServer
from edgeproxy.runtime.config import ProxyConfig, load_config
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
    server: ProxyTestServer, requests: list[bytes], decision_log: Path | None, caplog: pytest.LogCaptureFixture
) -> Round:
    """`decision_log`: the file of the state's decision log, None when it has none."""
    state = server.state
    loaded = state.holder.current
    assert loaded is not None and state.cache is not None
    state.impressions = ImpressionRecorder(state.store, lambda: loaded.snapshot.project.uid)  # not started: events wait
    state.live = LiveDecisions()
    counts = state.metrics.data_plane
    state.metrics = ProxyMetrics(0.0, state.live, state.holder, None)
    state.metrics.data_plane = counts  # the data plane's (it holds the counter)
    state.cache.counts = state.metrics.cache_events
    logged = 0
    if decision_log is not None:
        assert state.decision_log is not None
        state.decision_log.flush()
        logged = len(decision_log.read_text().splitlines())
    caplog.clear()
    replies = [reply for data in requests for reply in await exchange(server, data)]
    if state.decision_log is not None:
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
        decision_log=[untimed_decision(line) for line in decision_log.read_text().splitlines()[logged:]]
        if decision_log is not None
        else [],
        access_log=[
            {k: v for k, v in json.loads(r.getMessage()).items() if k not in untimed}
            for r in caplog.records
            if r.name == "edgeproxy.access.test"
        ],
    )


@pytest.mark.parametrize("answer", ["parsed", "remembered"])
def test_lane_answers_hits_with_the_bytes_and_bookkeeping_of_the_general_path(
    origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, answer: str
) -> None:
    """`remembered`: without a decision log, the repeats are answered from their remembered heads."""
    caplog.set_level(logging.INFO, logger="edgeproxy.access.test")
    remembering = answer == "remembered"

    async def scenario() -> None:
        config = memo_config(origin, tmp_path, "same") if remembering else config_for(origin, tmp_path, "same")
        state = make_state(replace(config, access_log=True))
        logger = logging.getLogger("edgeproxy.access.test")
        async with proxy_server(state, access_log=logger, access_log_class=JsonAccessLogger) as server:
            requests = visitors()
            labels = []
            for data in requests:  # first round: stored (visitors of one variant set share entries)
                ((status, headers, _),) = await exchange(server, data)
                assert status.startswith("HTTP/1.1 200")
                labels += headers["x-cache"]
            assert labels.count("MISS") >= 12, labels
            if remembering:
                for data in requests:  # answered by the lane, and remembered
                    await exchange(server, data)
            decision_log = None if remembering else tmp_path / "same-decisions.jsonl"
            before, repeats = answered(server), remembered(server)
            lane = await measured_round(server, requests, decision_log, caplog)
            assert answered(server) - before == len(requests), "every fresh hit went through the lane"
            assert remembered(server) - repeats == (len(requests) if remembering else 0)
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
        assert lane.decisions == len(requests)
        assert {source for *_, source in lane.impressions} == {"proxy", "origin"}
        assert len(lane.access_log) == len(requests)
        assert len(lane.decision_log) == (0 if remembering else len(requests))

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


# -- remembered answers (executor.HitAnswer.again): a repeated head answered without being parsed or decided ------


class ManualClock:
    """The process clock, moved by the test only."""

    def __init__(self, instant: str) -> None:
        self.now = parse_instant(instant)

    def __call__(self) -> float:
        return self.now


def memo_config(origin: str, tmp: Path, name: str, **settings: Any) -> ProxyConfig:
    """No decision log (whose lines carry each request's time): the data plane remembers hits."""
    return replace(config_for(origin, tmp, name, ops_token=OPS_TOKEN, **settings), decision_log="")


OPS_TOKEN = "ops-secret"


def remembered(server: ProxyTestServer) -> int:
    proxy = server.proxy
    assert isinstance(proxy, DataPlaneServer)
    return proxy.counts["remembered"]


def manifest_cookie(reply: Exchange) -> str:
    return next(c for c in reply[1]["set-cookie"] if c.startswith("cs-personalize-manifest="))


def uid_cookie(reply: Exchange) -> str | None:
    return next((c for c in reply[1].get("set-cookie", []) if c.startswith("cs-personalize-user-uid=")), None)


async def reference(server: ProxyTestServer, data: bytes) -> Exchange:
    """What the general path answers `data` with now (it decides from the start)."""
    with general_path_only(server):
        (reply,) = await exchange(server, data)
    return reply


async def http(server: ProxyTestServer, method: str, target: str, body: str, headers: str = "") -> Exchange:
    data = (
        f"{method} {target} HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body.encode())}\r\nConnection: close\r\n\r\n{body}"
    ).encode()
    (reply,) = await exchange(server, data)
    return reply


# Each change that can alter a remembered answer, made between two sends of the same head: the second is decided
# again (not remembered), and answered as the general path answers it at that moment.
CHANGES = (
    "clock past a rule's time", "stored attributes", "user deleted", "new snapshot", "purge", "expired entry",
    "stale entry",
)  # fmt: skip
STALE_WHILE_REVALIDATE = "/cacheable?cc=public,%20s-maxage=600,%20stale-while-revalidate=600"


@pytest.mark.parametrize("change", CHANGES)
def test_a_remembered_answer_is_decided_again_when_what_made_it_changes(
    origin: str, tmp_path: Path, change: str
) -> None:
    async def scenario() -> None:
        # Black Friday week ends, and the winter season starts, at 2026-12-01T00:00:00Z (the example rules).
        clock = ManualClock("2026-11-30T23:59:58Z" if change == "clock past a rule's time" else "2026-12-06T12:00:00Z")
        state = make_state(memo_config(origin, tmp_path, "changes"), clock=clock)
        async with proxy_server(state) as server:
            data = request_bytes(STALE_WHILE_REVALIDATE if change == "stale entry" else "/", "memo-visitor")
            await exchange(server, data)  # stored
            await exchange(server, data)  # a lane hit, remembered
            (first,) = await exchange(server, data)
            assert remembered(server) == 1 and first[1]["x-cache"] == ["HIT"]
            loaded = state.holder.current
            assert loaded is not None
            project = loaded.snapshot.project.uid
            if change == "clock past a rule's time":
                clock.now += 1.5  # not yet: still remembered
                await exchange(server, data)
                assert remembered(server) == 2
                clock.now += 1.0  # 2026-12-01T00:00:00.5Z
            elif change == "stored attributes":
                who = f"X-Project-Uid: {project}\r\nX-CS-Personalize-User-Uid: memo-visitor\r\n"
                vip = '{"tier": "gold", "lifetime_value": 5000}'  # the homepage hero's VIP customers
                reply = await http(server, "PATCH", "/_personalize/user-attributes", vip, who)
                assert reply[0].split()[1] == "200", reply
            elif change == "user deleted":
                reply = await http(server, "DELETE", "/_edgeproxy/users/memo-visitor", "",
                                   f"Authorization: Bearer {OPS_TOKEN}\r\n")  # fmt: skip
                assert reply[0].split()[1] == "200", reply
            elif change == "new snapshot":
                state.holder.swap(
                    replace(loaded.snapshot, experiences=loaded.snapshot.experiences[1:]), "test: one fewer"
                )  # fmt: skip
            elif change == "purge":
                reply = await http(server, "POST", "/_edgeproxy/purge", '{"urls": ["/"]}',
                                   f"Authorization: Bearer {OPS_TOKEN}\r\n")  # fmt: skip
                assert reply[0].split()[1] == "200", reply
            else:  # expired (s-maxage=600), or stale and kept for stale-while-revalidate
                clock.now += 601
            (second,) = await exchange(server, data)
            assert remembered(server) == (2 if change == "clock past a rule's time" else 1), "decided again"
            expected = await reference(server, data)
            if change == "user deleted":  # a new identity each time (the page shows it): not the same bytes
                assert second[0] == expected[0] == "HTTP/1.1 200 OK"
                assert uid_cookie(second) not in (None, uid_cookie(first)) and uid_cookie(expected) is not None
            else:
                assert (second[0], second[2]) == (expected[0], expected[2])
                assert second[1]["set-cookie"] == expected[1]["set-cookie"]
            if change in ("clock past a rule's time", "stored attributes", "new snapshot"):
                assert manifest_cookie(second) != manifest_cookie(first), "the decision changed"
            if change in ("purge", "expired entry"):
                assert second[1]["x-cache"] == ["MISS"]
            if change == "stale entry":
                assert second[1]["x-cache"] == ["STALE"]
            (third,) = await exchange(server, data)  # and remembered again when it is a hit
            remembers = change != "user deleted"  # (the cookie still names the deleted uid: a new one each time)
            assert (remembered(server) > (2 if change == "clock past a rule's time" else 1)) == (
                remembers and second[1]["x-cache"] == ["HIT"]
            ) or third[1]["x-cache"] != ["HIT"]

    run(scenario)


def test_what_is_never_remembered(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        state = make_state(memo_config(origin, tmp_path, "never"))
        async with proxy_server(state) as server:
            proxy = server.proxy
            assert isinstance(proxy, DataPlaneServer) and proxy.hit is not None
            known = request_bytes("/", "never-1")
            await exchange(server, known)
            await exchange(server, known)
            assert len(proxy.hit.remembered) == 1
            gc.collect()  # a remembered visitor is a plain tuple, which the cyclic collector stops walking
            assert not any(gc.is_tracked(visitor) for visitor in proxy.hit.remembered.values())
            # The same request with its fields in another order is the same remembered answer...
            line, *fields = known.split(b"\r\n")
            reordered = b"\r\n".join([line, *reversed(fields[:-2]), b"", b""])
            assert reordered != known
            (reply,) = await exchange(server, reordered)
            assert reply[1]["x-cache"] == ["HIT"] and remembered(server) == 1 and len(proxy.hit.remembered) == 1
            # ...and the request line stays first: moved among the fields, it is no request (the gate refuses it).
            (reply,) = await exchange(server, b"\r\n".join([fields[0], line, *fields[1:]]))
            assert reply[0].split()[1] == "400" and remembered(server) == 1
            # ...but a head that names a field twice is not remembered (sorting could reorder its values).
            twice = request_bytes("/", "never-1", extra="Accept: text/plain\r\n")
            for _ in range(2):
                (reply,) = await exchange(server, twice)
                assert reply[1]["x-cache"] == ["HIT"]
            assert remembered(server) == 1 and len(proxy.hit.remembered) == 1
            assert proxy.hit.again(known, "192.0.2.7") is None, "another peer: decided again"
            # A new visitor (no uid cookie): each request mints a uid, so none is remembered.
            new = request_bytes("/", None)
            uids, labels = set(), []
            for _ in range(12):
                (reply,) = await exchange(server, new)
                labels += reply[1]["x-cache"]
                uids.add(uid_cookie(reply))
            assert len(uids) == 12 and None not in uids
            assert labels.count("HIT") >= 6, "new visitors fall into a few variant sets: most are hits"
            assert remembered(server) == 1 and len(proxy.hit.remembered) == 1
            # A HEAD of the same URL is not a repeat of the GET's head.
            (reply,) = await exchange(server, known.replace(b"GET ", b"HEAD ", 1))
            assert reply[1]["x-cache"] == ["HIT"] and remembered(server) == 1

    run(scenario)


def test_nothing_is_remembered_when_each_request_is_recorded_on_its_own(origin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = replace(memo_config(origin, tmp_path, "recorded"), decision_log=str(tmp_path / "decisions.jsonl"))
        state = make_state(config)
        async with proxy_server(state) as server:
            data = request_bytes("/", "recorded-1")
            replies = [reply for _ in range(4) for reply in await exchange(server, data)]
            assert [r[1]["x-cache"] for r in replies][1:] == [["HIT"]] * 3
            assert answered(server) == 3 and remembered(server) == 0

    run(scenario)


def test_with_behaviour_a_remembered_hit_counts_its_page_view_and_is_decided_again_when_a_value_changes(
    origin: str, tmp_path: Path
) -> None:
    """Behavioural attributes on (SPEC §13): a repeated head is answered from memory and counts its page view, as
    the general path would; when the page view changes what the rules read (visit_count, a new visit after the
    session timeout: the example's returning visitors), it is decided again, and answered as the general path
    answers it. A bot's repeats are remembered too, and never count."""

    async def scenario() -> None:
        demo = load_config(str(ROOT / "examples" / "demo.toml"), {}, {"origin": origin, "rules": str(ROOT / "rules")},
                           base_dir=ROOT / "examples")  # fmt: skip
        assert demo.behaviour is not None
        clock = ManualClock("2026-12-06T12:00:00Z")
        behaviour = replace(demo.behaviour, session_timeout=60.0)  # (within the page's s-maxage=600)
        state = make_state(replace(memo_config(origin, tmp_path, "behaviour"), behaviour=behaviour), clock=clock)
        tracker = state.behaviour
        assert tracker is not None
        async with proxy_server(state) as server:
            data = request_bytes("/", "returns")
            for _ in range(4):  # stored, a lane hit (remembered), then two remembered answers
                (reply,) = await exchange(server, data)
                clock.now += 1
            assert reply[1]["x-cache"] == ["HIT"] and remembered(server) == 2
            kept = tracker.known("returns")
            assert kept is not None and (kept.visits, kept.pageviews) == (1, 4)  # each counted once
            visitor = manifest_cookie(reply)
            clock.now += 61  # past the session timeout: this page view is the second visit
            (again,) = await exchange(server, data)
            assert remembered(server) == 2  # decided again
            kept = tracker.known("returns")
            assert kept is not None and (kept.visits, kept.pageviews) == (2, 5)
            assert manifest_cookie(again) != visitor  # the example's returning-visitor experience
            expected = await reference(server, data)  # (the general path counts this page view too)
            assert manifest_cookie(again) == manifest_cookie(expected)
            for _ in range(2):  # the new variant set's entry, a lane hit (remembered), then a remembered answer
                (again,) = await exchange(server, data)
            assert remembered(server) == 3 and manifest_cookie(again) == manifest_cookie(expected)
            kept = tracker.known("returns")
            assert kept is not None and (kept.visits, kept.pageviews) == (2, 8)
            bot = request_bytes("/", "crawler", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot)")
            before = remembered(server)
            for _ in range(4):
                await exchange(server, bot)
            assert remembered(server) >= before + 2 and tracker.known("crawler") is None  # answered, never counted

    run(scenario)
