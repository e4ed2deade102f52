"""SQLite state store: one file, WAL, one writer thread; durable across restarts and kill -9.

Which users have anything stored is known without I/O (issue 20): two Bloom filters (store/bloom.py), of the users
with attribute rows and of those with a behaviour row, built from the tables at start and added to by every write
this process makes, before it is made, so `cached_attributes` answers `{}` at once for a returning visitor with
nothing stored, and never for one this process wrote. Other processes on the same file (`--workers`, a second
`serve`, a CLI) are learned of through `user_rows_log`: triggers append a line for every row a user gains (an
insert, not an update), and `follow_writes` (run by the tombstone follower every 2 s) adds the lines after its cursor
to the filters; a follower that fell behind the log's bound, or a filter filled past its capacity, is rebuilt
from the tables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from edgeproxy.clock import Clock, system_clock
from edgeproxy.store.base import (
    BEHAVIOUR_KEY,
    TOMBSTONE_BATCH,
    TOMBSTONES_KEPT,
    AttributeLimits,
    EventRecord,
    StoreError,
    StoreLimitError,
    check_attributes,
    event_document,
    tombstone_of,
)
from edgeproxy.store.bloom import BloomFilter

T = TypeVar("T")
log = logging.getLogger("edgeproxy.store")

USER_ROWS_KEPT = 100_000  # lines of user_rows_log kept: a follower further behind than this rebuilds its filters
USER_ROWS_BATCH = 10_000  # lines a follower reads at a time
SCAN_BATCH = 20_000  # users read at a time when a filter is built from the tables
SCAN_LOGGED = 250_000  # a build that reads more users than this says how far it is, every this many
OPEN_WAIT_SECONDS = 10.0  # how long opening waits for another process that is opening the same file
FILTER_FALSE_POSITIVES = 0.01  # at `max_users` users: 1% of visitors with nothing stored still cost a read
REBUILD_PAST = 1.5  # a filter is rebuilt once more than this times its capacity was added (its rate climbs)

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
-- Behavioural attributes' state, one row per visitor, read as the attribute BEHAVIOUR_KEY: written
-- behind for every visitor with a page view each second, so the row is lean (the primary key only, no index on
-- updated_at: the TTL purge scans it once a minute).
CREATE TABLE IF NOT EXISTS visitor_behaviour (
    project_uid TEXT NOT NULL,
    user_uid    TEXT NOT NULL,
    state       TEXT NOT NULL,          -- visitor/behaviour.py encode(), as is
    updated_at  REAL NOT NULL,
    PRIMARY KEY (project_uid, user_uid)
) WITHOUT ROWID;
-- A line for every row a user gains (triggers: inserts, not updates), so that every process sharing the file learns
-- which users have rows (SqliteStore.follow_writes). Bounded to the newest USER_ROWS_KEPT lines.
CREATE TABLE IF NOT EXISTS user_rows_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_uid TEXT NOT NULL,
    user_uid    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('attributes', 'behaviour'))
);
CREATE TRIGGER IF NOT EXISTS user_attributes_logged AFTER INSERT ON user_attributes BEGIN
    INSERT INTO user_rows_log (project_uid, user_uid, kind) VALUES (new.project_uid, new.user_uid, 'attributes');
END;
CREATE TRIGGER IF NOT EXISTS visitor_behaviour_logged AFTER INSERT ON visitor_behaviour BEGIN
    INSERT INTO user_rows_log (project_uid, user_uid, kind) VALUES (new.project_uid, new.user_uid, 'behaviour');
END;
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


def _move_behaviour_rows(db: sqlite3.Connection) -> None:
    """A state file written before the `visitor_behaviour` table kept behaviour as the attribute BEHAVIOUR_KEY:
    those rows move to the table (once; `user_version` records it)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "INSERT OR IGNORE INTO visitor_behaviour SELECT project_uid, user_uid, json_extract(value, '$'), "
            "updated_at FROM user_attributes WHERE key=? AND json_type(value)='text'",
            (BEHAVIOUR_KEY,),
        )
        db.execute("DELETE FROM user_attributes WHERE key=?", (BEHAVIOUR_KEY,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


UserKey = tuple[str, str]  # (project uid, user uid)
USER_TABLES = {"attributes": "user_attributes", "behaviour": "visitor_behaviour"}


class StoredUsers:
    """Which users have attribute rows and which a behaviour row, as far as this process knows (two Bloom filters,
    each sized for `capacity` users): "no" is certain for every user this process wrote, and for what the file
    held at the last build and the last line of `user_rows_log` read (`cursor`). Changed on the store's thread
    only; read on the event loop."""

    __slots__ = ("attributes", "behaviour", "cursor")

    def __init__(self, capacity: int, cursor: int = 0) -> None:
        self.attributes = BloomFilter(capacity, FILTER_FALSE_POSITIVES)
        self.behaviour = BloomFilter(capacity, FILTER_FALSE_POSITIVES)
        self.cursor = cursor

    def of(self, kind: str) -> BloomFilter:
        return self.attributes if kind == "attributes" else self.behaviour


def _log_cursor(db: sqlite3.Connection) -> int:
    """The last line written to user_rows_log (0: none yet); lines after it are news to a follower."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='user_rows_log'").fetchone()
    return int(row[0]) if row else 0


def _users_after(db: sqlite3.Connection, kind: str, after: UserKey | None) -> list[UserKey]:
    """The next SCAN_BATCH users with rows in `kind`'s table after `after`, in primary key order."""
    table = USER_TABLES[kind]
    if after is None:
        return db.execute(f"SELECT DISTINCT project_uid, user_uid FROM {table} ORDER BY project_uid, user_uid "
                          "LIMIT ?", (SCAN_BATCH,)).fetchall()  # fmt: skip
    return db.execute(f"SELECT DISTINCT project_uid, user_uid FROM {table} WHERE (project_uid, user_uid) > (?, ?) "
                      "ORDER BY project_uid, user_uid LIMIT ?", (*after, SCAN_BATCH)).fetchall()  # fmt: skip


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
        # Read-through cache of attributes: exact for this process's writes; another process's updates of a user
        # cached here are not seen (its deletions are: forget_deleted).
        self._cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._cache_users = cache_users
        self._last_purge = 0.0
        self._users = StoredUsers(limits.max_users)  # built from the file at start
        self._adds_while_rebuilding: list[tuple[UserKey, str]] | None = None
        self._rebuild_past = int(REBUILD_PAST * limits.max_users)

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
            if int(db.execute("PRAGMA user_version").fetchone()[0]) < 1:
                _move_behaviour_rows(db)
                db.execute("PRAGMA user_version=1")
            started = time.perf_counter()
            db.execute("BEGIN")  # one snapshot: the tables and the log's last line
            try:
                users = StoredUsers(self.limits.max_users, _log_cursor(db))
                for kind in USER_TABLES:
                    after = _users_after(db, kind, None)
                    while after:
                        after = self._scan_into(db, users, kind, after)
            finally:
                db.execute("COMMIT")
            self._users = users
            if users.attributes.added + users.behaviour.added > SCAN_LOGGED:
                log.info("stored users read into memory: %d with attributes, %d with behaviour, in %.1f s (%s)",
                         users.attributes.added, users.behaviour.added, time.perf_counter() - started,
                         self.path)  # fmt: skip
            return db

        def open_when_free() -> sqlite3.Connection:
            # Processes sharing the file (`--workers N`) open it at once: switching a new file to WAL and creating
            # its tables take locks that SQLite's busy timeout does not always wait for ("database is locked" at
            # once), so the opening is tried again, for as long as the busy timeout would have waited.
            deadline = time.monotonic() + OPEN_WAIT_SECONDS
            while True:
                try:
                    return open_db()
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, open_when_free)
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

    def _scan_into(self, db: sqlite3.Connection, users: StoredUsers, kind: str, found: list[UserKey]) -> list[UserKey]:
        """Add a batch of users (`_users_after`) to `users`' filter of `kind`; the next batch ([] at the end)."""
        into = users.of(kind)
        before = into.added
        into.add_all(found)
        if into.added // SCAN_LOGGED > before // SCAN_LOGGED:
            log.info("reading stored users into memory (%s): %d with %s so far", self.path, into.added, kind)
        return _users_after(db, kind, (found[-1][0], found[-1][1])) if len(found) == SCAN_BATCH else []

    def _will_have_rows(self, key: UserKey, kind: str) -> None:
        """On the store's thread, before a write that may give `key` rows of `kind`: from now on, not "nothing
        stored" (also in the filters a rebuild is reading, which replace these when it ends)."""
        self._users.of(kind).add(key)
        if self._adds_while_rebuilding is not None:
            self._adds_while_rebuilding.append((key, kind))

    def _remember(self, key: tuple[str, str], attributes: dict[str, Any]) -> None:
        self._cache[key] = attributes
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_users:
            self._cache.popitem(last=False)

    def cached_attributes(
        self, project_uid: str, user_uid: str, *, behaviour_at_hand: bool = False
    ) -> dict[str, Any] | None:
        """The attributes `get_attributes` would return, from its in-process cache, or `{}` when the user has no
        rows (no attribute rows and, unless the caller holds their behaviour, no behaviour row) as far as this
        process knows; None: read them (`get_attributes`)."""
        key = (project_uid, user_uid)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        users = self._users
        if key in users.attributes or (not behaviour_at_hand and key in users.behaviour):
            return None
        return {}

    async def get_attributes(self, project_uid: str, user_uid: str) -> dict[str, Any]:
        key = (project_uid, user_uid)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        horizon = self.clock() - self.limits.ttl_seconds

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            found = self._read_user(db, project_uid, user_uid, horizon)
            if any(name != BEHAVIOUR_KEY for name in found):  # perhaps another process's, not yet followed
                self._users.attributes.add(key)
            if BEHAVIOUR_KEY in found:
                self._users.behaviour.add(key)
            return found

        attributes = await self._run(read)
        self._remember(key, attributes)
        return attributes

    @staticmethod
    def _read_user(db: sqlite3.Connection, project_uid: str, user_uid: str, horizon: float) -> dict[str, Any]:
        """A user's attributes not expired at `horizon`, their behaviour (if any) as BEHAVIOUR_KEY."""
        rows = db.execute(
            "SELECT key, value FROM user_attributes WHERE project_uid=? AND user_uid=? AND updated_at>=?",
            (project_uid, user_uid, horizon),
        ).fetchall()
        attributes = {k: json.loads(v) for k, v in rows}
        behaviour = db.execute(
            "SELECT state FROM visitor_behaviour WHERE project_uid=? AND user_uid=? AND updated_at>=?",
            (project_uid, user_uid, horizon),
        ).fetchone()
        if behaviour is not None:
            attributes[BEHAVIOUR_KEY] = behaviour[0]
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
            behaviour = db.execute(
                "SELECT state FROM visitor_behaviour WHERE project_uid=? AND user_uid=?", (project_uid, user_uid)
            ).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        attributes = {k: json.loads(v) for k, v in rows}
        if behaviour is not None:
            attributes[BEHAVIOUR_KEY] = behaviour[0]
        return attributes

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
        user = (project_uid, user_uid)

        def write(db: sqlite3.Connection) -> dict[str, Any]:
            self._will_have_rows(user, "attributes")
            return self._write_user(db, project_uid, user_uid, now, statements)

        self._remember(user, await self._run(write))
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
        copy_behaviour = (  # the source's behaviour wins too, as its attributes do
            "INSERT INTO visitor_behaviour SELECT project_uid, ?, state, ? FROM visitor_behaviour "
            "WHERE project_uid=? AND user_uid=? ON CONFLICT (project_uid, user_uid) DO UPDATE SET "
            "state=excluded.state, updated_at=excluded.updated_at",
            (target_uid, now, project_uid, source_uid),
        )
        key = (project_uid, target_uid)

        def write(db: sqlite3.Connection) -> dict[str, Any]:
            self._will_have_rows(key, "attributes")  # whatever the source has (another process may have written it)
            self._will_have_rows(key, "behaviour")
            return self._write_user(db, project_uid, target_uid, now, [copy, copy_behaviour])

        self._remember(key, await self._run(write))

    async def put_behaviour(
        self, project_uid: str, states: dict[str, str], *, new: Collection[str] | None = None
    ) -> None:
        """One statement upserts every visitor, its rows read from one JSON object (`json_each`): executemany
        would hand the GIL to and from the event loop once per row, which costs the loop more than the writes.
        The read-through cache is left as it is: the behaviour tracker that writes these holds them newer. Only
        the `new` users are marked in the filter of users with behaviour rows (each mark costs ~2 µs, and a flush
        of page-view counts rewrites every active visitor's row; the others were marked by their first write)."""
        if not states:
            return
        params = (project_uid, self.clock(), json.dumps(states, ensure_ascii=False))
        marking = states if new is None else new

        def upsert(db: sqlite3.Connection) -> None:
            for user in marking:
                self._will_have_rows((project_uid, user), "behaviour")
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO visitor_behaviour SELECT ?, key, value, ? FROM json_each(?) WHERE true "
                    "ON CONFLICT (project_uid, user_uid) DO UPDATE SET state=excluded.state, "
                    "updated_at=excluded.updated_at",
                    params,
                ).close()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(upsert)
        await self._maybe_purge()

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
        """The projects that have attributes or behaviour, one primary-key seek each (no scan of a table: there
        is no index on user_uid alone, and a project has many users)."""
        projects: set[str] = set()
        for table in ("user_attributes", "visitor_behaviour"):
            row = db.execute(f"SELECT min(project_uid) FROM {table}").fetchone()
            while row[0] is not None:
                projects.add(row[0])
                row = db.execute(f"SELECT min(project_uid) FROM {table} WHERE project_uid > ?", (row[0],)).fetchone()
        return sorted(projects)

    async def user_data(self, user_uid: str) -> dict[str, Any]:
        """Attributes: per project, by primary key. Events: one pass over the events table (no index leads with
        user_uid; one would cost every append an extra index write), read in one snapshot."""
        horizon = self.clock() - self.limits.ttl_seconds

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            db.execute("BEGIN")  # one read snapshot for attributes and events
            try:
                attributes: dict[str, dict[str, Any]] = {}
                for project in self._projects(db):
                    found = self._read_user(db, project, user_uid, horizon)
                    if found:
                        attributes[project] = found
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
                        removed += db.execute(
                            "DELETE FROM visitor_behaviour WHERE project_uid=? AND user_uid=?", (project, user_uid)
                        ).rowcount
                        projects += removed > 0
                    events = db.execute("DELETE FROM events WHERE user_uid=?", (user_uid,)).rowcount
                    db.execute("DELETE FROM user_rows_log WHERE user_uid=?", (user_uid,))  # its uid: one pass
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

    async def follow_writes(self) -> int:
        """Add the users that gained rows through other processes (user_rows_log after this process's cursor) to
        the filters; rebuild them from the tables instead when lines this process had not read were dropped (the
        log keeps USER_ROWS_KEPT) or when a filter holds more than REBUILD_PAST times its capacity. Returns how
        many lines were read (or users, for a rebuild)."""
        users = self._users
        if max(users.attributes.added, users.behaviour.added) > self._rebuild_past:
            return await self.rebuild_filters("more users were added than the filters were sized for")

        def read(db: sqlite3.Connection) -> int | None:
            cursor = users.cursor
            oldest = db.execute("SELECT min(seq) FROM user_rows_log").fetchone()[0]
            if oldest is not None and oldest > cursor + 1:
                return None  # lines this process had not read were dropped
            lines = db.execute("SELECT seq, project_uid, user_uid, kind FROM user_rows_log WHERE seq > ? "
                               "ORDER BY seq LIMIT ?", (cursor, USER_ROWS_BATCH)).fetchall()  # fmt: skip
            for _, project_uid, user_uid, kind in lines:
                users.of(kind).add((project_uid, user_uid))
            if lines:
                users.cursor = lines[-1][0]
            return len(lines)

        followed = 0
        while True:
            read_now = await self._run(read)
            if read_now is None:
                return await self.rebuild_filters("other processes wrote more users than this one had read")
            followed += read_now
            if read_now < USER_ROWS_BATCH:
                return followed

    async def rebuild_filters(self, why: str) -> int:
        """Build the filters again from the tables, a batch at a time between the store's other work, and put
        them in place of the old ones (which answer meanwhile); this process's writes meanwhile go into both.
        Returns how many users were read."""
        capacity = self.limits.max_users
        log.info("rebuilding the filters of stored users from %s: %s", self.path, why)
        self._adds_while_rebuilding = []
        try:
            users = StoredUsers(capacity, await self._run(_log_cursor))  # lines after it are followed afterwards
            for kind in USER_TABLES:
                found = await self._run(partial(_users_after, kind=kind, after=None))
                while found:
                    found = await self._run(partial(self._scan_into, users=users, kind=kind, found=found))

            def put_in_place(db: sqlite3.Connection) -> None:
                for key, kind in self._adds_while_rebuilding or ():
                    users.of(kind).add(key)
                self._users, self._adds_while_rebuilding = users, None

            await self._run(put_in_place)
        finally:
            self._adds_while_rebuilding = None
        read = users.attributes.added + users.behaviour.added
        self._rebuild_past = max(int(REBUILD_PAST * capacity), max(users.attributes.added, users.behaviour.added)
                                 + capacity // 2)  # fmt: skip
        log.info("filters of stored users rebuilt: %d with attributes, %d with behaviour", users.attributes.added,
                 users.behaviour.added)  # fmt: skip
        return read

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

        def purge(db: sqlite3.Connection) -> int:
            changes = db.total_changes
            db.execute("DELETE FROM user_attributes WHERE updated_at < ?", (horizon,))
            db.execute("DELETE FROM visitor_behaviour WHERE updated_at < ?", (horizon,))  # a scan, once a minute
            behaviours = int(db.execute("SELECT count(*) FROM visitor_behaviour").fetchone()[0])
            if behaviours > max_users:  # the least recently seen visitors' behaviour goes first
                db.execute(
                    "DELETE FROM visitor_behaviour WHERE (project_uid, user_uid) IN (SELECT project_uid, user_uid "
                    "FROM visitor_behaviour ORDER BY updated_at LIMIT ?)",
                    (behaviours - max_users,),
                )
            users = db.execute("SELECT count(DISTINCT project_uid || ' ' || user_uid) FROM user_attributes").fetchone()
            excess = int(users[0]) - max_users
            if excess > 0:
                db.execute(
                    "DELETE FROM user_attributes WHERE (project_uid, user_uid) IN (SELECT project_uid, user_uid "
                    "FROM user_attributes GROUP BY project_uid, user_uid ORDER BY max(updated_at) LIMIT ?)",
                    (excess,),
                )
            removed = db.total_changes - changes
            db.execute("DELETE FROM user_rows_log WHERE seq <= ?", (_log_cursor(db) - USER_ROWS_KEPT,))
            return removed

        if await self._run(purge):
            self._cache.clear()  # some cached user may have lost attributes
