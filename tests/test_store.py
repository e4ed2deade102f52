"""Attribute and event stores: the same behaviour on SQLite and on a real redis-server."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import redis_server

from edgeproxy.store import AttributeLimits, EventRecord, StoreError, StoreLimitError, open_store
from edgeproxy.store.base import BEHAVIOUR_KEY

P = "6565d3b1a3f0c7b2e1d4a9f0"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
    else:
        with redis_server(tmp_path) as url:
            yield url


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_patch_upserts_and_null_removes_other_keys_unchanged(store_url: str) -> None:
    async def scenario() -> dict[str, object]:
        store = open_store(store_url)
        await store.start()
        await store.patch_attributes(P, "u1", {"tier": "gold", "visits": 3, "vip": True})
        await store.patch_attributes(P, "u1", {"visits": 4, "vip": None})
        got = await store.get_attributes(P, "u1")
        other = await store.get_attributes(P, "u2")
        await store.close()
        assert other == {}
        return got

    assert run(scenario()) == {"tier": "gold", "visits": 4}


def test_merge_copies_source_onto_target_and_source_wins(store_url: str) -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        store = open_store(store_url)
        await store.start()
        await store.patch_attributes(P, "anon", {"tier": "gold", "visits": 9})
        await store.patch_attributes(P, "known", {"tier": "silver", "city": "Leeds"})
        await store.merge_attributes(P, "anon", "known")
        result = await store.get_attributes(P, "known"), await store.get_attributes(P, "anon")
        await store.close()
        return result

    known, anon = run(scenario())
    assert known == {"tier": "gold", "visits": 9, "city": "Leeds"}
    assert anon == {"tier": "gold", "visits": 9}


def test_behaviour_is_read_exported_merged_and_deleted_with_the_users_attributes(store_url: str) -> None:
    async def scenario() -> None:
        store = open_store(store_url)
        await store.start()
        await store.patch_attributes(P, "anon", {"tier": "gold"})
        await store.put_behaviour(
            P, {"anon": "[1,1,2,null,1,2,null,null,{}]", "known": "[1,5,5,null,1,1,null,null,{}]"}
        )
        await store.put_behaviour(P, {"known": "[1,5,6,null,1,2,null,null,{}]"})  # the newer write wins
        fresh = open_store(store_url)  # another process: nothing cached
        await fresh.start()
        assert await fresh.get_attributes(P, "anon") == {"tier": "gold", BEHAVIOUR_KEY: "[1,1,2,null,1,2,null,null,{}]"}
        assert await fresh.get_attributes(P, "known") == {BEHAVIOUR_KEY: "[1,5,6,null,1,2,null,null,{}]"}
        exported = await fresh.user_data("known")
        assert exported["attributes"] == {P: {BEHAVIOUR_KEY: "[1,5,6,null,1,2,null,null,{}]"}}
        await store.merge_attributes(P, "anon", "known")  # the source's behaviour wins, as its attributes do
        merged = open_store(store_url)
        await merged.start()
        assert await merged.get_attributes(P, "known") == await merged.get_attributes(P, "anon")
        assert (await store.delete_user("known"))["attributes"] == 1
        assert await merged.user_data("known") == {"userUid": "known", "attributes": {}, "events": []}
        for opened in (store, fresh, merged):
            await opened.close()

    run(scenario())


def test_sqlite_behaviour_expires_after_the_ttl_and_an_older_files_rows_move_to_its_table(tmp_path: Path) -> None:
    url, at = f"sqlite:///{tmp_path}/state.db", 1_795_341_600.0
    with sqlite3.connect(tmp_path / "state.db") as db:  # a state file written before the visitor_behaviour table
        db.execute(
            "CREATE TABLE user_attributes (project_uid TEXT NOT NULL, user_uid TEXT NOT NULL, key TEXT NOT NULL, "
            "value TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (project_uid, user_uid, key)) WITHOUT ROWID"
        )
        rows = [(P, "u", BEHAVIOUR_KEY, '"[1,1,2,null,1,2,null,null,{}]"', at), (P, "u", "tier", '"gold"', at)]
        db.executemany("INSERT INTO user_attributes VALUES (?,?,?,?,?)", rows)

    async def read(ttl: int, now: float) -> dict[str, object]:
        store = open_store(url, AttributeLimits(ttl_seconds=ttl), clock=lambda: now)
        await store.start()
        got = await store.get_attributes(P, "u")
        await store.close()
        return got

    assert run(read(3600, at + 10)) == {"tier": "gold", BEHAVIOUR_KEY: "[1,1,2,null,1,2,null,null,{}]"}
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT count(*) FROM user_attributes WHERE key=?", (BEHAVIOUR_KEY,)).fetchone() == (0,)
    assert run(read(3600, at + 3601)) == {}


def test_per_user_cap_and_value_size_are_enforced_without_partial_writes(store_url: str) -> None:
    limits = AttributeLimits(max_attributes_per_user=3, max_value_bytes=16)

    async def scenario() -> dict[str, object]:
        store = open_store(store_url, limits)
        await store.start()
        await store.patch_attributes(P, "u", {"a": 1, "b": 2})
        with pytest.raises(StoreLimitError, match="at most 3"):
            await store.patch_attributes(P, "u", {"c": 3, "d": 4})
        with pytest.raises(StoreLimitError, match="over 16 bytes"):
            await store.patch_attributes(P, "u", {"a": "x" * 40})
        with pytest.raises(StoreLimitError, match="strings, numbers, booleans or null"):
            await store.patch_attributes(P, "u", {"a": {"nested": 1}})
        got = await store.get_attributes(P, "u")
        await store.close()
        return got

    assert run(scenario()) == {"a": 1, "b": 2}


def test_events_are_appended_and_counted(store_url: str) -> None:
    async def scenario() -> int:
        store = open_store(store_url)
        await store.start()
        now = 1_795_341_600.0  # 2026-11-22T10:00:00Z: events carry the time they are given
        await store.append_events([
            EventRecord(ts=now, project_uid=P, user_uid="u", type="IMPRESSION", experience_short_uid="2",
                        variant_short_uid="1"),
            EventRecord(ts=now, project_uid=P, user_uid="u", type="EVENT", event_key="purchase"),
        ])  # fmt: skip
        count = await store.count_events(P)
        await store.close()
        return count

    assert run(scenario()) == 2


def test_sqlite_state_survives_restart_and_attributes_expire_after_ttl(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    written_at = 1_795_341_600.0  # the store's clock is injected: the TTL is checked without sleeping

    async def write() -> None:
        store = open_store(url, clock=lambda: written_at)
        await store.start()
        await store.patch_attributes(P, "u", {"tier": "gold"})
        await store.close()

    async def read(ttl: int, at: float) -> dict[str, object]:
        store = open_store(url, AttributeLimits(ttl_seconds=ttl), clock=lambda: at)
        await store.start()
        got = await store.get_attributes(P, "u")
        await store.close()
        return got

    run(write())
    assert run(read(3600, written_at + 3599)) == {"tier": "gold"}  # after a restart, within the TTL
    assert run(read(3600, written_at + 3601)) == {}  # past it


def test_redis_attributes_carry_a_ttl(tmp_path: Path) -> None:
    import redis

    with redis_server(tmp_path) as url:

        async def write() -> None:
            store = open_store(url, AttributeLimits(ttl_seconds=120))
            await store.start()
            await store.patch_attributes(P, "u", {"tier": "gold"})
            await store.close()

        run(write())
        ttl = redis.Redis.from_url(url).ttl(f"edgeproxy:{P}:user:u")
        assert 0 < int(ttl) <= 120  # type: ignore[arg-type]


def test_sqlite_store_opens_clean_after_kill_9_during_writes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    writer = (
        "import asyncio, time\n"
        "from edgeproxy.store import open_store, EventRecord\n"
        "async def main():\n"
        f"    s = open_store('sqlite:///{db}'); await s.start()\n"
        "    i = 0\n"
        "    while True:\n"
        f"        await s.append_events([EventRecord(ts=1_795_341_600.0 + i, project_uid='{P}', user_uid=f'u{{i}}',"
        " type='EVENT', event_key='k')])\n"
        f"        await s.patch_attributes('{P}', f'u{{i % 50}}', {{'n': i}})\n"
        "        i += 1\n"
        "        if i == 200: print('ready', flush=True)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.kill()  # SIGKILL mid-write
    process.wait()
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    count = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    connection.close()
    assert count >= 200

    async def reopen() -> int:
        store = open_store(f"sqlite:///{db}")
        await store.start()
        n = await store.count_events(P)
        await store.close()
        return n

    assert run(reopen()) == count


def test_unreachable_redis_is_a_store_error_not_a_crash() -> None:
    from support.processes import free_port

    async def scenario() -> None:
        store = open_store(f"redis://127.0.0.1:{free_port()}/0")
        await store.start()

    with pytest.raises(StoreError, match="cannot reach Redis"):
        run(scenario())
