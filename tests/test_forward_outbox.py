"""The forwarding outbox's contract (SPEC §12), the same on SQLite (outbox.SqliteOutbox) and on a real redis-server
(redis_outbox.RedisOutbox): queue order, the window, ack, bury and revive, the sending lease and a takeover of what
a dead holder had read and not sent, drop, data subject export and deletion, the refused count and the backlog."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from support.processes import free_port, redis_server

from edgeproxy.clock import clock_starting_at, parse_instant
from edgeproxy.forward.items import ForwardItem, attributes_item, events_items, merge_item
from edgeproxy.forward.outbox import Entry, Outbox, SqliteOutbox
from edgeproxy.forward.redis_outbox import GROUP, RedisOutbox
from edgeproxy.store.base import EventRecord, StoreError

P = "6565d3b1a3f0c7b2e1d4a9f0"
# The lease's clock: a fixed instant that runs on in real time (leases expire while the test sleeps), never today.
clock = clock_starting_at(parse_instant("2026-11-22T10:00:00Z"))
T = 1_795_341_600.0  # 2026-11-22T10:00:00Z: items carry the time they are given
R = TypeVar("R")


@dataclass
class Backend:
    kind: str
    target: str  # the SQLite file, or the Redis URL

    def open(self) -> Outbox:
        return SqliteOutbox(self.target) if self.kind == "sqlite" else RedisOutbox(self.target)

    def insert_raw(self, raw: bytes, user: str) -> None:
        """A queued entry whose stored bytes are `raw`, written behind the outbox's back."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as db:
                db.execute("INSERT INTO forward_queue (item, queued_at, order_uid, other_uid) VALUES (?,?,?,'')",
                           (raw, T, user))  # fmt: skip
            db.close()
        else:
            client = redis.Redis.from_url(self.target)
            client.xadd("edgeproxy:forward:queue", {"i": raw, "u": user, "o": ""})
            client.close()

    def run(self, scenario: Callable[[Outbox], Awaitable[R]]) -> R:
        """`scenario` with a started outbox, closed afterwards."""

        async def main() -> R:
            outbox = self.open()
            await outbox.start()
            try:
                return await scenario(outbox)
            finally:
                await outbox.close()

        return asyncio.run(main())


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "state.db"))
    else:
        with redis_server(tmp_path) as url:  # fails, not skips, without redis-server
            yield Backend("redis", url)


def attrs(user: str, n: int, at: float = T) -> ForwardItem:
    return attributes_item(P, user, {"n": n}, at)


def items_of(entries: list[Entry]) -> list[ForwardItem | None]:
    return [e.item for e in entries]


async def queued(outbox: Outbox, owner: str = "w1") -> list[ForwardItem | None]:
    return items_of(await outbox.window(owner, 1_000))


def test_window_returns_items_of_several_users_in_append_order(backend: Backend) -> None:
    first = [attrs("ann", 1), attrs("bob", 1), attrs("ann", 2)]
    second = [attrs("cat", 1), attrs("bob", 2), merge_item(P, "anon", "ann", T)]

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(first)
        await outbox.append(second)
        await outbox.append([])  # nothing: no error, no entry
        entries = await outbox.window("w1", 100)
        assert items_of(entries) == first + second
        assert len({e.id for e in entries}) == 6

    backend.run(scenario)


def test_append_of_many_items_queues_them_all_in_order(backend: Backend) -> None:
    events = [EventRecord(ts=T, project_uid=P, user_uid=f"u{i % 7}", type="EVENT", event_key=f"k{i}")
              for i in range(700)]  # fmt: skip
    batch = events_items(events, T) + [attrs(f"u{i}", i) for i in range(250)]

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(batch)
        assert (await outbox.backlog(clock())).queued == len(batch)
        assert await queued(outbox) == batch

    backend.run(scenario)


