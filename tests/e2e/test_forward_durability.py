"""Forwarding to Contentstack (SPEC §12) survives real failures, with real processes: `edgeproxy serve` with
`--forward-edge-api` pointing at a `fake-edge-api` process.

1. `kill -9` of the proxy during a steady stream of SDK event writes (SQLite state), then a restart on the same
   state file and port: every write that got a 2xx reaches the Edge API, in order per user; duplicates are few.
2. The Edge API stopped (connection refused) while ~2,000 writes stream in: every write still gets its 2xx, status
   shows the backlog growing and "behind", the proxy's memory stays bounded; the Edge API back: the backlog drains
   and every write arrives in order per user.
   2b. While the sending process backs off, its status still shows what is queued (within a few seconds).
3. A fleet of two instances on Redis: the lease holder is killed while its requests hang at the Edge API (it has
   read entries it did not get a 2xx for); the survivor takes the lease over, claims them, and every write either
   instance answered 2xx arrives, in order per user.

What the client counts: only writes it got a 2xx for (a refused connection, a reset or a 5xx is not counted; such a
write may still arrive: it may have been queued before the answer was lost). Waits poll and bound a hang; they
assert nothing about speed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from support.processes import free_port, redis_server

from .conftest import ROOT, Launcher, Service, proc_rss_bytes

pytestmark = pytest.mark.e2e

PROJECT = json.loads((ROOT / "rules" / "personalize" / "projects" / "projects.json").read_text())[0]["uid"]
SDK_AGENT = "personalize-edge-sdk-js/1.0.27"
USERS = 8
CLIENT_TASKS = 4  # concurrent client tasks; each owns USERS / CLIENT_TASKS users and sends their writes in turn
WINDOW = 500  # the sender's window (edgeproxy/forward/forwarder.py): at most this many writes re-sent after a crash
LEASE_TAKEOVER = 40.0  # seconds: a dead holder's lease (15 s) runs out and another process takes over
DELIVERY_TIMEOUT = 90.0  # seconds: every accepted write reaches the fake (bounds a hang, not a speed assertion)
MB = 1024 * 1024
QUEUE, GROUP = "edgeproxy:forward:queue", "edgeproxy-forward"  # the Redis outbox (edgeproxy/forward/redis_outbox.py)


# -- processes ------------------------------------------------------------------------------------------------


def start_fake(launch: Launcher, port: int | None = None) -> Service:
    """`edgeproxy fake-edge-api` as its own process (stopped: connection refused; restarted: same port)."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "edgeproxy.cli", "fake-edge-api", "--listen", f"127.0.0.1:{port}",
            "--project-uid", PROJECT]  # fmt: skip
    service = Service(name=f"fake-edge-api :{port}", argv=argv, port=port, log_path=launch._log("fake-edge-api"),
                      env=env, cwd=launch.tmp)  # fmt: skip
    return launch._launch(service, "/_fake/received")


def kill9(service: Service) -> None:
    assert service.process is not None and service.alive(), f"{service.name} is not running"
    os.kill(service.pid, signal.SIGKILL)
    service.process.wait(timeout=10)


# -- the client: a stream of SDK event writes, and what got a 2xx -------------------------------------------------


@dataclass
class Ledger:
    """Per user: every key the client tried to write and the keys that got a 2xx, in the order sent (each user's
    writes are sent one after another, so that is the order the proxy accepted them in)."""

    users: list[str]
    attempted: dict[str, set[str]] = field(default_factory=dict)
    accepted: dict[str, list[str]] = field(default_factory=dict)
    next_n: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # what the writes without a 2xx got

    def __post_init__(self) -> None:
        for user in self.users:
            self.attempted[user] = set()
            self.accepted[user] = []
            self.next_n[user] = 0

    def next_key(self, user: str) -> str:
        n = self.next_n[user]
        self.next_n[user] = n + 1
        key = f"{user.rpartition('-')[2]}-{n:05d}"  # "u3-00017" for user "...-u3"
        self.attempted[user].add(key)
        return key

    @property
    def total_accepted(self) -> int:
        return sum(len(keys) for keys in self.accepted.values())


