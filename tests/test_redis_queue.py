"""The shared Redis stream queue (edgeproxy/store/redis_queue.py), on a real redis-server: the capped append is
atomic and all-or-nothing, a consumer group delivers each entry once, ack deletes, a dead consumer's entries are
claimed, deleted pending entries come back apart, and stats say what is queued."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as redis
from support.processes import redis_server

from edgeproxy.store.base import StoreError
from edgeproxy.store.redis_queue import QueueFull, RedisQueue, entry_order

STREAM, GROUP = "test:queue", "test-group"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:  # fails, not skips, without redis-server
        yield url


def run_with_queue(redis_url: str, scenario: object) -> None:
    async def main() -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await client.flushdb()
            queue = RedisQueue(client, STREAM, GROUP)
            await queue.ensure_group()
            await scenario(queue, client)  # type: ignore[operator]
        finally:
            await client.aclose()

    asyncio.run(main())


def entries(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"n": str(i), "who": f"user-{i % 3}"} for i in range(start, start + n)]


def test_append_keeps_order_and_fields(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        ids = await queue.append(entries(5), registry="test:registry")
        assert len(ids) == 5 and ids == sorted(ids, key=entry_order)
        rows = await client.xrange(STREAM)
        assert [(i, f) for i, f in rows] == list(zip(ids, entries(5), strict=True))
        assert await client.smembers("test:registry") == {STREAM}

    run_with_queue(redis_url, scenario)


def test_append_past_the_cap_is_refused_whole(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await queue.append(entries(8), cap=10)
        with pytest.raises(QueueFull) as refused:
            await queue.append(entries(3, 8), cap=10)  # 8 + 3 > 10: none of the three goes in
        assert (refused.value.length, refused.value.cap, refused.value.count) == (8, 10, 3)
        assert isinstance(refused.value, StoreError)
        assert await client.xlen(STREAM) == 8
        await queue.append(entries(2, 8), cap=10)  # exactly up to the cap
        assert await client.xlen(STREAM) == 10
        with pytest.raises(QueueFull):
            await queue.append(entries(1, 10), cap=10)

    run_with_queue(redis_url, scenario)


def test_concurrent_appends_never_pass_the_cap(redis_url: str) -> None:
    """Many clients appending at once: the length check and the appends are one script, so the stream ends at
    the cap exactly, and every batch went in whole or not at all."""

    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        cap, batch = 500, 7

        async def writer(w: int) -> int:
            accepted = 0
            own = redis.Redis.from_url(redis_url, decode_responses=True)  # a client of its own, as a process has
            try:
                mine = RedisQueue(own, STREAM, GROUP)
                for k in range(20):
                    try:
                        await mine.append([{"w": str(w), "k": str(k), "i": str(i)} for i in range(batch)], cap=cap)
                        accepted += 1
                    except QueueFull:
                        pass
            finally:
                await own.aclose()
            return accepted

        accepted = await asyncio.gather(*(writer(w) for w in range(8)))
        length = await client.xlen(STREAM)
        assert length == sum(accepted) * batch
        assert cap - batch < length <= cap
        per_batch: dict[tuple[str, str], int] = {}
        for _, fields in await client.xrange(STREAM):
            key = (fields["w"], fields["k"])
            per_batch[key] = per_batch.get(key, 0) + 1
        assert set(per_batch.values()) == {batch}  # no batch was split

    run_with_queue(redis_url, scenario)


def test_group_delivers_each_entry_once_and_ack_deletes(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await queue.append(entries(10))
        first = await queue.read_new("a", 6)
        second = await queue.read_new("b", 6)
        assert len(first) == 6 and len(second) == 4
        assert {i for i, _ in first}.isdisjoint(i for i, _ in second)
        assert await queue.read_new("a", 6) == []
        stats = await queue.stats()
        assert (stats.length, stats.pending, stats.consumers) == (10, 10, 2)
        assert await queue.ack([i for i, _ in first]) == 6
        stats = await queue.stats()
        assert (stats.length, stats.pending) == (4, 4)  # the length is the backlog
        assert await queue.ack([i for i, _ in second]) == 4
        stats = await queue.stats()
        assert (stats.length, stats.pending, stats.oldest_age) == (0, 0, None)

    run_with_queue(redis_url, scenario)


def test_entries_already_in_the_stream_are_delivered_by_a_new_group(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await client.xadd("test:older", {"n": "1"})
        await client.xadd("test:older", {"n": "2"})
        older = RedisQueue(client, "test:older", GROUP)
        await older.ensure_group()
        await older.ensure_group()  # a second process: the group exists already
        assert [f["n"] for _, f in await older.read_new("a", 10)] == ["1", "2"]

    run_with_queue(redis_url, scenario)


def test_a_dead_consumers_entries_are_claimed_by_another(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await queue.append(entries(5))
        taken = await queue.read_new("dead", 5)
        cursor, claimed, gone = await queue.claim("alive", 60_000, 10)
        assert (claimed, gone) == ([], [])  # not idle long enough
        cursor, claimed, gone = await queue.claim("alive", 0, 10)
        assert cursor == "0-0" and claimed == taken and gone == []
        assert await queue.read_pending("dead", 10) == ([], [])
        pending, _ = await queue.read_pending("alive", 10)
        assert pending == taken

    run_with_queue(redis_url, scenario)


def test_pending_entries_deleted_meanwhile_come_back_apart(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await queue.append(entries(4))
        taken = await queue.read_new("a", 4)
        await client.xdel(STREAM, taken[1][0])  # e.g. the user's data deleted
        pending, gone = await queue.read_pending("a", 10)
        assert [i for i, _ in pending] == [taken[0][0], taken[2][0], taken[3][0]]
        assert gone == [taken[1][0]]
        await queue.ack(gone)
        assert (await queue.stats()).pending == 3

    run_with_queue(redis_url, scenario)


def test_stats_and_forgetting_idle_consumers(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await queue.append(entries(3))
        stats = await queue.stats()
        assert stats.length == 3 and stats.pending == 0
        assert stats.oldest_age is not None and stats.oldest_age >= 0.0
        done = await queue.read_new("finished", 1)
        await queue.ack([i for i, _ in done])
        await queue.read_new("holding", 1)
        assert await queue.forget_consumers(0) == 1  # "holding" has a pending entry: kept
        names = [c["name"] for c in await client.xinfo_consumers(STREAM, GROUP)]
        assert names == ["holding"]

    run_with_queue(redis_url, scenario)


def test_a_deleted_stream_starts_again(redis_url: str) -> None:
    async def scenario(queue: RedisQueue, client: redis.Redis) -> None:
        await queue.append(entries(2))
        await client.delete(STREAM)  # group and all
        assert await queue.read_new("a", 10) == []  # the group is created again
        await queue.append(entries(1))
        assert len(await queue.read_new("a", 10)) == 1

    run_with_queue(redis_url, scenario)
