"""The event transport (edgeproxy/store/event_drain.py) on a real redis-server and a real PostgreSQL, in-process:
events appended by the Redis state store are moved into PostgreSQL exactly once and deleted from the stream; the
stream refuses appends past its cap; PostgreSQL stopped, the batch is retried and nothing is lost; a stopped
process's pending entries are claimed; user export/delete and retention reach both places."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from support.postgres import PostgresServer
from support.processes import redis_server

from edgeproxy.runtime.users import Retention, delete_user, export_user
from edgeproxy.store.base import AttributeLimits, EventRecord, EventsBufferFull
from edgeproxy.store.event_drain import EventTransport
from edgeproxy.store.postgres_events import TABLE, PostgresEventStore
from edgeproxy.store.redis_queue import RedisQueue
from edgeproxy.store.redis_store import DRAIN_GROUP, RedisStore, event_stream

PROJECT = "proj1"
T0 = 1_795_000_000.0  # event times are data: a fixed instant (2026-11-19)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:  # fails, not skips, without redis-server
        yield url


def events(n: int, user: str = "u1", start: int = 0, source: str = "sdk") -> list[EventRecord]:
    return [
        EventRecord(ts=T0 + i, project_uid=PROJECT, user_uid=user, type="EVENT", event_key=f"k{i}",
                    source=source)  # type: ignore[arg-type]
        for i in range(start, start + n)
    ]  # fmt: skip


def stored_keys(url: str) -> list[str]:
    with psycopg.connect(url) as db:
        return [row[0] for row in db.execute(f"SELECT event_key FROM {TABLE} ORDER BY ts")]


Scenario = Callable[[RedisStore, EventTransport], Awaitable[None]]


def run(redis_url: str, postgres_url: str, scenario: Scenario, cap: int = 1_000, claim_idle: float = 5.0) -> None:
    async def main() -> None:
        store = RedisStore(redis_url, AttributeLimits(), events_buffer_max=cap)
        await store.start()
        transport = EventTransport(store, PostgresEventStore(postgres_url), "pg", consumer="here",
                                   jitter=lambda: 0.0, claim_idle=claim_idle)  # fmt: skip
        try:
            await scenario(store, transport)
        finally:
            await transport.stop()
            await store.close()

    asyncio.run(main())


async def until(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll `condition`; a hang fails after `limit` seconds (a bound, not a speed assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, f"not reached within {limit:g} s: {what}"
        await asyncio.sleep(0.05)


async def drain_all(transport: EventTransport) -> int:
    moved = 0
    while n := await transport.drain_once():
        moved += n
    return moved


def test_events_move_to_postgres_once_and_leave_the_stream(redis_url: str, postgres_url: str) -> None:
    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        await store.append_events(events(2500))
        assert await transport.drain_once() == 1000  # one batch at a time
        assert await drain_all(transport) == 1500
        backlog = await transport.refresh()
        assert (backlog.length, backlog.pending) == (0, 0)
        assert transport.counts.drained == 2500 and transport.counts.batches == 3
        assert transport.status()["state"] == "ok"

    run(redis_url, postgres_url, scenario, cap=10_000)
    assert stored_keys(postgres_url) == [f"k{i}" for i in range(2500)]


def test_events_in_the_stream_before_any_drain_are_drained(redis_url: str, postgres_url: str) -> None:
    """A stream written without an event store (the stream was the store) is drained from its first entry."""

    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        unbounded = RedisStore(redis_url, AttributeLimits())
        await unbounded.start()
        await unbounded.client.delete("edgeproxy:event-streams")  # as written before that set existed
        await unbounded.append_events(events(30))
        await unbounded.client.delete("edgeproxy:event-streams")
        await unbounded.close()
        assert await drain_all(transport) == 30

    run(redis_url, postgres_url, scenario)
    assert len(stored_keys(postgres_url)) == 30


def test_the_cap_refuses_whole_batches_and_counts_them(redis_url: str, postgres_url: str) -> None:
    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        await store.append_events(events(90))
        with pytest.raises(EventsBufferFull, match="events_buffer_max"):
            await store.append_events(events(20, start=90, source="proxy"))
        await store.append_events(events(10, start=90))
        with pytest.raises(EventsBufferFull):
            await store.append_events(events(1, start=100))
        assert dict(store.events_refused) == {"proxy": 20, "sdk": 1}
        await transport.refresh()
        status = transport.status()
        assert (status["state"], status["backlog"], status["max"]) == ("full", 100, 100)
        assert "REFUSED" in status["message"]
        assert await drain_all(transport) == 100
        await store.append_events(events(5, start=100))  # room again once drained
        await transport.refresh()
        assert transport.status()["state"] == "ok"

    run(redis_url, postgres_url, scenario, cap=100)
    assert len(stored_keys(postgres_url)) == 100


def test_postgres_down_keeps_the_batch_pending_then_drains_it(
    redis_url: str, postgres_url: str, postgres_server: PostgresServer
) -> None:
    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        transport.start()
        await store.append_events(events(50))
        await until(lambda: transport.counts.drained >= 50, "the first 50 events drained")
        postgres_server.stop()
        try:
            await store.append_events(events(70, start=50))  # accepted: buffered in the stream
            await until(lambda: transport.counts.failures >= 3, "three failed inserts")  # the same batch, retried
            backlog = await transport.refresh()
            assert backlog.length == 70 and backlog.pending == 70  # read by this process, kept pending
            status = transport.status()
            assert status["state"] == "behind" and status["sinkOk"] is False
            assert "event store" in status["lastError"]
        finally:
            postgres_server.start()
        await until(lambda: transport.counts.drained >= 120, "the buffered events drained")
        assert (await transport.refresh()).length == 0
        assert transport.status()["sinkOk"] is True

    run(redis_url, postgres_url, scenario)
    assert stored_keys(postgres_url) == [f"k{i}" for i in range(120)]


def test_a_stopped_processes_pending_entries_are_claimed_and_stored_once(redis_url: str, postgres_url: str) -> None:
    """A process read a batch, inserted it and died before its ack; another read one and died before inserting:
    both batches are claimed once idle, stored once (the first is recognised as already there)."""

    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        await store.append_events(events(30))
        queue = RedisQueue(store.client, event_stream(PROJECT), DRAIN_GROUP)
        await queue.ensure_group()
        died_after_insert = await queue.read_new("dead-1", 10)
        sink = PostgresEventStore(postgres_url)
        await sink.start()
        from edgeproxy.store.event_drain import event_id
        from edgeproxy.store.redis_store import event_from_fields

        rows = [(event_id(PROJECT, i), event_from_fields(PROJECT, dict(f))) for i, f in died_after_insert]
        assert await sink.insert_events([(i, e) for i, e in rows if e is not None]) == 10
        await sink.close()
        await queue.read_new("dead-2", 10)
        assert await drain_all(transport) == 10  # the entries never delivered; the others are not idle yet
        await asyncio.sleep(1.1)  # idle past claim_idle, and a look for such entries is due (CLAIM_EVERY)
        assert await drain_all(transport) == 20  # claimed
        assert transport.counts.claimed == 20 and transport.counts.repeated == 10
        assert (await transport.refresh()).length == 0

    run(redis_url, postgres_url, scenario, claim_idle=0.5)
    keys = stored_keys(postgres_url)
    assert sorted(keys) == sorted(f"k{i}" for i in range(30)) and len(keys) == 30


def test_user_export_delete_and_retention_reach_postgres_and_the_stream(redis_url: str, postgres_url: str) -> None:
    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        await store.append_events(events(3, user="ann") + events(2, user="bob", start=3))
        await drain_all(transport)
        await store.append_events(events(2, user="ann", start=5))  # still in the stream
        exported = await export_user(store, "ann", events=transport)
        assert [e["eventKey"] for e in exported["events"]] == ["k0", "k1", "k2", "k5", "k6"]
        removed = await delete_user(store, "ann", "test", events=transport)
        assert removed["events"] == 5
        assert (await export_user(store, "ann", events=transport))["events"] == []
        assert await drain_all(transport) == 0  # the stream's entries of ann went too
        retention = Retention(store, lambda: T0 + 4 + 30 * 86_400, 30, events=transport)
        assert await retention.run_once() == 1  # bob's k3 (ts T0+3) is older than 30 days; k4 is not

    run(redis_url, postgres_url, scenario)
    assert stored_keys(postgres_url) == ["k4"]


def test_without_an_event_store_status_says_events_accumulate_in_redis(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisStore(redis_url, AttributeLimits())  # no cap: the stream is the store
        await store.start()
        try:
            await store.append_events(events(1_500))  # more than a cap would matter for: nothing refused
            transport = EventTransport(store, None)
            await transport.refresh()
            status = transport.status()
            assert (status["state"], status["backlog"], status["max"]) == ("unbounded", 1_500, None)
            assert "`events`" in status["message"] and "no bound" in status["message"]
            groups = await store.client.xinfo_groups(event_stream(PROJECT))
            assert groups == []  # nothing drains, so no consumer group is created
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_proxys_impressions_past_the_cap_are_refused_counted_not_kept(redis_url: str) -> None:
    from edgeproxy.analytics.impressions import ImpressionRecorder

    async def scenario() -> None:
        store = RedisStore(redis_url, AttributeLimits(), events_buffer_max=2)
        await store.start()
        try:
            recorder = ImpressionRecorder(store, lambda: PROJECT, clock=lambda: T0)
            for user in ("a", "b", "c"):
                recorder.confirmed(user, "cs_personalize_0_1")  # origin-confirmed impressions
            await recorder.flush()  # 3 > the cap of 2: refused whole
            assert recorder.refused == 3 and recorder.recorded == 0
            assert dict(store.events_refused) == {"origin": 3}
            await recorder.flush()  # not retried: the buffer is full because the event store is behind
            assert await store.client.xlen(event_stream(PROJECT)) == 0
        finally:
            await store.close()

    asyncio.run(scenario())


def test_an_event_store_needs_redis_state() -> None:
    from edgeproxy.runtime.config import ConfigError, load_config

    flags = {"origin": "http://127.0.0.1:3000", "rules": "rules", "events": "postgresql://u@db:5432/events"}
    with pytest.raises(ConfigError, match="an event store is for a fleet on Redis state"):
        load_config(None, {}, {**flags, "state": "sqlite:///state.db"})
    assert load_config(None, {}, {**flags, "state": "redis://127.0.0.1:6379/0"}).events_buffer_max == 1_000_000
    with pytest.raises(ConfigError, match="events_buffer_max"):
        load_config(None, {}, {**flags, "state": "redis://127.0.0.1:6379/0", "events_buffer_max": "0"})


def test_user_command_exports_and_deletes_events_in_postgres_too(
    redis_url: str, postgres_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgeproxy user export|delete UID --events URL`: the user's events in PostgreSQL and still in the stream."""
    import json

    from edgeproxy.cli import main

    async def scenario(store: RedisStore, transport: EventTransport) -> None:
        await store.append_events(events(3, user="dora"))
        await drain_all(transport)
        await store.append_events(events(1, user="dora", start=3))

    run(redis_url, postgres_url, scenario)
    for name in [n for n in os.environ if n.startswith("EDGEPROXY_")]:
        monkeypatch.delenv(name)
    assert main(["user", "export", "dora", "--state", redis_url, "--events", postgres_url]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [e["eventKey"] for e in exported["events"]] == ["k0", "k1", "k2", "k3"]
    assert main(["user", "delete", "dora", "--state", redis_url, "--events", postgres_url]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"]["events"] == 4
    assert stored_keys(postgres_url) == []
