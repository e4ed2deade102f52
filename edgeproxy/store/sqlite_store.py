"""SQLite state store: one file, WAL, one writer thread; durable across restarts and kill -9."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edgeproxy.clock import Clock, system_clock
from edgeproxy.store.base import (
    TOMBSTONE_BATCH,
    TOMBSTONES_KEPT,
    AttributeLimits,
    EventRecord,
    StoreError,
    StoreLimitError,
    check_attributes,
    encode_value,
    event_document,
    tombstone_of,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS user_attributes (
    project_uid TEXT NOT NULL,
    user_uid    TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,          -- JSON
    updated_at  REAL NOT NULL,
    PRIMARY KEY (project_uid, user_uid, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_attributes_updated ON user_attributes (updated_at);
CREATE TABLE IF NOT EXISTS deleted_users (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tombstone   TEXT NOT NULL UNIQUE,     -- tombstone_of(uid): never the uid itself
    deleted_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id                    INTEGER PRIMARY KEY,
    ts                    REAL NOT NULL,
    project_uid           TEXT NOT NULL,
    user_uid              TEXT NOT NULL,
    type                  TEXT NOT NULL CHECK (type IN ('IMPRESSION', 'EVENT')),
    experience_short_uid  TEXT,
    variant_short_uid     TEXT,
    event_key             TEXT,
    source                TEXT NOT NULL DEFAULT 'sdk'
);
CREATE INDEX IF NOT EXISTS events_impressions ON events (project_uid, experience_short_uid, variant_short_uid, user_uid)
    WHERE type = 'IMPRESSION';
CREATE INDEX IF NOT EXISTS events_custom ON events (project_uid, event_key, user_uid) WHERE type = 'EVENT';
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""


class SqliteStore:
    """All SQL runs on one thread (sqlite3 objects are not shareable), off the event loop."""

    def __init__(
        self, path: str, limits: AttributeLimits, cache_users: int = 50_000, clock: Clock = system_clock
    ) -> None:
        self.path = path
        self.clock = clock
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeproxy-sqlite")
        self._db: sqlite3.Connection | None = None
        # Read-through cache of attributes; writes go through this process, so it stays exact.
        self._cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._cache_users = cache_users
        self._last_purge = 0.0

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise StoreError("store is closed")
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def start(self) -> None:
        def open_db() -> sqlite3.Connection:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: committed data survives a process crash
            db.executescript(SCHEMA)
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, open_db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite state {self.path}: {exc}") from exc

    async def close(self) -> None:
        db = self._db
        if db is not None:

            def shut() -> None:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.close()

            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
            self._db = None
        self._executor.shutdown(wait=True)

    def _remember(self, key: tuple[str, str], attributes: dict[str, Any]) -> None:
        self._cache[key] = attributes
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_users:
            self._cache.popitem(last=False)

    def cached_attributes(self, project_uid: str, user_uid: str) -> dict[str, Any] | None:
        """The attributes `get_attributes` would return from its in-process cache, or None (not cached)."""
        return self._cache.get((project_uid, user_uid))

    async def get_attributes(self, project_uid: str, user_uid: str) -> dict[str, Any]:
        key = (project_uid, user_uid)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        horizon = self.clock() - self.limits.ttl_seconds

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            rows = db.execute(
                "SELECT key, value FROM user_attributes WHERE project_uid=? AND user_uid=? AND updated_at>=?",
                (project_uid, user_uid, horizon),
            ).fetchall()
            return {k: json.loads(v) for k, v in rows}

        attributes = await self._run(read)
        self._remember(key, attributes)
        return attributes

    def _write_user(
        self, db: sqlite3.Connection, project_uid: str, user_uid: str, now: float, statements: list[tuple[str, Any]]
    ) -> dict[str, Any]:
        """Run `statements` in one immediate transaction, refresh the user's TTL and enforce the per-user cap;
        nothing is written when the cap would be exceeded. Returns the user's attributes after the write."""
        cap = self.limits.max_attributes_per_user
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.execute(  # a write refreshes the TTL of all of the user's attributes
                "UPDATE user_attributes SET updated_at=? WHERE project_uid=? AND user_uid=?",
                (now, project_uid, user_uid),
            )
            rows = db.execute(
                "SELECT key, value FROM user_attributes WHERE project_uid=? AND user_uid=?", (project_uid, user_uid)
            ).fetchall()
            if len(rows) > cap:
                raise StoreLimitError(f"user {user_uid!r} would have {len(rows)} attributes; at most {cap} per user")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {k: json.loads(v) for k, v in rows}

    async def patch_attributes(self, project_uid: str, user_uid: str, attributes: dict[str, Any]) -> None:
        encoded = check_attributes(attributes, self.limits)
        now = self.clock()
        statements: list[tuple[str, Any]] = []
        for key, text in encoded.items():
            if text == "null":
                statements.append((
                    "DELETE FROM user_attributes WHERE project_uid=? AND user_uid=? AND key=?",
                    (project_uid, user_uid, key),
                ))  # fmt: skip
            else:
                statements.append((
                    "INSERT INTO user_attributes VALUES (?,?,?,?,?) ON CONFLICT (project_uid, user_uid, key) "
                    "DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                    (project_uid, user_uid, key, text, now),
                ))  # fmt: skip
        stored = await self._run(lambda db: self._write_user(db, project_uid, user_uid, now, statements))
        self._remember((project_uid, user_uid), stored)
        await self._maybe_purge()

    async def merge_attributes(self, project_uid: str, source_uid: str, target_uid: str) -> None:
        now = self.clock()
        copy = (
            "INSERT INTO user_attributes (project_uid, user_uid, key, value, updated_at) "
            "SELECT project_uid, ?, key, value, ? FROM user_attributes WHERE project_uid=? AND user_uid=? "
            "ON CONFLICT (project_uid, user_uid, key) DO UPDATE SET value=excluded.value, "
            "updated_at=excluded.updated_at",
            (target_uid, now, project_uid, source_uid),
        )
        stored = await self._run(lambda db: self._write_user(db, project_uid, target_uid, now, [copy]))
        self._remember((project_uid, target_uid), stored)

    async def put_attributes(self, project_uid: str, users: dict[str, dict[str, Any]]) -> None:
        if not users:
            return
        now = self.clock()
        rows = [(project_uid, user, key, encode_value(value), now) for user, values in users.items()
                for key, value in values.items()]  # fmt: skip

        def upsert(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO user_attributes VALUES (?,?,?,?,?) ON CONFLICT (project_uid, user_uid, key) "
                    "DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                    rows,
                ).close()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(upsert)
        for user, values in users.items():  # the read-through cache stays exact for what this process wrote
            cached = self._cache.get((project_uid, user))
            if cached is not None:
                self._cache[(project_uid, user)] = {**cached, **values}

    async def append_events(self, events: list[EventRecord]) -> None:
        if not events:
            return
        rows = [
            (
                e.ts,
                e.project_uid,
                e.user_uid,
                e.type,
                e.experience_short_uid,
                e.variant_short_uid,
                e.event_key,
                e.source,
            )
            for e in events
        ]

        def insert(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT INTO events (ts, project_uid, user_uid, type, experience_short_uid, variant_short_uid, "
                    "event_key, source) VALUES (?,?,?,?,?,?,?,?)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(insert)

    async def count_events(self, project_uid: str) -> int:
        def count(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT count(*) FROM events WHERE project_uid=?", (project_uid,)).fetchone()[0])

        return await self._run(count)

    @staticmethod
    def _projects(db: sqlite3.Connection) -> list[str]:
        """The projects that have attributes, one primary-key seek each (no scan of the table: there is no
        index on user_uid alone, and a project has many users)."""
        projects: list[str] = []
        row = db.execute("SELECT min(project_uid) FROM user_attributes").fetchone()
        while row[0] is not None:
            projects.append(row[0])
            row = db.execute("SELECT min(project_uid) FROM user_attributes WHERE project_uid > ?", (row[0],)).fetchone()
        return projects

    async def user_data(self, user_uid: str) -> dict[str, Any]:
        """Attributes: per project, by primary key. Events: one pass over the events table (no index leads with
        user_uid; one would cost every append an extra index write), read in one snapshot."""
        horizon = self.clock() - self.limits.ttl_seconds

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            db.execute("BEGIN")  # one read snapshot for attributes and events
            try:
                attributes: dict[str, dict[str, Any]] = {}
                for project in self._projects(db):
                    rows = db.execute(
                        "SELECT key, value FROM user_attributes WHERE project_uid=? AND user_uid=? AND updated_at>=?",
                        (project, user_uid, horizon),
                    ).fetchall()
                    if rows:
                        attributes[project] = {k: json.loads(v) for k, v in rows}
                events = [
                    event_document(EventRecord(ts, project, user_uid, kind, experience, variant, key, source))
                    for ts, project, kind, experience, variant, key, source in db.execute(
                        "SELECT ts, project_uid, type, experience_short_uid, variant_short_uid, event_key, source "
                        "FROM events NOT INDEXED WHERE user_uid=? ORDER BY ts, id",  # one table scan, not events_ts
                        (user_uid,),
                    )
                ]
            finally:
                db.execute("COMMIT")
            return {"userUid": user_uid, "attributes": attributes, "events": events}

        return await self._run(read)

    async def delete_user(self, user_uid: str) -> dict[str, int]:
        """One immediate transaction on the store's thread: the user's attribute rows in every project (by primary
        key) and every event of theirs (one pass over the events table). `secure_delete` is on for this
        transaction only, so the freed bytes are zeroed, and the WAL is checkpointed and truncated after it, so
        no copy of the rows is left in the files (unless another connection holds the WAL open)."""

        def delete(db: sqlite3.Connection) -> dict[str, int]:
            secure = int(db.execute("PRAGMA secure_delete").fetchone()[0])
            db.execute("PRAGMA secure_delete=ON")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    projects = 0
                    for project in self._projects(db):
                        removed = db.execute(
                            "DELETE FROM user_attributes WHERE project_uid=? AND user_uid=?", (project, user_uid)
                        ).rowcount
                        projects += removed > 0
                    events = db.execute("DELETE FROM events WHERE user_uid=?", (user_uid,)).rowcount
                    db.execute("DELETE FROM deleted_users WHERE tombstone=?", (tombstone_of(user_uid),))
                    db.execute("INSERT INTO deleted_users (tombstone, deleted_at) VALUES (?, ?)",
                               (tombstone_of(user_uid), self.clock()))  # fmt: skip
                    db.execute("DELETE FROM deleted_users WHERE seq <= (SELECT max(seq) FROM deleted_users) - ?",
                               (TOMBSTONES_KEPT,))  # fmt: skip
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            finally:
                db.execute(f"PRAGMA secure_delete={secure}")  # as it was (some builds default to on)
            if projects or events:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return {"attributes": projects, "events": events}

        self._forget(user_uid)
        counts = await self._run(delete)
        self._forget(user_uid)  # a read that finished while the delete was queued may have cached the old rows
        return counts

    def forget_deleted(self, tombstones: set[str]) -> int:
        """The read-through attribute cache's entries of deleted users (digests: each cached uid is hashed, which
        happens only when another process deleted someone)."""
        gone = [key for key in self._cache if tombstone_of(key[1]) in tombstones]
        for key in gone:
            del self._cache[key]
        return len(gone)

    def _forget(self, user_uid: str) -> None:
        for key in [key for key in self._cache if key[1] == user_uid]:
            del self._cache[key]

    async def deletions_after(self, cursor: int) -> tuple[list[str], int]:
        def read(db: sqlite3.Connection) -> tuple[list[str], int]:
            rows = db.execute("SELECT seq, tombstone FROM deleted_users WHERE seq > ? ORDER BY seq LIMIT ?",
                              (cursor, TOMBSTONE_BATCH)).fetchall()  # fmt: skip
            return [row[1] for row in rows], (rows[-1][0] if rows else cursor)

        return await self._run(read)

    async def purge_events(self, older_than: float, limit: int) -> int:
        """The oldest `limit` events before `older_than`, found through the `events_ts` index."""
        if limit <= 0:
            return 0

        def purge(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? ORDER BY ts LIMIT ?)",
                (older_than, limit),
            ).rowcount

        return await self._run(purge)

    async def _maybe_purge(self) -> None:
        """Expire attributes past their TTL and keep at most `max_users` users (oldest writes go first)."""
        now = self.clock()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        horizon = now - self.limits.ttl_seconds
        max_users = self.limits.max_users

        def purge(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM user_attributes WHERE updated_at < ?", (horizon,))
            users = db.execute("SELECT count(DISTINCT project_uid || ' ' || user_uid) FROM user_attributes").fetchone()
            excess = int(users[0]) - max_users
            if excess > 0:
                db.execute(
                    "DELETE FROM user_attributes WHERE (project_uid, user_uid) IN (SELECT project_uid, user_uid "
                    "FROM user_attributes GROUP BY project_uid, user_uid ORDER BY max(updated_at) LIMIT ?)",
                    (excess,),
                )

        await self._run(purge)
        self._cache.clear()
