"""The forwarding outbox (SPEC §12): a durable queue of accepted writes, in the state store's place.

With `state = sqlite:///…` it is three tables in the same file (WAL; one transaction per accepted write, so a write
that got its 2xx survives kill -9); with `state = redis://…` it is a Redis stream (redis_outbox.py). Workers and
fleet instances share it; a lease lets one process send at a time, so each user's writes go out in the order they
were accepted, and a dead holder's lease runs out and another process takes over what it had not sent.

At-least-once: an entry leaves the queue only after the Edge API's 2xx (`ack`) or a permanent refusal (`bury`:
kept in the dead letters with the reason until `edgeproxy forward retry|drop`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from edgeproxy.forward.items import ForwardItem, decode_item, encode_item
from edgeproxy.store.base import StoreError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """A queued write as read back: `item` None when the stored bytes are not a write this build reads (buried
    with that reason, never sent)."""

    id: str
    item: ForwardItem | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    item: ForwardItem | None
    reason: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class Backlog:
    queued: int
    dead: int
    oldest_queued_at: float | None  # of the queued writes; None when none is queued
    refused: int  # writes not queued because the outbox was full, ever (kept with the outbox)
    holder: str  # the process holding the sending lease, "" when none does


class OutboxFull(StoreError):
    """An append refused by the outbox itself: it holds `length` writes (queued plus dead letters), `items` more
    would pass its bound. The Redis outbox checks this with the append, atomically across a fleet."""

    def __init__(self, length: int, bound: int, items: int) -> None:
        super().__init__(f"forwarding outbox holds {length} writes; {items} more would pass forward_outbox_max {bound}")
        self.length = length


class Outbox(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, items: Sequence[ForwardItem]) -> None:
        """Queue `items` durably, in order (one transaction); OutboxFull when the outbox checks its bound and is
        full (nothing queued), StoreError when that cannot be done."""
        ...

    async def hold(self, owner: str, seconds: float, now: float) -> bool:
        """Take the sending lease for `seconds`, or keep it when `owner` holds it; False when another does."""
        ...

    async def release(self, owner: str) -> None:
        """Give the lease up (a clean shutdown), so another process takes over at once."""
        ...

    async def window(self, owner: str, limit: int) -> list[Entry]:
        """The first `limit` queued entries in queue order (for the lease holder `owner`)."""
        ...

    async def ack(self, ids: Sequence[str]) -> None:
        """These entries were sent: they leave the queue."""
        ...

    async def bury(self, dead: Sequence[tuple[Entry, str]], now: float) -> None:
        """These entries were refused for good: they move to the dead letters, each with its reason."""
        ...

    async def backlog(self, now: float) -> Backlog:
        """The outbox's size, its oldest queued write, refusals, and who holds the lease at `now` (as `hold`)."""
        ...

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The oldest `limit` dead letters."""
        ...

    async def revive(self) -> int:
        """Every dead letter back into the queue (at its end); returns how many."""
        ...

    async def drop(self, queued: bool) -> int:
        """Delete the dead letters (and, with `queued`, every queued write too); returns how many went."""
        ...

    async def delete_user(self, user_uid: str) -> int:
        """Remove every queued write and dead letter that concerns `user_uid` (SPEC §11); returns how many."""
        ...

    async def count_refused(self, n: int) -> None:
        """`n` more writes were refused because the outbox was full."""
        ...

    async def user_writes(self, user_uid: str) -> list[tuple[str, ForwardItem]]:
        """Every queued write ("queued") and dead letter ("dead") that concerns `user_uid`, oldest first within
        each (SPEC §11 export)."""
        ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS forward_queue (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    item       BLOB NOT NULL,            -- items.encode_item
    queued_at  REAL NOT NULL,
    order_uid  TEXT NOT NULL,            -- the user whose writes keep their order
    other_uid  TEXT NOT NULL DEFAULT ''  -- a merge's source user
);
CREATE INDEX IF NOT EXISTS forward_queue_user ON forward_queue (order_uid);
CREATE INDEX IF NOT EXISTS forward_queue_other ON forward_queue (other_uid);
CREATE TABLE IF NOT EXISTS forward_dead (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    item       BLOB NOT NULL,
    reason     TEXT NOT NULL,
    queued_at  REAL NOT NULL,
    failed_at  REAL NOT NULL,
    order_uid  TEXT NOT NULL,
    other_uid  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS forward_meta (
    name   TEXT PRIMARY KEY,             -- 'lease' (owner, until) or 'refused' (count)
    owner  TEXT NOT NULL DEFAULT '',
    until  REAL NOT NULL DEFAULT 0,
    count  INTEGER NOT NULL DEFAULT 0
);
"""


