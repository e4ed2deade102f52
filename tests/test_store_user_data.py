"""Data subject requests (export, delete) and event retention, the same on SQLite and on a real redis-server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from support.processes import redis_server

from edgeproxy.store import AttributeLimits, EventRecord, StateStore, open_store

P1 = "6565d3b1a3f0c7b2e1d4a9f0"
P2 = "7777aaaabbbbccccddddeeee"
T = 1_795_341_600.0  # 2026-11-22T10:00:00Z: the stores' clock and every event time are given, never read
ANN = "ann-3f9c"
BOB = "bob-81d2"
GLOB = "a*b?[c]"
# Each of these is matched by the unescaped pattern `edgeproxy:*:user:a*b?[c]`; the last one's key
# (edgeproxy:P1:user:x:user:a*b?[c]) even by the escaped one.
GLOB_NEIGHBOURS = ["a*b?c", "aXbYc", "a*b?[c]]", "x:user:a*b?[c]"]


@dataclass
class Backend:
    url: str
    kind: str
    path: Path | None = None  # SQLite file

    def open(self, clock: float = T, limits: AttributeLimits | None = None) -> StateStore:
        return open_store(self.url, limits, clock=lambda: clock)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        yield Backend(f"sqlite:///{path}", "sqlite", path)
    else:
        with redis_server(tmp_path) as url:  # fails, not skips, without redis-server
            yield Backend(url, "redis")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def event(ts: float, project: str, user: str, **fields: Any) -> EventRecord:
    kind = "EVENT" if "event_key" in fields else "IMPRESSION"
    return EventRecord(ts=ts, project_uid=project, user_uid=user, type=kind, **fields)


def doc(e: EventRecord) -> dict[str, Any]:
    return {
        "ts": e.ts, "projectUid": e.project_uid, "userUid": e.user_uid, "type": e.type,
        "experienceShortUid": e.experience_short_uid, "variantShortUid": e.variant_short_uid,
        "eventKey": e.event_key, "source": e.source,
    }  # fmt: skip


ANN_EVENTS = [
    event(T + 1, P1, ANN, experience_short_uid="2", variant_short_uid="1", source="proxy"),
    event(T + 4, P2, ANN, event_key="purchase"),
    event(T + 5, P1, ANN, event_key="signup", source="origin"),
]
BOB_EVENTS = [
    event(T + 2, P1, BOB, experience_short_uid="2", variant_short_uid="0"),
    event(T + 3, P2, BOB, event_key="purchase"),
    event(T + 6, P1, BOB, event_key="purchase"),
]


async def seed(store: StateStore) -> None:
    await store.patch_attributes(P1, ANN, {"tier": "gold", "visits": 3})
    await store.patch_attributes(P2, ANN, {"vip": True})
    await store.patch_attributes(P1, BOB, {"tier": "silver"})
    await store.patch_attributes(P2, BOB, {"city": "Leeds"})
    # interleaved, and in a different order than time across projects
    await store.append_events([BOB_EVENTS[1], ANN_EVENTS[1], ANN_EVENTS[0], BOB_EVENTS[0]])
    await store.append_events([ANN_EVENTS[2], BOB_EVENTS[2]])


def raw_traces(backend: Backend, needle: str) -> list[str]:
    """Every stored row, key or stream entry that mentions `needle`, read without the store."""
    found: list[str] = []
    if backend.kind == "sqlite":
        assert backend.path is not None
        db = sqlite3.connect(backend.path)
        for table in ("user_attributes", "events"):
            for row in db.execute(f"SELECT * FROM {table}"):  # two fixed table names
                if any(needle in str(column) for column in row):
                    found.append(f"{table}: {row}")
        db.close()
    else:
        client = redis.Redis.from_url(backend.url, decode_responses=True)
        for key in client.scan_iter(count=1000):
            if needle in key:
                found.append(f"key {key}")
            if client.type(key) == "stream":
                for entry_id, fields in client.xrange(key):  # type: ignore[union-attr]
                    if any(needle in value for value in fields.values()):
                        found.append(f"{key} {entry_id}: {fields}")
            elif client.type(key) == "hash":
                for field, value in client.hgetall(key).items():  # type: ignore[union-attr]
                    if needle in field or needle in value:
                        found.append(f"{key} {field}={value}")
        client.close()
    return found


def test_user_data_is_exactly_the_users_attributes_and_events_in_every_project(backend: Backend) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        store = backend.open()
        await store.start()
        await seed(store)
        got = await store.user_data(ANN), await store.user_data("nobody")
        await store.close()
        return got

    ann, nobody = run(scenario())
    assert ann == {
        "userUid": ANN,
        "attributes": {P1: {"tier": "gold", "visits": 3}, P2: {"vip": True}},
        "events": [doc(e) for e in ANN_EVENTS],  # oldest first, across projects
    }
    assert BOB not in repr(ann)
    assert nobody == {"userUid": "nobody", "attributes": {}, "events": []}


def test_delete_user_removes_everything_of_the_user_only_and_is_idempotent(backend: Backend) -> None:
    async def scenario() -> dict[str, Any]:
        store = backend.open()
        await store.start()
        await seed(store)
        bob_before = await store.user_data(BOB)
        assert await store.get_attributes(P1, ANN) == {"tier": "gold", "visits": 3}  # fills SQLite's cache
        if backend.kind == "sqlite":
            assert store.cached_attributes(P1, ANN) is not None
        assert raw_traces(backend, ANN)  # the check below can see the user

        assert await store.delete_user(ANN) == {"attributes": 2, "events": 3}

        assert raw_traces(backend, ANN) == []
        assert store.cached_attributes(P1, ANN) is None
        assert store.cached_attributes(P2, ANN) is None
        assert await store.get_attributes(P1, ANN) == {}
        assert await store.get_attributes(P2, ANN) == {}
        assert await store.user_data(ANN) == {"userUid": ANN, "attributes": {}, "events": []}
        assert await store.user_data(BOB) == bob_before
        assert await store.count_events(P1) == 2
        assert await store.count_events(P2) == 1
        assert await store.delete_user(ANN) == {"attributes": 0, "events": 0}
        result = {"bob": await store.user_data(BOB), "bob_before": bob_before}
        await store.close()
        return result

    result = run(scenario())
    assert result["bob"] == result["bob_before"]
    assert result["bob"]["attributes"] == {P1: {"tier": "silver"}, P2: {"city": "Leeds"}}
    assert result["bob"]["events"] == [doc(e) for e in BOB_EVENTS]


def test_sqlite_delete_leaves_no_bytes_of_the_user_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def scenario() -> None:
        store = open_store(f"sqlite:///{path}", clock=lambda: T)
        await store.start()
        await seed(store)
        files = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert ANN.encode() in files
        await store.delete_user(ANN)
        files = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the store is still open
        assert ANN.encode() not in files
        assert BOB.encode() in files
        await store.close()

    run(scenario())


def test_uid_with_glob_characters_deletes_only_itself(backend: Backend) -> None:
    async def scenario() -> dict[str, dict[str, Any]]:
        store = backend.open()
        await store.start()
        for uid in [GLOB, *GLOB_NEIGHBOURS]:
            await store.patch_attributes(P1, uid, {"who": uid})
            await store.append_events([event(T, P1, uid, event_key="k")])
        await store.patch_attributes(P2, GLOB, {"who": GLOB})

        assert await store.delete_user(GLOB) == {"attributes": 2, "events": 1}

        left = {uid: await store.user_data(uid) for uid in [GLOB, *GLOB_NEIGHBOURS]}
        await store.close()
        return left

    left = run(scenario())
    assert left[GLOB] == {"userUid": GLOB, "attributes": {}, "events": []}
    for uid in GLOB_NEIGHBOURS:
        assert left[uid]["attributes"] == {P1: {"who": uid}}, uid
        assert [e["userUid"] for e in left[uid]["events"]] == [uid]
    if backend.kind == "redis":
        client = redis.Redis.from_url(backend.url, decode_responses=True)
        keys = set(client.scan_iter(match="edgeproxy:*:user:*"))
        client.close()
        assert keys == {f"edgeproxy:{P1}:user:{uid}" for uid in GLOB_NEIGHBOURS}


def test_purge_events_removes_older_events_oldest_first_within_the_limit(backend: Backend) -> None:
    p1 = [event(T + t, P1, ANN, event_key=f"k{t}") for t in (100, 300, 500)]
    p2 = [event(T + t, P2, BOB, event_key=f"k{t}") for t in (200, 400, 600)]

    async def scenario() -> tuple[list[int], list[float], list[float]]:
        store = backend.open()
        await store.start()
        await store.append_events(p1)
        await store.append_events(p2)
        assert await store.purge_events(T + 550, 0) == 0
        counts = [await store.purge_events(T + 550, 2)]
        after_first = [e["ts"] - T for u in (ANN, BOB) for e in (await store.user_data(u))["events"]]
        while counts[-1] == 2:  # what a retention job does
            counts.append(await store.purge_events(T + 550, 2))
        counts.append(await store.purge_events(T + 550, 2))  # nothing is left to purge
        left = [e["ts"] - T for u in (ANN, BOB) for e in (await store.user_data(u))["events"]]
        assert await store.count_events(P1) + await store.count_events(P2) == len(left)
        await store.close()
        return counts, sorted(after_first), sorted(left)

    counts, after_first, left = run(scenario())
    assert after_first == [300, 400, 500, 600]  # the two oldest, one from each project
    assert counts == [2, 2, 1, 0]
    assert left == [600]


def test_purge_events_with_events_appended_out_of_time_order(backend: Backend) -> None:
    """SQLite finds old events by time wherever they are; a Redis stream gives up its events in arrival
    order, so an old event appended after a newer one goes when that one does (documented on purge_events)."""
    arrivals = [event(T + t, P1, ANN, event_key=f"k{t}") for t in (100, 900, 200, 300)]

    async def scenario() -> tuple[int, list[float], int, list[float]]:
        store = backend.open()
        await store.start()
        await store.append_events(arrivals)
        first = await store.purge_events(T + 500, 10)
        after_first = [e["ts"] - T for e in (await store.user_data(ANN))["events"]]
        second = await store.purge_events(T + 1000, 10)
        after_second = [e["ts"] - T for e in (await store.user_data(ANN))["events"]]
        await store.close()
        return first, after_first, second, after_second

    first, after_first, second, after_second = run(scenario())
    if backend.kind == "sqlite":
        assert (first, after_first) == (3, [900])
        assert (second, after_second) == (1, [])
    else:
        assert (first, after_first) == (1, [200, 300, 900])
        assert (second, after_second) == (3, [])