async def write_event(session: aiohttp.ClientSession, base: str, user: str, key: str) -> str | None:
    """POST one SDK event through the proxy's Edge API; None for a 2xx, else what happened."""
    headers = {"X-Project-Uid": PROJECT, "X-CS-Personalize-User-Uid": user, "X-User-Agent": SDK_AGENT,
               "Content-Type": "text/plain;charset=UTF-8"}  # fmt: skip
    body = json.dumps([{"type": "EVENT", "eventKey": key}])
    try:
        async with session.post(base + "/_personalize/events", data=body, headers=headers) as reply:
            await reply.read()
            return None if 200 <= reply.status < 300 else f"HTTP {reply.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def stream(
    session: aiohttp.ClientSession,
    ledger: Ledger,
    target: Callable[[str, int], str],
    *,
    interval: float,
    stop: asyncio.Event | None = None,
    per_task: int | None = None,
) -> None:
    """CLIENT_TASKS tasks, each sending its users' writes in turn, one every `interval` seconds (paced on a
    schedule, so a slow answer does not slow the stream down for long), until `stop` is set or each task has
    sent `per_task` writes. `target(user, n)`: the proxy's base URL for that user's n-th write."""

    async def task(index: int) -> None:
        mine = ledger.users[index::CLIENT_TASKS]
        start = time.monotonic()
        sent = 0
        while not (stop is not None and stop.is_set()) and not (per_task is not None and sent >= per_task):
            user = mine[sent % len(mine)]
            n = ledger.next_n[user]
            key = ledger.next_key(user)
            failure = await write_event(session, target(user, n), user, key)
            if failure is None:
                ledger.accepted[user].append(key)
            else:
                ledger.failures.append(failure)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * interval - time.monotonic()))

    await asyncio.gather(*(task(i) for i in range(CLIENT_TASKS)))


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=15, sock_connect=2)
    )


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as reply:
        assert reply.status == 200, f"GET {url}: {reply.status} {await reply.text()}"
        return await reply.json()


async def forwarding(session: aiohttp.ClientSession, proxy: Service) -> dict[str, Any]:
    status = await get_json(session, proxy.url + "/_edgeproxy/status")
    return dict(status["forwarding"])


# -- what the fake received ------------------------------------------------------------------------------------


class Received:
    """The requests a fake Edge API accepted, read incrementally (`since`), kept across its restarts."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.since = 0

    async def poll(self, session: aiohttp.ClientSession, fake: Service) -> None:
        new = await get_json(session, f"{fake.url}/_fake/received?since={self.since}")
        self.requests += new
        if new:
            self.since = max(r["seq"] for r in new)

    def restarted(self) -> None:
        """The fake was restarted: its sequence numbers start again from 1."""
        self.since = 0

    def keys_by_user(self) -> dict[str, list[str]]:
        """Each user's event keys in the order they arrived (requests are kept in arrival order)."""
        keys: dict[str, list[str]] = {}
        for request in self.requests:
            assert (request["method"], request["path"]) == ("POST", "/events"), request
            assert request["headers"]["X-Project-Uid"] == PROJECT, request
            assert request["headers"].get("X-User-Agent") == SDK_AGENT, request
            user = request["headers"]["X-CS-Personalize-User-Uid"]
            keys.setdefault(user, []).extend(event["eventKey"] for event in request["body"])
        return keys

    def missing(self, ledger: Ledger) -> int:
        keys = self.keys_by_user()
        return sum(len(set(ledger.accepted[u]) - set(keys.get(u, ()))) for u in ledger.users)

    async def until_complete(
        self, session: aiohttp.ClientSession, fake: Service, ledger: Ledger, what: str, *logs: Service
    ) -> float:
        """Poll until every accepted write arrived; seconds it took."""
        started = time.monotonic()
        while True:
            await self.poll(session, fake)
            missing = self.missing(ledger)
            if missing == 0:
                return time.monotonic() - started
            if time.monotonic() - started > DELIVERY_TIMEOUT:
                tails = "\n".join(f"--- {s.name}:\n{s.log_tail(30)}" for s in logs)
                raise AssertionError(
                    f"{what}: {missing} of {ledger.total_accepted} writes that got a 2xx had not reached the Edge API "
                    f"after {DELIVERY_TIMEOUT:g} s\n{tails}"
                )
            await asyncio.sleep(0.25)