def test_window_limit_and_ack(backend: Backend) -> None:
    items = [attrs("ann", i) for i in range(5)]

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(items)
        first = await outbox.window("w1", 2)
        assert items_of(first) == items[:2]
        await outbox.ack([e.id for e in first])
        assert (await outbox.backlog(clock())).queued == 3
        second = await outbox.window("w1", 2)
        assert items_of(second) == items[2:4]
        assert not {e.id for e in first} & {e.id for e in second}
        await outbox.ack([e.id for e in second])
        await outbox.ack([])
        assert items_of(await outbox.window("w1", 2)) == items[4:]
        assert await outbox.window("w1", 0) == []

    backend.run(scenario)


def test_an_entry_not_acked_comes_back_in_the_next_window(backend: Backend) -> None:
    items = [attrs("ann", 1), attrs("bob", 1), attrs("ann", 2), attrs("bob", 2)]

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(items)
        assert await outbox.hold("w1", 30, clock())
        first = await outbox.window("w1", 2)
        assert await outbox.window("w1", 2) == first  # read again, nothing acked: the same entries
        await outbox.ack([first[0].id])  # the second was not sent (a retry)
        again = await outbox.window("w1", 3)
        assert again[0] == first[1]
        assert items_of(again) == items[1:]

    backend.run(scenario)


def test_the_lease_is_held_by_one_owner_until_released_or_expired(backend: Backend) -> None:
    async def scenario(outbox: Outbox) -> None:
        assert (await outbox.backlog(clock())).holder == ""
        assert await outbox.hold("A", 30, clock())
        assert await outbox.hold("A", 30, clock())  # kept
        assert not await outbox.hold("B", 30, clock())
        assert (await outbox.backlog(clock())).holder == "A"
        await outbox.release("B")  # not B's to give up
        assert not await outbox.hold("B", 30, clock())
        await outbox.release("A")
        assert (await outbox.backlog(clock())).holder == ""
        assert await outbox.hold("B", 0.2, clock())
        assert not await outbox.hold("A", 30, clock())
        await asyncio.sleep(0.3)  # B's lease runs out: B stopped without releasing it
        assert await outbox.hold("A", 30, clock())
        assert (await outbox.backlog(clock())).holder == "A"
        assert not await outbox.hold("B", 30, clock())

    backend.run(scenario)


@pytest.mark.parametrize("how", ["release", "expiry"])
def test_a_new_holder_takes_over_what_the_previous_one_read_and_did_not_send(backend: Backend, how: str) -> None:
    old = [attrs("ann", 1), attrs("bob", 1), attrs("ann", 2), attrs("cat", 1)]
    new = [attrs("ann", 3), attrs("bob", 2)]

    async def scenario() -> None:
        a, b = backend.open(), backend.open()  # two processes sharing the outbox
        await a.start()
        await b.start()
        try:
            await a.append(old)
            assert await a.hold("A", 0.2 if how == "expiry" else 30, clock())
            read_by_a = await a.window("A", 3)  # delivered to A, never acked: A dies sending them
            assert items_of(read_by_a) == old[:3]
            await b.append(new)
            assert not await b.hold("B", 30, clock())
            if how == "release":
                await a.release("A")
            else:
                await asyncio.sleep(0.3)
            assert await b.hold("B", 30, clock())
            assert not await a.hold("A", 30, clock())
            head = await b.window("B", 2)
            assert [e.id for e in head] == [e.id for e in read_by_a[:2]]
            entries = await b.window("B", 100)
            assert entries[:3] == read_by_a
            assert items_of(entries) == old + new
            await b.ack([e.id for e in entries[:4]])
            assert items_of(await b.window("B", 100)) == new
            assert (await b.backlog(clock())).queued == 2
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_bury_moves_entries_to_the_dead_letters_with_their_reason(backend: Backend) -> None:
    items = [attrs("ann", 1), attrs("bob", 1), attrs("ann", 2), attrs("cat", 1)]

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(items)
        entries = await outbox.window("w1", 10)
        await outbox.bury([(entries[0], "HTTP 400: bad attribute"), (entries[2], "HTTP 422: nope")], T + 5)
        backlog = await outbox.backlog(clock())
        assert (backlog.queued, backlog.dead) == (2, 2)
        assert items_of(await outbox.window("w1", 10)) == [items[1], items[3]]
        letters = await outbox.dead_letters(10)
        assert [(d.item, d.reason, d.failed_at) for d in letters] == [
            (items[0], "HTTP 400: bad attribute", T + 5), (items[2], "HTTP 422: nope", T + 5)]  # fmt: skip
        assert [d.item for d in await outbox.dead_letters(1)] == [items[0]]
        await outbox.ack([entries[1].id])
        await outbox.bury([(entries[1], "too late")], T + 6)  # gone already (sent): not a dead letter
        await outbox.bury([], T + 7)
        backlog = await outbox.backlog(clock())
        assert (backlog.queued, backlog.dead) == (1, 2)

    backend.run(scenario)


