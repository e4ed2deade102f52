"""A deleted user's next visit is a new identity (SPEC §11): `delete_user` leaves a tombstone (a digest, never the
uid) in the store, every instance sharing the store learns of it (`TombstoneFollower`), and a browser that still sends
the deleted uid gets a new one. On SQLite and a real redis-server; through the real proxy on a shared SQLite file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from test_preview_proxy import Proxy, origin, running, state_for  # the in-process proxy harness
from test_store_user_data import Backend, backend

from edgeproxy.runtime.users import TombstoneFollower, delete_user
from edgeproxy.store import base
from edgeproxy.store.base import tombstone_of
from edgeproxy.visitor.identity import Identity, Tombstones

__all__ = ["backend", "origin"]  # fixtures shared with those modules
OPS = "ops-secret"


def test_a_deletion_leaves_a_tombstone_that_followers_read_in_order(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await store.start()
        try:
            assert await store.deletions_after(0) == ([], 0)
            await store.patch_attributes("P1", "gone-1", {"tier": "gold"})
            await delete_user(store, "gone-1", "test")
            await delete_user(store, "never-stored", "test")  # a deletion is recorded even with nothing stored
            found, cursor = await store.deletions_after(0)
            assert found == [tombstone_of("gone-1"), tombstone_of("never-stored")]
            assert await store.deletions_after(cursor) == ([], cursor)
            await delete_user(store, "gone-2", "test")
            assert (await store.deletions_after(cursor))[0] == [tombstone_of("gone-2")]
            tombstones = Tombstones()
            follower = TombstoneFollower(store, tombstones)
            assert await follower.run_once() == 3
            assert tombstones.deleted("gone-1") and tombstones.deleted("gone-2") and not tombstones.deleted("kept")
            assert await follower.run_once() == 0  # from its cursor on
        finally:
            await store.close()
        if backend.kind == "redis":  # the tombstone is a digest: the uid itself is nowhere in Redis
            client = redis.Redis.from_url(backend.url)
            dump = b"".join(client.dump(key) or b"" for key in client.scan_iter())
            assert b"gone-1" not in dump and b"never-stored" not in dump
        else:
            assert backend.path is not None
            assert b"gone-1" not in backend.path.read_bytes()

    asyncio.run(scenario())


def test_tombstones_are_bounded(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "TOMBSTONES_KEPT", 3)
    for module in ("edgeproxy.store.sqlite_store", "edgeproxy.store.redis_store", "edgeproxy.visitor.identity"):
        monkeypatch.setattr(f"{module}.TOMBSTONES_KEPT", 3)

    async def scenario() -> None:
        store = backend.open()
        await store.start()
        try:
            for n in range(5):
                await store.delete_user(f"u{n}")
            found, _ = await store.deletions_after(0)
            assert found == [tombstone_of(f"u{n}") for n in (2, 3, 4)]
        finally:
            await store.close()
        tombstones = Tombstones()
        tombstones.add(tombstone_of(f"u{n}") for n in range(5))
        assert len(tombstones) == 3 and not tombstones.deleted("u0") and tombstones.deleted("u4")

    asyncio.run(scenario())


def test_renewed_keeps_everyone_else() -> None:
    tombstones = Tombstones()
    kept = Identity({}, "kept", False)
    assert tombstones.renewed(kept) is kept
    tombstones.add([tombstone_of("gone")])
    assert tombstones.renewed(kept) is kept
    renewed = tombstones.renewed(Identity({"a": "1"}, "gone", False))
    assert renewed.user_uid != "gone" and renewed.is_new and renewed.cookies == {"a": "1"}


def test_a_deleted_visitor_starts_a_new_identity_on_every_instance(origin: str, tmp_path: Path) -> None:
    # Two instances on one SQLite file (as `serve --workers N` runs): A deletes, B learns it from the store.
    a_state = state_for(origin, tmp_path, ops_token=OPS)
    b_state = state_for(origin, tmp_path, ops_token=OPS)

    async def scenario() -> None:
        async with running(a_state, origin) as a, running(b_state, origin) as b:
            await _returning(a, "visitor-to-delete")
            deleted = await a.request("DELETE", "/_edgeproxy/users/visitor-to-delete", uid=None,
                                      headers={"Authorization": f"Bearer {OPS}"})  # fmt: skip
            assert deleted.status == 200, deleted
            new_a = await _new_uid(a, "visitor-to-delete")  # at once on the instance that deleted
            assert await _returning(b, "visitor-to-delete")  # B still knows nothing...
            assert await TombstoneFollower(b_state.store, b_state.planner.tombstones).run_once() == 1
            new_b = await _new_uid(b, "visitor-to-delete")  # ...until it reads the store
            assert new_a != new_b
            assert await _returning(a, new_a) and await _returning(b, "someone-else")

    asyncio.run(scenario())


async def _returning(proxy: Proxy, uid: str) -> bool:
    """Whether the proxy decides this visitor under their own uid (the uid cookie it sends back is theirs)."""
    answer, seen = await proxy.echo("/echo", uid=uid)
    cookie = answer.set_cookie("cs-personalize-user-uid") or ""
    return cookie.startswith(f"cs-personalize-user-uid={uid};") and seen["headers"]["x-cs-personalize-user-uid"] == uid


async def _new_uid(proxy: Proxy, old: str) -> str:
    answer, seen = await proxy.echo("/echo", uid=old)
    new = seen["headers"]["x-cs-personalize-user-uid"]
    cookie = answer.set_cookie("cs-personalize-user-uid")
    assert new != old and cookie is not None and cookie.startswith(f"cs-personalize-user-uid={new};"), (new, cookie)
    return str(new)


def test_another_process_drops_its_cached_attributes_of_a_deleted_user(tmp_path: Path) -> None:
    # Two stores on one SQLite file, as two workers: B caches a user's attributes, A deletes the user, and B's
    # follower drops its cached copy (not only the identity) as soon as it reads the tombstone.
    from edgeproxy.store import open_store

    url = f"sqlite:///{tmp_path}/state.db"

    async def scenario() -> None:
        a, b = open_store(url), open_store(url)
        await a.start()
        await b.start()
        try:
            await a.patch_attributes("P1", "cached-user", {"tier": "gold"})
            await a.patch_attributes("P1", "other-user", {"tier": "silver"})
            assert await b.get_attributes("P1", "cached-user") == {"tier": "gold"}
            await b.get_attributes("P1", "other-user")
            assert b.cached_attributes("P1", "cached-user") == {"tier": "gold"}
            await delete_user(a, "cached-user", "test")
            assert b.cached_attributes("P1", "cached-user") == {"tier": "gold"}  # B has not heard yet
            tombstones = Tombstones()
            assert await TombstoneFollower(b, tombstones).run_once() == 1
            assert not b.cached_attributes("P1", "cached-user")  # None (read it) or {} (nothing stored): not gold
            assert b.cached_attributes("P1", "other-user") == {"tier": "silver"}
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
