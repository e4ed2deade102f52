"""Nothing stored, known without I/O (issue 20): the SQLite store's Bloom filters of the users with attribute rows and
with a behaviour row answer `{}` at once for a returning visitor with nothing stored, never for a user this process
wrote; they are built from the file at start, follow other processes' writes (workers) through `user_rows_log`, and
are rebuilt when the log moved on without them. Through the real proxy (the in-process harness of
tests/test_preview_proxy.py, Node origin): a visitor with nothing stored is decided with no store read, one with
stored attributes still reads and gets them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_behaviour import SECTION
from test_preview_proxy import T0, P, Proxy, config_for, origin, running

from edgeproxy.runtime.serve import make_state
from edgeproxy.runtime.state import ProxyState
from edgeproxy.runtime.users import TombstoneFollower
from edgeproxy.store import sqlite_store
from edgeproxy.store.base import BEHAVIOUR_KEY, AttributeLimits
from edgeproxy.store.bloom import BloomFilter, expected_false_positive_rate
from edgeproxy.store.sqlite_store import SqliteStore
from edgeproxy.visitor.behaviour import behaviour_config
from edgeproxy.visitor.identity import Tombstones

__all__ = ["origin"]  # the module-scoped Node origin fixture, shared

STATE = "[1,5,6,null,1,2,null,null,{}]"  # a visitor's behaviour as visitor/behaviour.py encodes it


# -- the filter ---------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(keys=st.sets(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=400),
       capacity=st.integers(1, 500))  # fmt: skip
def test_a_bloom_filter_never_forgets_a_key_it_was_given(keys: set[tuple[str, str]], capacity: int) -> None:
    found = BloomFilter(capacity, 0.01)
    found.add_all(keys)
    assert all(key in found for key in keys)  # at, under and far over capacity alike


@pytest.mark.parametrize("capacity", [1_000, 20_000, 50_000])
def test_a_full_bloom_filter_answers_maybe_for_absent_keys_at_about_its_expected_rate(capacity: int) -> None:
    found = BloomFilter(capacity, 0.01)
    found.add_all((P, f"visitor-{i}") for i in range(capacity))
    probes = 100_000
    false = sum((P, f"stranger-{i}") in found for i in range(probes))
    bits, hashes = found.size_bytes * 8, found.hashes
    expected = expected_false_positive_rate(bits, hashes, capacity)
    assert expected <= 0.01  # sized for the target at capacity (a larger table, so often well under it)
    sigma = (expected * (1 - expected) / probes) ** 0.5
    assert abs(false / probes - expected) < 5 * sigma + 0.001, (false / probes, expected)
    assert (P, "stranger-0") not in BloomFilter(capacity, 0.01)  # an empty filter holds nothing


def test_a_bloom_filter_refuses_a_size_it_cannot_have() -> None:
    with pytest.raises(ValueError, match="capacity >= 1"):
        BloomFilter(0, 0.01)
    with pytest.raises(ValueError, match="rate"):
        BloomFilter(10, 1.0)


# -- the store ----------------------------------------------------------------------------------------------------


def store_at(path: Path, **limits: Any) -> SqliteStore:
    return SqliteStore(str(path / "state.sqlite3"), AttributeLimits(**limits), clock=lambda: T0)


def test_nothing_stored_is_known_without_a_read_and_what_this_process_writes_never_is(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path)
        await store.start()
        try:
            assert store.cached_attributes(P, "ann") == {}
            await store.patch_attributes(P, "ann", {"tier": "gold"})
            assert store.cached_attributes(P, "ann") == {"tier": "gold"}  # the read-through cache, as before
            await store.put_behaviour(P, {"bea": STATE})
            assert store.cached_attributes(P, "bea") is None  # a behaviour row: read it...
            assert store.cached_attributes(P, "bea", behaviour_at_hand=True) == {}  # ...unless the caller holds it
            await store.patch_attributes(P, "cid", {"tier": None})  # a write that leaves nothing: a read, harmless
            assert store.cached_attributes(P, "cid") == {}  # (the write's result is cached: nothing)
            await store.merge_attributes(P, "bea", "dan")
            assert store.cached_attributes(P, "dan") == {BEHAVIOUR_KEY: STATE}
            assert store.cached_attributes(P, "eve") == {} and store.cached_attributes("other-project", "ann") == {}
        finally:
            await store.close()

    asyncio.run(scenario())


def test_after_a_restart_the_filters_are_built_from_the_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = store_at(tmp_path)
        await first.start()
        await first.patch_attributes(P, "ann", {"tier": "gold"})
        await first.put_behaviour(P, {"bea": STATE})
        await first.merge_attributes(P, "ann", "cid")
        await first.close()
        second = store_at(tmp_path)  # a new process: nothing cached
        await second.start()
        try:
            assert second.cached_attributes(P, "ann") is None and second.cached_attributes(P, "cid") is None
            assert second.cached_attributes(P, "bea") is None
            assert second.cached_attributes(P, "bea", behaviour_at_hand=True) == {}
            assert second.cached_attributes(P, "nobody") == {}
            assert await second.get_attributes(P, "cid") == {"tier": "gold"}
        finally:
            await second.close()

    asyncio.run(scenario())


def test_another_process_on_the_file_is_learned_of_when_its_log_is_followed(tmp_path: Path) -> None:
    # Two stores on one SQLite file, as two workers: what A writes, B does not know until it follows the log (the
    # tombstone follower does, every 2 s); a user B read itself is known at once.
    async def scenario() -> None:
        a, b = store_at(tmp_path), store_at(tmp_path)
        await a.start()
        await b.start()
        try:
            await a.patch_attributes(P, "ann", {"tier": "gold"})
            await a.put_behaviour(P, {"bea": STATE, "cid": STATE})
            await a.patch_attributes(P, "dan", {"tier": "silver"})
            assert b.cached_attributes(P, "ann") == {}  # not yet: the window the follower's interval sets
            assert await b.get_attributes(P, "dan") == {"tier": "silver"}  # asked directly: read, and known since
            assert await TombstoneFollower(b, Tombstones()).run_once() == 0  # no deletions; the writes followed
            assert b.cached_attributes(P, "ann") is None and b.cached_attributes(P, "bea") is None
            assert b.cached_attributes(P, "cid", behaviour_at_hand=True) == {}
            assert await b.get_attributes(P, "ann") == {"tier": "gold"}
            assert await b.follow_writes() == 0  # nothing new
            await a.put_behaviour(P, {"bea": STATE + " "})  # an update is no news: no line
            assert await b.follow_writes() == 0
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_a_follower_behind_the_bounded_log_rebuilds_from_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "USER_ROWS_KEPT", 5)
    monkeypatch.setattr(sqlite_store, "SCAN_BATCH", 3)  # several batches
    now = [T0]

    async def scenario() -> None:
        a = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits(), clock=lambda: now[0])
        b = store_at(tmp_path)
        await a.start()
        await b.start()
        try:
            await a.put_behaviour(P, {f"visitor-{i}": STATE for i in range(20)})
            now[0] += 61  # A's next write purges (once a minute): the log keeps its last 5 lines
            await a.patch_attributes(P, "ann", {"tier": "gold"})
            assert await b.follow_writes() == 21  # rebuilt: 20 users with behaviour, 1 with attributes
            assert all(b.cached_attributes(P, f"visitor-{i}") is None for i in range(20))
            assert b.cached_attributes(P, "ann") is None and b.cached_attributes(P, "nobody") == {}
            await a.patch_attributes(P, "bob", {"tier": "gold"})
            assert await b.follow_writes() == 1  # from the rebuild's cursor on, by the log again
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_what_this_process_writes_while_a_rebuild_reads_is_in_the_rebuilt_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "SCAN_BATCH", 2)  # many batches, so writes come between them

    async def scenario() -> None:
        # No read-through cache (cache_users=0): the filters alone answer.
        store = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits(), cache_users=0, clock=lambda: T0)
        await store.start()
        try:
            await store.patch_attributes(P, "visitor-00", {"tier": "gold"})
            await store.put_behaviour(P, {f"visitor-{i:02}": STATE for i in range(40)})
            rebuild = asyncio.ensure_future(store.rebuild_filters("a test"))
            written = []
            while not rebuild.done():  # users that sort before every scanned one: most land behind the scan
                user = f"0-{len(written):03}"
                await store.patch_attributes(P, user, {"tier": "gold"})
                await store.put_behaviour(P, {user: STATE})
                written.append(user)
            await rebuild
            assert len(written) > 3  # writes came between the rebuild's batches
            assert all(store.cached_attributes(P, user) is None for user in written)
            assert all(store.cached_attributes(P, user, behaviour_at_hand=True) is None for user in written)
            assert store.cached_attributes(P, "visitor-39") is None and store.cached_attributes(P, "nobody") == {}
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_deleted_user_leaves_no_line_of_the_log_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path)
        await store.start()
        await store.patch_attributes(P, "gone-user", {"tier": "gold"})
        await store.put_behaviour(P, {"gone-user": STATE})
        await store.delete_user("gone-user")
        await store.close()

    asyncio.run(scenario())
    assert b"gone-user" not in (tmp_path / "state.sqlite3").read_bytes()


# -- through the proxy --------------------------------------------------------------------------------------------


class CountedReads:
    """The store's reads (`get_attributes`), counted: the real store reads; this only counts what it is asked."""

    def __init__(self, state: ProxyState) -> None:
        self.users: list[str] = []
        read = state.store.get_attributes

        async def counted(project_uid: str, user_uid: str) -> dict[str, Any]:
            self.users.append(user_uid)
            return await read(project_uid, user_uid)

        state.store.get_attributes = counted  # type: ignore[method-assign]