def test_revive_puts_the_dead_letters_back_at_the_end_of_the_queue(backend: Backend) -> None:
    items = [attrs("ann", 1), attrs("bob", 1), attrs("ann", 2)]
    later = attrs("cat", 1)

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(items)
        entries = await outbox.window("w1", 10)
        await outbox.bury([(entries[0], "HTTP 400"), (entries[2], "HTTP 400")], T)
        await outbox.append([later])
        assert await outbox.revive() == 2
        backlog = await outbox.backlog(clock())
        assert (backlog.queued, backlog.dead) == (4, 0)
        assert await outbox.dead_letters(10) == []
        assert await queued(outbox) == [items[1], later, items[0], items[2]]
        assert await outbox.revive() == 0

    backend.run(scenario)


def test_drop_deletes_the_dead_letters_and_with_queued_the_queue_too(backend: Backend) -> None:
    items = [attrs("ann", i) for i in range(5)]

    async def scenario(outbox: Outbox) -> None:
        await outbox.append(items)
        assert await outbox.hold("w1", 30, clock())
        entries = await outbox.window("w1", 3)  # delivered, not acked
        await outbox.bury([(entries[0], "HTTP 400")], T)
        assert await outbox.drop(False) == 1
        backlog = await outbox.backlog(clock())
        assert (backlog.queued, backlog.dead) == (4, 0)
        assert await queued(outbox) == items[1:]
        await outbox.bury([(entries[1], "HTTP 400")], T)
        assert await outbox.drop(True) == 4  # 1 dead + 3 queued
        backlog = await outbox.backlog(clock())
        assert (backlog.queued, backlog.dead, backlog.oldest_queued_at) == (0, 0, None)
        assert await outbox.window("w1", 10) == []
        fresh = [attrs("bob", 1), attrs("bob", 2)]
        await outbox.append(fresh)  # the outbox still works
        assert await queued(outbox) == fresh
        assert await outbox.drop(True) == 2
        assert await outbox.drop(True) == 0
        await outbox.append(fresh)
        assert await queued(outbox) == fresh

    backend.run(scenario)


def test_delete_user_removes_queued_and_dead_writes_that_concern_the_user(backend: Backend) -> None:
    ann_own, bob_own = attrs("ann", 1), attrs("bob", 1)
    ann_into_bob = merge_item(P, "ann", "bob", T)  # ann is the source
    cat_into_ann = merge_item(P, "cat", "ann", T)  # ann is the target (orders by ann)
    cat_into_bob = merge_item(P, "cat", "bob", T)
    ann_dead, bob_dead = attrs("ann", 2), attrs("bob", 2)

    async def scenario(outbox: Outbox) -> None:
        await outbox.append([ann_dead, bob_dead])
        dying = await outbox.window("w1", 2)
        await outbox.bury([(dying[0], "HTTP 400"), (dying[1], "HTTP 400")], T)
        await outbox.append([ann_own, bob_own, ann_into_bob, cat_into_ann, cat_into_bob])
        await outbox.window("w1", 2)  # some delivered, not acked: deleted all the same
        assert await outbox.user_writes("ann") == [
            ("queued", ann_own), ("queued", ann_into_bob), ("queued", cat_into_ann), ("dead", ann_dead)]  # fmt: skip
        assert await outbox.delete_user("ann") == 4
        assert await outbox.user_writes("ann") == []
        assert await outbox.user_writes("bob") == [
            ("queued", bob_own), ("queued", cat_into_bob), ("dead", bob_dead)]  # fmt: skip
        assert await queued(outbox) == [bob_own, cat_into_bob]
        assert [d.item for d in await outbox.dead_letters(10)] == [bob_dead]
        assert await outbox.delete_user("ann") == 0
        backlog = await outbox.backlog(clock())
        assert (backlog.queued, backlog.dead) == (2, 1)
        assert await outbox.delete_user("cat") == 1
        assert await queued(outbox) == [bob_own]

    backend.run(scenario)