class SqliteOutbox:
    """The outbox in the SQLite state file: its own connection and thread (the state store's stay free for
    attribute reads), WAL; workers of one machine open the same file and share it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeproxy-outbox")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:  # closed (or never opened): its thread may be gone too
            raise StoreError("forwarding outbox is closed")

        def call() -> T:
            if self._db is None:
                raise StoreError("forwarding outbox is closed")
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"forwarding outbox in SQLite {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def start(self) -> None:
        def open_db() -> sqlite3.Connection:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed write survives a process crash
            db.executescript(SCHEMA)
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, open_db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the forwarding outbox in SQLite {self.path}: {exc}") from exc

    async def close(self) -> None:
        db = self._db
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    @staticmethod
    def _transaction(db: sqlite3.Connection, statements: Callable[[], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = statements()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    async def append(self, items: Sequence[ForwardItem]) -> None:
        if not items:
            return
        rows = [(encode_item(i), i.queued_at, i.orders_by, i.other_uid) for i in items]

        def insert(db: sqlite3.Connection) -> None:
            self._transaction(
                db,
                lambda: db.executemany(
                    "INSERT INTO forward_queue (item, queued_at, order_uid, other_uid) VALUES (?,?,?,?)", rows
                ),
            )

        await self._run(insert)

    async def hold(self, owner: str, seconds: float, now: float) -> bool:
        def take(db: sqlite3.Connection) -> bool:
            db.execute(
                "INSERT INTO forward_meta (name, owner, until) VALUES ('lease', ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET owner=excluded.owner, until=excluded.until WHERE owner=excluded.owner OR until < ?",
                (owner, now + seconds, now),
            )
            row = db.execute("SELECT owner FROM forward_meta WHERE name='lease'").fetchone()
            return bool(row and row[0] == owner)

        return await self._run(take)

    async def release(self, owner: str) -> None:
        await self._run(
            lambda db: _execute(db, "UPDATE forward_meta SET until=0 WHERE name='lease' AND owner=?", [(owner,)])
        )

    async def window(self, owner: str, limit: int) -> list[Entry]:
        def read(db: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return db.execute("SELECT seq, item FROM forward_queue ORDER BY seq LIMIT ?", (limit,)).fetchall()

        return [_entry(str(seq), raw) for seq, raw in await self._run(read)]

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            rows = [(int(i),) for i in ids]
            await self._run(lambda db: _execute(db, "DELETE FROM forward_queue WHERE seq=?", rows))

    async def bury(self, dead: Sequence[tuple[Entry, str]], now: float) -> None:
        if not dead:
            return
        seqs = [(int(entry.id),) for entry, _ in dead]
        reasons = {int(entry.id): reason for entry, reason in dead}

        def move(db: sqlite3.Connection) -> None:
            def statements() -> None:
                for (seq,) in seqs:
                    row = db.execute(
                        "SELECT item, order_uid, other_uid, queued_at FROM forward_queue WHERE seq=?", (seq,)
                    ).fetchone()
                    if row is not None:  # gone already: deleted with its user, or dropped
                        db.execute(
                            "INSERT INTO forward_dead (item, reason, queued_at, failed_at, order_uid, other_uid) "
                            "VALUES (?,?,?,?,?,?)",
                            (row[0], reasons[seq], row[3], now, row[1], row[2]),
                        )
                db.executemany("DELETE FROM forward_queue WHERE seq=?", seqs)

            self._transaction(db, statements)

        await self._run(move)

    async def backlog(self, now: float) -> Backlog:
        def read(db: sqlite3.Connection) -> Backlog:
            db.execute("BEGIN")  # one read snapshot
            try:
                queued = db.execute("SELECT count(*) FROM forward_queue").fetchone()[0]
                oldest = db.execute("SELECT queued_at FROM forward_queue ORDER BY seq LIMIT 1").fetchone()
                dead = db.execute("SELECT count(*) FROM forward_dead").fetchone()[0]
                meta = dict(db.execute("SELECT name, count FROM forward_meta WHERE name='refused'").fetchall())
                lease = db.execute("SELECT owner, until FROM forward_meta WHERE name='lease'").fetchone()
            finally:
                db.execute("COMMIT")
            holder = lease[0] if lease and lease[1] > now else ""  # a lease that ran out is no one's
            return Backlog(int(queued), int(dead), oldest[0] if oldest else None, int(meta.get("refused", 0)), holder)

        return await self._run(read)

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        def read(db: sqlite3.Connection) -> list[tuple[int, bytes, str, float]]:
            return db.execute(
                "SELECT seq, item, reason, failed_at FROM forward_dead ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()

        return [
            DeadLetter(str(seq), _entry(str(seq), raw).item, reason, at)
            for seq, raw, reason, at in await self._run(read)
        ]

    async def revive(self) -> int:
        def move(db: sqlite3.Connection) -> int:
            def statements() -> int:
                moved = db.execute(
                    "INSERT INTO forward_queue (item, queued_at, order_uid, other_uid) SELECT item, "
                    "queued_at, order_uid, other_uid FROM forward_dead ORDER BY seq"
                ).rowcount
                db.execute("DELETE FROM forward_dead")
                return moved

            return self._transaction(db, statements)

        return await self._run(move)

    async def drop(self, queued: bool) -> int:
        def delete(db: sqlite3.Connection) -> int:
            def statements() -> int:
                gone = db.execute("DELETE FROM forward_dead").rowcount
                if queued:
                    gone += db.execute("DELETE FROM forward_queue").rowcount
                return gone

            return self._transaction(db, statements)

        return await self._run(delete)

    async def delete_user(self, user_uid: str) -> int:
        def delete(db: sqlite3.Connection) -> int:
            def statements() -> int:
                gone = 0
                for table in ("forward_queue", "forward_dead"):
                    gone += db.execute(
                        f"DELETE FROM {table} WHERE order_uid=? OR other_uid=?", (user_uid, user_uid)
                    ).rowcount
                return gone

            return self._transaction(db, statements)

        return await self._run(delete)

    async def count_refused(self, n: int) -> None:
        await self._run(
            lambda db: _execute(
                db,
                "INSERT INTO forward_meta (name, count) VALUES ('refused', ?) ON CONFLICT (name) DO UPDATE "
                "SET count = count + excluded.count",
                [(n,)],
            )
        )

    async def user_writes(self, user_uid: str) -> list[tuple[str, ForwardItem]]:
        def read(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
            found: list[tuple[str, bytes]] = []
            for kind, table in (("queued", "forward_queue"), ("dead", "forward_dead")):
                found += [
                    (kind, row[0])
                    for row in db.execute(
                        f"SELECT item FROM {table} WHERE order_uid=? OR other_uid=? ORDER BY seq", (user_uid, user_uid)
                    )
                ]
            return found

        return [(kind, item) for kind, raw in await self._run(read) if (item := _entry("", raw).item) is not None]


def _execute(db: sqlite3.Connection, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
    """`sql` once per row, the cursor closed here: a cursor must not leave the outbox's thread (one finalised on
    another thread while this one uses the connection is "bad parameter or other API misuse")."""
    db.executemany(sql, rows).close()


def _entry(entry_id: str, raw: bytes) -> Entry:
    try:
        return Entry(entry_id, decode_item(raw))
    except ValueError:
        return Entry(entry_id, None)