def logged_state(origin: str, tmp: Path, **settings: Any) -> ProxyState:
    config = replace(config_for(origin, tmp, decision_log=str(tmp / "decisions.jsonl")), **settings)
    return make_state(config, clock=lambda: T0)


def stored_in_decisions(tmp: Path) -> dict[str, dict[str, Any]]:
    """The stored attributes each visitor's last logged decision read (behaviour's own key left out)."""
    lines = [json.loads(line) for line in (tmp / "decisions.jsonl").read_text().splitlines()]
    return {line["request"]["userUid"]: {k: v for k, v in line["request"]["storedAttributes"].items()
                                         if k != BEHAVIOUR_KEY} for line in lines}  # fmt: skip


async def patch(proxy: Proxy, uid: str, values: dict[str, Any]) -> None:
    answer = await proxy.request("PATCH", "/_personalize/user-attributes", uid=None,
                                 headers={"X-Project-Uid": P, "X-CS-Personalize-User-Uid": uid},
                                 data=json.dumps(values))  # fmt: skip
    assert answer.status == 200, answer


def test_a_returning_visitor_with_nothing_stored_is_decided_without_a_store_read(origin: str, tmp_path: Path) -> None:
    async def first_process() -> None:
        async with running(logged_state(origin, tmp_path), origin) as proxy:
            await patch(proxy, "ann", {"tier": "gold"})

    async def second_process() -> list[str]:
        state = logged_state(origin, tmp_path)  # a restart: nothing cached, the filters built from the file
        reads = CountedReads(state)
        async with running(state, origin) as proxy:
            for uid in ("bob", "cid", "bob"):  # returning visitors (their uid cookie) with nothing stored
                assert (await proxy.get("/", uid=uid)).status == 200
            assert reads.users == []
            assert (await proxy.get("/", uid="ann")).status == 200
            assert (await proxy.get("/", uid="ann")).status == 200  # read once, then cached
            assert (await proxy.manifest(uid="dan")).status == 200  # the Edge API's door: no read either
        return reads.users

    asyncio.run(first_process())
    assert asyncio.run(second_process()) == ["ann"]
    stored = stored_in_decisions(tmp_path)
    assert stored["ann"] == {"tier": "gold"} and stored["bob"] == {} and stored["cid"] == {}