def test_refused_writes_are_counted(backend: Backend) -> None:
    async def scenario(outbox: Outbox) -> int:
        assert (await outbox.backlog(clock())).refused == 0
        await outbox.count_refused(3)
        await outbox.count_refused(4)
        return (await outbox.backlog(clock())).refused

    assert backend.run(scenario) == 7
    assert backend.run(lambda outbox: outbox.backlog(clock())).refused == 7  # kept with the outbox


def test_backlog_reports_the_oldest_queued_write(backend: Backend) -> None:
    async def scenario(outbox: Outbox) -> None:
        assert (await outbox.backlog(clock())).oldest_queued_at is None
        await outbox.append([attrs("ann", 1, at=T + 10), attrs("bob", 1, at=T + 20)])
        assert (await outbox.backlog(clock())).oldest_queued_at == T + 10
        await outbox.ack([(await outbox.window("w1", 1))[0].id])
        assert (await outbox.backlog(clock())).oldest_queued_at == T + 20

    backend.run(scenario)


def test_an_entry_this_build_cannot_read_comes_back_without_an_item(backend: Backend) -> None:
    good = attrs("ann", 1)

    async def scenario(outbox: Outbox) -> None:
        await outbox.append([good])
        backend.insert_raw(b"\xc1 not msgpack", "bob")
        backend.insert_raw(b"\x93\x02\xa1x\xa1y", "bob")  # msgpack, not a queued write
        await outbox.append([good])
        entries = await outbox.window("w1", 10)
        assert items_of(entries) == [good, None, None, good]
        assert entries[1] == Entry(entries[1].id, None)
        await outbox.bury([(entries[1], "unreadable")], T)
        letters = await outbox.dead_letters(10)
        assert [(d.item, d.reason) for d in letters] == [(None, "unreadable")]
        assert await outbox.user_writes("bob") == []  # an export leaves out what cannot be read
        assert await outbox.delete_user("bob") == 2  # found by the uid stored beside the bytes

    backend.run(scenario)


# -- Redis only ------------------------------------------------------------------------------------------------


