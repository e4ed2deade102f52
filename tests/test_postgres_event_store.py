"""The PostgreSQL event store on a real PostgreSQL: idempotent inserts, day partitions created on demand, retention
by dropping partitions, a user's export and deletion, failures as StoreError (and recovery after a restart), and
two processes creating the schema at once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
import pytest
from support.postgres import PostgresServer

from edgeproxy.runtime.config import ConfigError, load_config
from edgeproxy.store.base import EventRecord, StoreError
from edgeproxy.store.events_url import events_url_problem
from edgeproxy.store.postgres_events import TABLE, PostgresEventStore, partition_name

P = "6565d3b1a3f0c7b2e1d4a9f0"
OTHER = "7777d3b1a3f0c7b2e1d4a9f0"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
D = 86_400.0
R = TypeVar("R")


def impression(ts: float, user: str = "u1", project: str = P) -> EventRecord:
    return EventRecord(ts, project, user, "IMPRESSION", "2", "1", None, "sdk")


def conversion(ts: float, user: str = "u1", project: str = P) -> EventRecord:
    return EventRecord(ts, project, user, "EVENT", None, None, "purchase", "proxy")


def with_store(url: str, body: Callable[[PostgresEventStore], Awaitable[R]]) -> R:
    async def run() -> R:
        store = PostgresEventStore(url)
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_replayed_event_id_is_not_inserted_twice(postgres_url: str) -> None:
    first = [(f"id{i}", impression(T0 + i)) for i in range(5)]

    async def body(store: PostgresEventStore) -> tuple[int, int, int, int, int]:
        inserted = await store.insert_events(first)
        replayed = await store.insert_events(first)
        # A batch mixing replays and new ids, and one id twice in the same batch.
        mixed = await store.insert_events([*first[:2], ("id9", conversion(T0 + 9)), ("id9", conversion(T0 + 9))])
        empty = await store.insert_events([])
        return inserted, replayed, mixed, empty, await store.count_events(P)

    assert with_store(postgres_url, body) == (5, 0, 1, 0, 6)


def test_each_day_a_batch_touches_gets_its_partition(postgres_url: str) -> None:
    events = [("a", impression(T0 + 10)), ("b", impression(T0 + 2 * D + 5)), ("c", conversion(T0 + 2 * D + D - 1))]

    async def body(store: PostgresEventStore) -> list[dt.date]:
        await store.insert_events(events)
        return await store.partition_days()

    assert with_store(postgres_url, body) == [dt.date(2026, 1, 1), dt.date(2026, 1, 3)]
    with psycopg.connect(postgres_url) as connection:
        placed = connection.execute(f"SELECT event_id, tableoid::regclass::text FROM {TABLE} ORDER BY 1").fetchall()
    assert placed == [
        ("a", partition_name(dt.date(2026, 1, 1))),
        ("b", partition_name(dt.date(2026, 1, 3))),
        ("c", partition_name(dt.date(2026, 1, 3))),
    ]


def test_retention_drops_whole_days_and_trims_the_day_that_straddles_the_limit(postgres_url: str) -> None:
    # Four days, three events a day at 01:00, 11:00 and 13:00 UTC.
    events = [(f"d{day}h{hour}", impression(T0 + day * D + hour * 3600)) for day in range(4) for hour in (1, 11, 13)]
    limit = T0 + 2 * D + 12 * 3600  # noon of the third day

    async def body(store: PostgresEventStore) -> tuple[int, list[dt.date], int, int]:
        await store.insert_events(events)
        purged = await store.purge_events(limit)
        days = await store.partition_days()
        again = await store.purge_events(limit)
        return purged, days, again, await store.count_events(P)

    purged, days, again, left = with_store(postgres_url, body)
    assert purged == 8  # days 1 and 2 whole (6), and 01:00 and 11:00 of day 3
    assert days == [dt.date(2026, 1, 3), dt.date(2026, 1, 4)]
    assert (again, left) == (0, 4)
    with psycopg.connect(postgres_url) as connection:
        kept = connection.execute(f"SELECT event_id FROM {TABLE} ORDER BY ts").fetchall()
        tables = connection.execute(
            "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND starts_with(relname, %s)", (f"{TABLE}_p",)
        ).fetchone()
    assert [k for (k,) in kept] == ["d2h13", "d3h1", "d3h11", "d3h13"]
    assert tables == (2,)  # the dropped days' tables are gone, not emptied


def test_retention_then_a_late_event_for_a_dropped_day_is_stored_again(postgres_url: str) -> None:
    # A drain that was behind delivers an event of a day another process's retention dropped meanwhile.
    async def body(store: PostgresEventStore) -> tuple[int, int]:
        await store.insert_events([("old", impression(T0 + 5))])
        other = PostgresEventStore(postgres_url)
        await other.start()
        try:
            await other.purge_events(T0 + 3 * D)
        finally:
            await other.close()
        return await store.insert_events([("late", impression(T0 + 7))]), await store.count_events(P)

    assert with_store(postgres_url, body) == (1, 1)


def test_a_users_events_are_exported_oldest_first_and_deleted(postgres_url: str) -> None:
    mine = [
        ("m3", conversion(T0 + 3 * D, "me")),
        ("m1", impression(T0 + 100, "me")),
        ("m2", impression(T0 + D, "me", project=OTHER)),
    ]
    theirs = [("t1", impression(T0 + 50, "them")), ("t2", conversion(T0 + 2 * D, "them"))]

    async def body(store: PostgresEventStore) -> tuple[list[EventRecord], int, int, list[EventRecord], int]:
        await store.insert_events([*mine, *theirs])
        exported = await store.user_events("me")
        deleted = await store.delete_user_events("me")
        deleted_again = await store.delete_user_events("me")
        return exported, deleted, deleted_again, await store.user_events("me"), await store.count_events(P)

    exported, deleted, deleted_again, after, left = with_store(postgres_url, body)
    assert exported == [mine[1][1], mine[2][1], mine[0][1]]
    assert (deleted, deleted_again, after, left) == (3, 0, [], 2)


def test_an_unreachable_server_is_a_store_error_and_the_store_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def body(store: PostgresEventStore) -> tuple[str, int, int]:
        await store.insert_events([("before", impression(T0))])
        postgres_server.stop()
        try:
            with pytest.raises(StoreError) as failure:
                await store.insert_events([("during", impression(T0 + 1))])
            with pytest.raises(StoreError):
                await store.count_events(P)
        finally:
            postgres_server.start()
        # The same store, without a restart of its own: a new connection, nothing lost, nothing doubled.
        inserted = await store.insert_events([("before", impression(T0)), ("during", impression(T0 + 1))])
        return str(failure.value), inserted, await store.count_events(P)

    message, inserted, total = with_store(postgres_url, body)
    assert "PostgreSQL event store" in message and f"127.0.0.1:{postgres_server.port}" in message
    assert (inserted, total) == (1, 2)


def test_starting_against_no_server_is_a_store_error_without_the_password(postgres_server: PostgresServer) -> None:
    from support.processes import free_port

    url = f"postgresql://edgeproxy:hunter2@127.0.0.1:{free_port()}/events"
    with pytest.raises(StoreError) as failure:
        asyncio.run(PostgresEventStore(url).start())
    assert "cannot connect" in str(failure.value) and "hunter2" not in str(failure.value)


def test_two_stores_starting_at_once_create_the_schema_once(postgres_url: str) -> None:
    # Both create the table and then, concurrently, the same new day partitions; neither fails.
    async def run() -> tuple[int, int, int]:
        stores = [PostgresEventStore(postgres_url) for _ in range(2)]
        await asyncio.gather(*(store.start() for store in stores))
        try:
            counts = await asyncio.gather(
                *(
                    store.insert_events([(f"s{n}-{i}", impression(T0 + i * D / 2)) for i in range(20)])
                    for n, store in enumerate(stores)
                )
            )
            return counts[0], counts[1], await stores[0].count_events(P)
        finally:
            for store in stores:
                await store.close()

    assert asyncio.run(run()) == (20, 20, 40)


def test_the_events_setting_accepts_postgresql_urls_only() -> None:
    base = {"origin": "http://127.0.0.1:3000", "rules": "rules", "state": "redis://127.0.0.1:6379/0"}
    assert load_config(None, {}, {**base, "events": "postgresql://edge@db.internal:5432/events"}).events
    assert load_config(None, {"EDGEPROXY_EVENTS": "postgres://db/events"}, base).events == "postgres://db/events"
    assert load_config(None, {}, {"origin": "http://127.0.0.1:3000", "rules": "rules"}).events == ""
    with pytest.raises(ConfigError) as bad_scheme:
        load_config(None, {}, {**base, "events": "mysql://edge:s3cret@db/events"})
    assert "command line --events" in str(bad_scheme.value) and "postgresql://" in str(bad_scheme.value)
    assert "s3cret" not in str(bad_scheme.value)
    for url, problem in [
        ("postgresql:///events", "names no host"),
        ("postgresql://db:99999/events", "port"),
        ("postgresql://db:5432", "names no database"),
        ("sqlite:///events.db", "unknown scheme"),
    ]:
        assert problem in (events_url_problem(url) or ""), url
