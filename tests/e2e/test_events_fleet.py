"""Events at fleet scale, with real processes: two `edgeproxy serve` instances on a real redis-server (state) and a
real PostgreSQL (`--events`), the SDK's POST /events sent through both.

1. A steady load, with PostgreSQL stopped for ~10 s in the middle: every event that got a 2xx is in PostgreSQL
   exactly once; the stream buffers within its cap while PostgreSQL is down (status says "behind"), then drains.
2. The cap: a small `events_buffer_max` and PostgreSQL down: past the cap POST /events answers 503 with the
   buffer-full error, status says "full", metrics count the refusals; nothing that got a 2xx is lost and nothing
   refused is stored.
3. A drainer killed with -9 while it holds pending entries (read, insert failing on the stopped PostgreSQL): the
   other instance claims them; every accepted event is in PostgreSQL exactly once.

What the client counts: only events of requests it got a 2xx for. Waits poll and bound a hang; they assert nothing
about speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from redis.asyncio import Redis
from support.postgres import PostgresServer
from support.processes import redis_server

from edgeproxy.store.postgres_events import TABLE

from .conftest import ROOT, Launcher, Service

pytestmark = pytest.mark.e2e

PROJECT = json.loads((ROOT / "rules" / "personalize" / "projects" / "projects.json").read_text())[0]["uid"]
STREAM, GROUP = f"edgeproxy:{PROJECT}:events", "edgeproxy-events"  # edgeproxy/store/redis_store.py
BATCH = 10  # events per SDK request
DRAIN_TIMEOUT = 90.0  # seconds: the backlog reaches PostgreSQL (bounds a hang, not a speed assertion)


@dataclass
class Ledger:
    """Event keys sent, and those whose request got a 2xx (accepted) or a 503 buffer-full (refused)."""

    attempted: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    next_n: int = 0

    def keys(self, n: int) -> list[str]:
        keys = [f"e{self.next_n + i:07d}" for i in range(n)]
        self.next_n += n
        self.attempted.update(keys)
        return keys


async def post_events(
    session: aiohttp.ClientSession, proxy: Service, user: str, ledger: Ledger, size: int = BATCH
) -> int:
    """One SDK request of `size` events through `proxy`; its status (0: no answer)."""
    keys = ledger.keys(size)
    headers = {"X-Project-Uid": PROJECT, "X-CS-Personalize-User-Uid": user, "Content-Type": "text/plain"}
    body = json.dumps([{"type": "EVENT", "eventKey": key} for key in keys])
    try:
        async with session.post(proxy.url + "/_personalize/events", data=body, headers=headers) as reply:
            answer = await reply.json()
            status = reply.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        ledger.failures[type(exc).__name__] += 1
        return 0
    if 200 <= status < 300:
        ledger.accepted += keys
    elif status == 503 and answer.get("error") == "personalize.EVENTS_BUFFER_FULL":
        ledger.refused += keys
    else:
        ledger.failures[f"HTTP {status} {answer.get('error')}"] += 1
    return status


async def steady_load(
    session: aiohttp.ClientSession, proxies: list[Service], ledger: Ledger, stop: asyncio.Event, interval: float
) -> None:
    """Four writers, each alternating between the instances, one request every `interval` seconds (paced)."""

    async def writer(w: int) -> None:
        started, sent = time.monotonic(), 0
        while not stop.is_set():
            await post_events(session, proxies[sent % len(proxies)], f"load-u{w}", ledger)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent * interval - time.monotonic()))

    await asyncio.gather(*(writer(w) for w in range(4)))


async def events_status(session: aiohttp.ClientSession, proxy: Service) -> dict[str, Any]:
    async with session.get(proxy.url + "/_edgeproxy/status") as reply:
        assert reply.status == 200
        return dict((await reply.json())["events"])


def stored_counts(url: str) -> Counter[str]:
    """How many times each event key is in PostgreSQL."""
    with psycopg.connect(url) as db:
        return Counter({key: n for key, n in db.execute(f"SELECT event_key, count(*) FROM {TABLE} GROUP BY 1")})


async def until_drained(redis: Redis, url: str, ledger: Ledger, *logs: Service) -> Counter[str]:
    """Poll until the stream is empty and every accepted event is in PostgreSQL; what PostgreSQL holds."""
    started = time.monotonic()
    while True:
        stored = await asyncio.to_thread(stored_counts, url)
        length = await redis.xlen(STREAM)
        if length == 0 and all(key in stored for key in ledger.accepted):
            return stored
        if time.monotonic() - started > DRAIN_TIMEOUT:
            missing = sum(1 for key in ledger.accepted if key not in stored)
            tails = "\n".join(f"--- {s.name}:\n{s.log_tail(20)}" for s in logs)
            raise AssertionError(f"after {DRAIN_TIMEOUT:g} s: stream length {length}, {missing} accepted events "
                                 f"not in PostgreSQL\n{tails}")  # fmt: skip
        await asyncio.sleep(0.25)


def moved(statuses: list[dict[str, Any]]) -> int:
    """Stream entries the instances moved to the event store: inserted there (`drained`), or found there already
    (`repeated`: a batch whose insert committed while the outage cut the connection, so the drain never heard;
    delivered again, it inserts nothing, each event still stored once)."""
    return sum(s["thisProcess"]["drained"] + s["thisProcess"]["repeated"] for s in statuses)


async def drain_counts(session: aiohttp.ClientSession, proxies: list[Service], accepted: int) -> list[dict[str, Any]]:
    """Each instance's events status once the entries they moved add up to `accepted`, or after 10 s (then as they
    are): a drain counts a batch just after removing it from the stream, so the stream can be empty and the events
    stored a moment before the last batch is counted."""
    deadline = time.monotonic() + 10
    while True:
        drained = [await events_status(session, p) for p in proxies]
        if moved(drained) >= accepted or time.monotonic() > deadline:
            return drained
        await asyncio.sleep(0.1)


def check_exactly_once(stored: Counter[str], ledger: Ledger) -> None:
    assert ledger.accepted, "no event was accepted"
    lost = [key for key in ledger.accepted if key not in stored]
    assert not lost, f"{len(lost)} events that got a 2xx are not in PostgreSQL, e.g. {lost[:5]}"
    repeated = {key: n for key, n in stored.items() if n > 1}
    assert not repeated, f"events stored more than once: {list(repeated.items())[:5]}"
    invented = set(stored) - ledger.attempted
    assert not invented, f"events in PostgreSQL that were never sent: {sorted(invented)[:5]}"
    refused_but_stored = [key for key in ledger.refused if key in stored]
    assert not refused_but_stored, f"refused events were stored: {refused_but_stored[:5]}"


def fleet(launch: Launcher, redis_url: str, events_url: str, *flags: str) -> list[Service]:
    origin = launch.node_origin()
    common = ("--state", redis_url, "--events", events_url, *flags)
    return [launch.proxy(origin, *common), launch.proxy(origin, *common)]


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=15))


# -- 1. steady load, PostgreSQL stopped for a while ------------------------------------------------------------


def test_fleet_stores_every_accepted_event_once_through_a_postgres_outage(
    launch: Launcher, tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    cap = 20_000
    with redis_server(tmp_path) as redis_url:
        proxies = fleet(launch, redis_url, postgres_url, "--events-buffer-max", str(cap))
        ledger = Ledger()

        async def scenario() -> None:
            async with client_session() as session, Redis.from_url(redis_url) as redis:
                lengths: list[int] = []
                states: set[str] = set()
                done = asyncio.Event()

                async def sample() -> None:
                    while not done.is_set():
                        lengths.append(await redis.xlen(STREAM))
                        states.add((await events_status(session, proxies[0]))["state"])
                        await asyncio.sleep(0.25)

                sampler = asyncio.ensure_future(sample())
                stop = asyncio.Event()
                load = asyncio.ensure_future(steady_load(session, proxies, ledger, stop, interval=0.05))
                await asyncio.sleep(3.0)
                before_outage = len(ledger.accepted)
                await asyncio.to_thread(postgres_server.stop)
                try:
                    await asyncio.sleep(10.0)
                    during = await redis.xlen(STREAM)
                    status_during = await events_status(session, proxies[1])
                finally:
                    await asyncio.to_thread(postgres_server.start)
                await asyncio.sleep(3.0)
                stop.set()
                await load
                stored = await until_drained(redis, postgres_url, ledger, *proxies)
                done.set()
                await sampler
                check_exactly_once(stored, ledger)
                assert not ledger.failures and not ledger.refused, (ledger.failures, len(ledger.refused))
                assert before_outage > 0 and len(ledger.accepted) > before_outage
                assert during > 0, "nothing was buffered while PostgreSQL was down"
                assert status_during["state"] == "behind" and status_during["behind"] is True, status_during
                assert status_during["sinkOk"] is False and status_during["lastError"], status_during
                assert max(lengths) <= cap, f"the stream grew past its cap: {max(lengths)}"
                drained = await drain_counts(session, proxies, len(ledger.accepted))
                assert moved(drained) == len(ledger.accepted), drained
                repeated = sum(s["thisProcess"]["repeated"] for s in drained)
                assert repeated == 0 or sum(s["thisProcess"]["failures"] for s in drained) > 0, drained
                assert all(s["thisProcess"]["drained"] > 0 for s in drained), "one instance drained nothing"
                print(f"\n[outage] {len(ledger.accepted)} events accepted ({before_outage} before the outage); "
                      f"stream length max {max(lengths)} (cap {cap}), {during} after 10 s without PostgreSQL; "
                      f"states seen {sorted(states)}; drained per instance "
                      f"{[s['thisProcess']['drained'] for s in drained]}, found stored already {repeated}")  # fmt: skip

        asyncio.run(scenario())


# -- 2. the cap ------------------------------------------------------------------------------------------------


def test_past_the_cap_events_are_refused_with_503_and_nothing_accepted_is_lost(
    launch: Launcher, tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    cap = 300
    with redis_server(tmp_path) as redis_url:
        proxies = fleet(launch, redis_url, postgres_url, "--events-buffer-max", str(cap))
        ledger = Ledger()

        async def scenario() -> None:
            async with client_session() as session, Redis.from_url(redis_url) as redis:
                for n in range(4):  # PostgreSQL up: drained
                    assert await post_events(session, proxies[n % 2], "cap-u", ledger) == 200
                await until_drained(redis, postgres_url, ledger, *proxies)
                await asyncio.to_thread(postgres_server.stop)
                try:
                    statuses = [await post_events(session, proxies[n % 2], "cap-u", ledger) for n in range(40)]
                    assert statuses.count(503) >= 40 - cap // BATCH, statuses
                    assert statuses[: cap // BATCH] == [200] * (cap // BATCH), statuses
                    assert await redis.xlen(STREAM) == cap
                    await asyncio.sleep(2.5)  # status reads the streams every 2 s
                    status = await events_status(session, proxies[0])
                    assert status["state"] == "full" and status["max"] == cap and status["backlog"] == cap, status
                    assert "REFUSED" in status["message"]
                    async with session.get(proxies[0].url + "/_edgeproxy/metrics") as reply:
                        metrics = await reply.text()
                    refused_here = sum(s["thisProcess"]["refused"].get("sdk", 0)
                                       for s in [status, await events_status(session, proxies[1])])  # fmt: skip
                    assert refused_here == len(ledger.refused)
                    assert 'edgeproxy_events_refused_total{source="sdk"}' in metrics
                    assert 'edgeproxy_events_backlog{kind="stream"} 300.0' in metrics
                finally:
                    await asyncio.to_thread(postgres_server.start)
                stored = await until_drained(redis, postgres_url, ledger, *proxies)
                check_exactly_once(stored, ledger)
                # the fleet accepts events again once drained
                assert await post_events(session, proxies[0], "cap-u", ledger) == 200
                print(f"\n[cap] {len(ledger.accepted)} events accepted, {len(ledger.refused)} refused with 503 "
                      f"past the cap of {cap}")  # fmt: skip

        asyncio.run(scenario())


# -- 3. kill -9 of a drainer holding pending entries ----------------------------------------------------------


def test_a_killed_drainers_pending_events_are_claimed_by_the_other(
    launch: Launcher, tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    with redis_server(tmp_path) as redis_url:
        proxies = fleet(launch, redis_url, postgres_url)
        ledger = Ledger()

        async def scenario() -> None:
            async with client_session() as session, Redis.from_url(redis_url) as redis:
                # Both drainers at work (connected to PostgreSQL, each having stored a batch) before the outage.
                started = time.monotonic()
                while not all([(await events_status(session, p))["thisProcess"]["batches"] for p in proxies]):
                    assert time.monotonic() - started < 30, "one instance never drained a batch"
                    await post_events(session, proxies[ledger.next_n // BATCH % 2], "kill-warm", ledger)
                    await asyncio.sleep(0.05)
                await until_drained(redis, postgres_url, ledger, *proxies)
                warm = len(ledger.accepted)
                await asyncio.to_thread(postgres_server.stop)
                try:
                    for n in range(20):  # 2,000 events in requests of 100 (the most one takes): each drainer reads
                        # the first request that reaches it and retries that batch, the rest waits in the stream
                        await post_events(session, proxies[n % 2], f"kill-u{n % 5}", ledger, size=100)
                    assert len(ledger.accepted) == warm + 2000, ledger.failures
                    consumers = {(await events_status(session, p))["consumer"]: p for p in proxies}
                    started = time.monotonic()
                    while True:  # both drainers hold a batch they read and could not insert
                        summary = await redis.xpending(STREAM, GROUP)
                        pending = {x["name"].decode(): int(x["pending"]) for x in summary["consumers"] or []}
                        if all(pending.get(c, 0) > 0 for c in consumers):
                            break
                        assert time.monotonic() - started < 20, f"pending per consumer: {pending}"
                        await asyncio.sleep(0.1)
                    victim_name = max(consumers, key=lambda c: pending[c])  # the one holding the most
                    victim = consumers[victim_name]
                    survivor = next(p for p in proxies if p is not victim)
                    held = pending[victim_name]
                    assert victim.process is not None
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.process.wait(timeout=10)
                finally:
                    await asyncio.to_thread(postgres_server.start)
                stored = await until_drained(redis, postgres_url, ledger, survivor)
                check_exactly_once(stored, ledger)
                status = await events_status(session, survivor)
                assert status["thisProcess"]["claimed"] >= held, status
                assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
                print(
                    f"\n[kill -9] the killed drainer held {held} pending events; the survivor claimed "
                    f"{status['thisProcess']['claimed']}; {len(stored)} events in PostgreSQL, each once"
                )

        asyncio.run(scenario())