def test_redis_outbox_that_cannot_reach_redis_raises_store_error() -> None:
    port = free_port()  # nothing listens there

    async def scenario() -> None:
        outbox = RedisOutbox(f"redis://:s3cret@127.0.0.1:{port}/0")
        try:
            with pytest.raises(StoreError, match="forwarding outbox in Redis") as raised:
                await outbox.start()
            assert "s3cret" not in str(raised.value)
            with pytest.raises(StoreError, match="cannot queue writes"):
                await outbox.append([attrs("ann", 1)])
        finally:
            await outbox.close()
        closed = RedisOutbox(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(StoreError, match="closed"):
            await closed.append([attrs("ann", 1)])

    asyncio.run(scenario())


def test_redis_pending_entries_deleted_behind_the_outbox_are_skipped_in_order(tmp_path: Path) -> None:
    """A pending entry XDEL'd (not acked) comes back without fields: it is acked and left out, and the window is
    filled from the pending entries after it before any new one (a user's order is kept)."""
    items = [attrs("ann", i) for i in range(4)]

    with redis_server(tmp_path) as url:
        backend = Backend("redis", url)

        async def scenario(outbox: Outbox) -> None:
            await outbox.append(items[:3])
            assert await outbox.hold("w1", 30, clock())
            read = await outbox.window("w1", 3)
            await outbox.append(items[3:])
            client = redis.asyncio.Redis.from_url(url)
            await client.xdel("edgeproxy:forward:queue", read[0].id)
            assert items_of(await outbox.window("w1", 2)) == items[1:3]
            pending = await client.xpending("edgeproxy:forward:queue", GROUP)
            assert pending["pending"] == 2  # the deleted one was acked
            await client.aclose()
            assert items_of(await outbox.window("w1", 10)) == items[1:]

        backend.run(scenario)


def test_redis_outboxes_with_different_prefixes_are_separate(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:

        async def scenario() -> None:
            one, two = RedisOutbox(url), RedisOutbox(url, prefix="other:forward")
            await one.start()
            await two.start()
            try:
                await one.append([attrs("ann", 1)])
                await two.append([attrs("bob", 1)])
                assert await one.hold("w1", 30, clock())
                assert await two.hold("w2", 30, clock())
                assert await queued(one) == [attrs("ann", 1)]
                assert await queued(two, "w2") == [attrs("bob", 1)]
                assert await two.delete_user("ann") == 0
            finally:
                await one.close()
                await two.close()

        asyncio.run(scenario())


def test_redis_queue_deleted_behind_the_outbox_starts_again_empty(tmp_path: Path) -> None:
    """The stream deleted by another process (its consumer group with it): the next window or takeover makes the
    group again instead of failing, and what is appended afterwards is read."""
    with redis_server(tmp_path) as url:

        async def scenario(outbox: Outbox) -> None:
            await outbox.append([attrs("ann", 1)])
            assert await outbox.hold("w1", 30, clock())
            assert len(await outbox.window("w1", 10)) == 1
            client = redis.asyncio.Redis.from_url(url)
            await client.delete("edgeproxy:forward:queue")
            assert await outbox.window("w1", 10) == []
            await client.delete("edgeproxy:forward:queue")
            await outbox.release("w1")
            assert await outbox.hold("w2", 30, clock())  # the takeover claim finds no group
            await client.aclose()
            await outbox.append([attrs("bob", 1)])
            assert await queued(outbox, "w2") == [attrs("bob", 1)]

        Backend("redis", url).run(scenario)


def test_redis_outbox_bound_is_checked_with_the_append_across_instances(tmp_path: Path) -> None:
    """Two outboxes on one Redis (two instances), bounded at 5 writes queued plus dead letters: the bound holds
    whatever each instance believes, and the forwarder takes a refusal as "full" (counted, not an outage)."""
    from edgeproxy.forward.forwarder import Forwarder
    from edgeproxy.forward.outbox import OutboxFull

    with redis_server(tmp_path) as url:

        async def scenario() -> None:
            first, second = RedisOutbox(url, max_items=5), RedisOutbox(url, max_items=5)
            await first.start()
            await second.start()
            try:
                await first.append([attrs("ann", i) for i in range(3)])
                assert await first.hold("w1", 30, clock())
                entries = await first.window("w1", 1)
                await first.bury([(entries[0], "refused")], clock())  # dead letters count towards the bound
                with pytest.raises(OutboxFull):
                    await second.append([attrs("bob", i) for i in range(3)])  # 3 + 3 > 5: none queued
                await second.append([attrs("bob", i) for i in range(2)])  # 5: exactly the bound
                backlog = await second.backlog(clock())
                assert (backlog.queued, backlog.dead) == (4, 1)
                forwarder = Forwarder(RedisOutbox(url, max_items=5), "http://127.0.0.1:9", 5)
                await forwarder.outbox.start()
                try:  # this process's estimate is 0: the append itself refuses
                    assert await forwarder.enqueue([attrs("cat", 0)]) is False
                    assert (forwarder.counts.refused, forwarder.counts.failed, forwarder.counts.queued) == (1, 0, 0)
                finally:
                    await forwarder.outbox.close()
                assert (await second.backlog(clock())).refused == 1
            finally:
                await first.close()
                await second.close()

        asyncio.run(scenario())