def test_a_worker_learns_of_another_workers_writes_when_it_follows_the_file(origin: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shared = f"sqlite:///{tmp_path}/state.sqlite3"
    state_a = logged_state(origin, tmp_path / "a", state=shared)
    state_b = logged_state(origin, tmp_path / "b", state=shared)
    reads = CountedReads(state_b)

    async def scenario() -> None:
        async with running(state_a, origin) as a, running(state_b, origin) as b:
            await patch(a, "eve", {"tier": "gold"})
            await b.get("/", uid="eve")  # before B follows the file: decided as if nothing were stored
            assert reads.users == []
            await TombstoneFollower(state_b.store, state_b.planner.tombstones).run_once()  # every 2 s in `serve`
            await b.get("/", uid="eve")
            assert reads.users == ["eve"]

    asyncio.run(scenario())
    assert stored_in_decisions(tmp_path / "b")["eve"] == {"tier": "gold"}


def test_with_behaviour_on_a_visitor_the_tracker_knows_needs_no_read_without_attribute_rows(
    origin: str, tmp_path: Path
) -> None:
    async def first_process() -> None:
        async with running(logged_state(origin, tmp_path, behaviour=behaviour_config(SECTION)), origin) as proxy:
            await proxy.get("/checkout", uid="fay")  # a page view: fay's behaviour, written at the clean stop

    async def second_process() -> list[str]:
        state = logged_state(origin, tmp_path, behaviour=behaviour_config(SECTION))
        reads = CountedReads(state)
        async with running(state, origin) as proxy:
            await proxy.get("/", uid="gus")  # nothing stored, unknown to the tracker: no read
            await proxy.get("/", uid="gus")  # known to the tracker now (its page view), no attribute rows
            assert reads.users == []
            await proxy.get("/", uid="fay")  # a behaviour row this process does not hold: read
            assert reads.users == ["fay"]
            assert state.behaviour is not None
            await state.behaviour.flush()  # gus's behaviour row written
            await proxy.get("/", uid="gus")  # a behaviour row now, but the tracker holds it: still no read
            assert reads.users == ["fay"]
        return reads.users

    asyncio.run(first_process())
    asyncio.run(second_process())
    lines = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    fay = [line["request"]["storedAttributes"] for line in lines if line["request"]["userUid"] == "fay"]
    assert [seen["pageview_count"] for seen in fay] == [1, 2]  # the second: read back after the restart, counted on