def check_delivery(received: Received, ledger: Ledger) -> int:
    """Every 2xx write arrived; per user the keys arrived in the order they were written, ignoring exact repeats
    (at-least-once); nothing arrived that the client did not write. Returns the number of repeated events."""
    keys = received.keys_by_user()
    assert set(keys) <= set(ledger.users), f"writes of unknown users arrived: {set(keys) - set(ledger.users)}"
    duplicates = 0
    for user in ledger.users:
        arrived = keys.get(user, [])
        seen: set[str] = set()
        firsts: list[str] = []
        for key in arrived:
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
                firsts.append(key)
        lost = [key for key in ledger.accepted[user] if key not in seen]
        assert not lost, f"{user}: {len(lost)} writes that got a 2xx never arrived, e.g. {lost[:5]}"
        assert firsts == sorted(firsts), f"{user}: writes arrived out of order: {_first_disorder(firsts)}"
        invented = seen - ledger.attempted[user]
        assert not invented, f"{user}: events arrived that were never written: {sorted(invented)[:5]}"
    return duplicates


def _first_disorder(keys: list[str]) -> str:
    for before, after in itertools.pairwise(keys):
        if after < before:
            return f"{after} after {before}"
    return "?"


def sqlite_queued(path: Path) -> int:
    """How many writes the SQLite outbox really holds (read-only, beside the running proxy)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM forward_queue").fetchone()[0])
    finally:
        db.close()


# -- 1. kill -9 during a steady stream ---------------------------------------------------------------------------


def test_kill9_mid_stream_loses_no_accepted_write(launch: Launcher, tmp_path: Path) -> None:
    fake = start_fake(launch)
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--state", f"sqlite:///{tmp_path}/state.sqlite3", "--forward-edge-api", fake.url)
    ledger = Ledger([f"kill9-u{n}" for n in range(USERS)])
    received = Received()

    async def scenario() -> None:
        async with client_session() as session:
            stop = asyncio.Event()
            writing = asyncio.ensure_future(stream(session, ledger, lambda u, n: proxy.url, interval=0.02, stop=stop))
            await asyncio.sleep(1.5)
            await received.poll(session, fake)
            assert received.requests, "nothing was forwarded before the kill: " + proxy.log_tail()
            before_kill = ledger.total_accepted
            await asyncio.to_thread(kill9, proxy)  # mid-stream: writes being accepted and forwarded
            await asyncio.to_thread(launch.restart, proxy, "/_edgeproxy/ready")  # same state file, same port
            after_restart = ledger.total_accepted
            await asyncio.sleep(1.5)
            stop.set()
            await writing
            assert before_kill > 50, f"only {before_kill} writes accepted before the kill"
            assert ledger.total_accepted > after_restart, "no write was accepted after the restart"
            took = await received.until_complete(session, fake, ledger, "after kill -9 and restart", proxy)
            duplicates = check_delivery(received, ledger)
            events = sum(len(r["body"]) for r in received.requests)
            print(
                f"\n[kill -9] accepted {ledger.total_accepted} writes (before the kill {before_kill}), "
                f"{len(ledger.failures)} without a 2xx; {events} events arrived in {len(received.requests)} "
                f"requests; duplicates {duplicates}; all delivered {took:.1f} s after the stream ended"
            )
            assert duplicates <= WINDOW, f"{duplicates} duplicates: more than one window re-sent"

    asyncio.run(scenario())


# -- 2. the Edge API down for a while, then up -------------------------------------------------------------------


def test_edge_api_outage_backlog_is_bounded_in_memory_and_drains_in_order(launch: Launcher, tmp_path: Path) -> None:
    fake = start_fake(launch)
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--state", f"sqlite:///{tmp_path}/state.sqlite3", "--forward-edge-api", fake.url)
    ledger = Ledger([f"outage-u{n}" for n in range(USERS)])
    received = Received()
    total, seconds = 2000, 15.0
    per_task = total // CLIENT_TASKS

    async def scenario() -> None:
        async with client_session() as session:
            # Warm up: one write per user forwarded while the Edge API is up (the proxy's code paths are loaded).
            await stream(session, ledger, lambda u, n: proxy.url, interval=0.0, per_task=USERS // CLIENT_TASKS)
            await received.until_complete(session, fake, ledger, "warm-up", proxy)
            await asyncio.to_thread(fake.stop)  # connection refused from now on
            received.restarted()
            rss_start = proc_rss_bytes(proxy.pid)

            samples: list[dict[str, Any]] = []
            rss_peak = rss_start
            done = asyncio.Event()

            async def watch() -> None:
                nonlocal rss_peak
                while not done.is_set():
                    samples.append(await forwarding(session, proxy))
                    rss_peak = max(rss_peak, proc_rss_bytes(proxy.pid))
                    await asyncio.sleep(0.25)

            watcher = asyncio.ensure_future(watch())
            await stream(session, ledger, lambda u, n: proxy.url, interval=seconds / per_task, per_task=per_task)
            await asyncio.sleep(2.5)  # a backlog refresh of a process that waits (BACKLOG_REFRESH is 2 s)
            done.set()
            await watcher
            rss_end = proc_rss_bytes(proxy.pid)
            really_queued = sqlite_queued(tmp_path / "state.sqlite3")

            assert ledger.failures == [], f"writes refused during the outage: {ledger.failures[:5]}"
            assert ledger.total_accepted == total + USERS
            queued = [s["queued"] for s in samples]
            states = {s["state"] for s in samples}
            print(
                f"\n[outage] {total} writes, all 2xx; status queued first {queued[0]}, max {max(queued)}, last "
                f"{queued[-1]} (the outbox really holds {really_queued}); states seen {sorted(states)}; "
                f"RSS start {rss_start / MB:.1f} MB, peak "
                f"{rss_peak / MB:.1f} MB, end {rss_end / MB:.1f} MB (growth {(rss_end - rss_start) / MB:+.1f} MB)"
            )
            assert max(queued) >= total // 4 and queued[-1] > queued[0], f"backlog did not grow: {queued}"
            assert "behind" in states, f"status never said behind: {samples[-3:]}"
            assert samples[-1]["lastFailure"], samples[-1]
            assert rss_end - rss_start < 60 * MB, f"RSS grew {(rss_end - rss_start) / MB:.1f} MB during the outage"
            assert rss_peak - rss_start < 60 * MB, f"RSS peaked {(rss_peak - rss_start) / MB:.1f} MB above start"

            await asyncio.to_thread(launch.restart, fake, "/_fake/received")  # the Edge API is back, same port
            took = await received.until_complete(session, fake, ledger, "after the outage", proxy)
            started = time.monotonic()
            while (status := await forwarding(session, proxy))["queued"] != 0:
                assert time.monotonic() - started < 30, f"status still shows a backlog: {status}"
                await asyncio.sleep(0.25)
            duplicates = check_delivery(received, ledger)
            print(f"[outage] backlog delivered {took:.1f} s after the Edge API came back; duplicates {duplicates}")
            assert duplicates == 0, "no process died: nothing should have been sent twice"

    asyncio.run(scenario())


# -- 2b. the backlog status while the sender backs off -------------------------------------------------------


def test_status_shows_the_backlog_while_the_sender_backs_off(launch: Launcher, tmp_path: Path) -> None:
    """`/_edgeproxy/status` (and the backlog gauge built from it) shows how many writes wait, also on the process
    that sends while it backs off from an Edge API that is down: within a few seconds, as a process that does not
    send refreshes it every BACKLOG_REFRESH (2 s)."""
    origin = launch.node_origin()
    nothing = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    proxy = launch.proxy(origin, "--state", f"sqlite:///{tmp_path}/state.sqlite3", "--forward-edge-api", nothing)
    ledger = Ledger([f"status-u{n}" for n in range(USERS)])

    async def scenario() -> None:
        async with client_session() as session:
            await stream(session, ledger, lambda u, n: proxy.url, interval=0.0, per_task=USERS // CLIENT_TASKS)
            started = time.monotonic()
            while (await forwarding(session, proxy))["retryInSeconds"] < 8.0:  # backing off: 0.5 s doubling
                assert time.monotonic() - started < 40, "the sender never backed off for 8 s"
                await asyncio.sleep(0.1)
            await stream(session, ledger, lambda u, n: proxy.url, interval=0.0, per_task=25)
            assert ledger.failures == [] and ledger.total_accepted == USERS + 25 * CLIENT_TASKS
            really = sqlite_queued(tmp_path / "state.sqlite3")
            assert really == ledger.total_accepted
            started = time.monotonic()
            while (status := await forwarding(session, proxy))["queued"] != really:
                assert time.monotonic() - started < 5.0, (
                    f"status says queued {status['queued']} while the outbox holds {really} writes, "
                    f"{time.monotonic() - started:.1f} s after they were queued (sendingHere "
                    f"{status['sendingHere']}, state {status['state']}, retryInSeconds {status['retryInSeconds']})"
                )
                await asyncio.sleep(0.25)

    asyncio.run(scenario())


# -- 3. a fleet on Redis: the lease holder dies with writes in flight --------------------------------------------


def test_fleet_survivor_takes_over_the_dead_holders_pending_writes(launch: Launcher, tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis_url:
        fake = start_fake(launch)
        origin = launch.node_origin()
        flags = ("--state", redis_url, "--forward-edge-api", fake.url, "--forward-timeout", "30")
        proxies = [launch.proxy(origin, *flags), launch.proxy(origin, *flags)]
        ledger = Ledger([f"fleet-u{n}" for n in range(USERS)])
        received = Received()
        live = list(proxies)

        def target(user: str, n: int) -> str:  # each user's writes alternate between the live instances
            return live[n % len(live)].url

        async def scenario() -> None:
            async with client_session() as session, Redis.from_url(redis_url) as redis:
                stop = asyncio.Event()
                writing = asyncio.ensure_future(stream(session, ledger, target, interval=0.03, stop=stop))
                started = time.monotonic()
                while not (len(received.requests) >= 10 and ledger.total_accepted >= 50):
                    assert time.monotonic() - started < 30, "nothing forwarded: " + proxies[0].log_tail()
                    await received.poll(session, fake)
                    await asyncio.sleep(0.2)

                holders: list[Service] = []
                while len(holders) != 1:
                    assert time.monotonic() - started < 30, "no single instance holds the sending lease"
                    holders = [p for p in proxies if (await forwarding(session, p))["sendingHere"]]
                holder = holders[0]
                survivor = next(p for p in proxies if p is not holder)
                for proxy in proxies:  # both instances accept writes and queue them in the shared outbox
                    assert (await forwarding(session, proxy))["thisProcess"]["queued"] > 0, proxy.name

                # The Edge API stops answering: the holder's requests hang with entries read and not acknowledged.
                async with session.post(f"{fake.url}/_fake/faults", json={"mode": "timeout"}) as answer:
                    assert answer.status == 200, await answer.text()
                while not await get_json(session, f"{fake.url}/_fake/faulted"):
                    assert time.monotonic() - started < 40, "the holder sent nothing to the hanging Edge API"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # more writes queue up behind the hanging ones
                hanging = len(await get_json(session, f"{fake.url}/_fake/faulted"))
                pending = (await redis.xpending(QUEUE, GROUP))["pending"]  # read by the holder, not acknowledged
                queued = await redis.xlen(QUEUE)
                assert pending > 0, "the holder had no entry read and unsent when it was killed"
                live.remove(holder)
                await asyncio.to_thread(kill9, holder)
                killed_at = time.monotonic()
                async with session.delete(f"{fake.url}/_fake/faults") as answer:
                    assert answer.status == 200
                accepted_at_kill = ledger.total_accepted

                while not (await forwarding(session, survivor))["sendingHere"]:
                    assert time.monotonic() - killed_at < LEASE_TAKEOVER, (
                        "the survivor did not take the sending lease over:\n" + survivor.log_tail()
                    )
                    await asyncio.sleep(0.25)
                takeover = time.monotonic() - killed_at
                await asyncio.sleep(1.0)
                stop.set()
                await writing
                assert ledger.total_accepted > accepted_at_kill, "the survivor accepted no write after the kill"
                took = await received.until_complete(session, fake, ledger, "after the holder's death", survivor)
                duplicates = check_delivery(received, ledger)
                print(
                    f"\n[fleet] accepted {ledger.total_accepted} writes across 2 instances ({len(ledger.failures)} "
                    f"without a 2xx); holder killed with {queued} queued, {pending} of them read by it (pending) and "
                    f"{hanging} requests hanging; survivor "
                    f"took over after {takeover:.1f} s; all delivered {took:.1f} s after the stream ended; "
                    f"duplicates {duplicates}"
                )
                assert duplicates <= WINDOW

        asyncio.run(scenario())
