"""PostgreSQL as the durable event store of a fleet (`events = "postgresql://..."`).

The Redis stream of a fleet is a bounded transport; its drain writes here with `insert_events`. Only events live
here (attributes stay in the state store).

Schema (created by `start()` when missing, under an advisory lock so that two processes starting at once do not
race): one table `edgeproxy_events`, range-partitioned by the event's UTC day (`day`, a date), one partition per
day (`edgeproxy_events_pYYYYMMDD`) created on demand for the days a batch touches. The primary key is
(event_id, day): PostgreSQL's unique keys on a partitioned table must include the partition key, and an event's
day follows from its time, so a replayed event (same id, same time) lands on the same key and is not inserted
twice. Indexes serve the report (analytics/postgres_source.py) and the data-subject requests:

- `edgeproxy_events_impressions` (project_uid, experience_short_uid, variant_short_uid, user_uid, ts) for
  impressions: the first-seen time of each (user, experience, variant) is read from the index alone;
- `edgeproxy_events_custom` (project_uid, event_key, user_uid, ts) for custom events (conversions);
- `edgeproxy_events_user` (user_uid) for export and deletion of one user's events.

Next to the events, `edgeproxy_first_seen` keeps the first-seen time of every (user, project, experience,
variant): the report's impressions are unique per (user, variant) and dated by that time, which no day partition
holds alone (a user's impressions spread over days). Every insert lowers the times its new impressions beat, in
the same statement as the insert, so the two never disagree; a report without a time window reads that table
(one row per unique impression) instead of grouping every impression. User deletion deletes its rows; retention
recomputes the rows that pointed at removed impressions from the impressions that remain.

Retention drops whole day partitions (no dead rows, no vacuum) and deletes the rows of the one day that straddles
the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from edgeproxy.store.base import EventRecord, StoreError
from edgeproxy.store.events_url import shown_url

T = TypeVar("T")

TABLE = "edgeproxy_events"
FIRST_SEEN = "edgeproxy_first_seen"
CHANGES = "edgeproxy_events_changes"
PARTITION_PREFIX = f"{TABLE}_p"
_PARTITION_NAME = re.compile(rf"{PARTITION_PREFIX}(\d{{8}})")
# pg_advisory_xact_lock key held while the schema or a partition is created ("edgeproxy" in ASCII, truncated).
SCHEMA_LOCK = 0x65646765_70726F78
CONNECT_TIMEOUT_SECONDS = 5
EPOCH = dt.date(1970, 1, 1)
DAY_SECONDS = 86_400

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    event_id              text NOT NULL,
    day                   date NOT NULL,              -- UTC day of ts: the partition key
    ts                    double precision NOT NULL,  -- POSIX seconds
    project_uid           text NOT NULL,
    user_uid              text NOT NULL,
    type                  text NOT NULL CHECK (type IN ('IMPRESSION', 'EVENT')),
    experience_short_uid  text,
    variant_short_uid     text,
    event_key             text,
    source                text NOT NULL DEFAULT 'sdk',
    PRIMARY KEY (event_id, day)
) PARTITION BY RANGE (day);
CREATE INDEX IF NOT EXISTS {TABLE}_impressions
    ON {TABLE} (project_uid, experience_short_uid, variant_short_uid, user_uid, ts) WHERE type = 'IMPRESSION';
CREATE INDEX IF NOT EXISTS {TABLE}_custom ON {TABLE} (project_uid, event_key, user_uid, ts) WHERE type = 'EVENT';
CREATE INDEX IF NOT EXISTS {TABLE}_user ON {TABLE} (user_uid);
CREATE SEQUENCE IF NOT EXISTS {CHANGES};  -- advanced after every committed change: the readers' change marker
CREATE TABLE IF NOT EXISTS {FIRST_SEEN} (
    -- Fixed-width columns first, then the short texts: a report's scan decodes the fewest bytes per row.
    ts                    double precision NOT NULL,  -- the earliest impression of this variant for this user
    day                   integer NOT NULL,           -- trunc(ts / 86400): the report's day of that impression
    experience_short_uid  text NOT NULL,
    variant_short_uid     text NOT NULL,
    project_uid           text NOT NULL,
    user_uid              text NOT NULL,
    PRIMARY KEY (user_uid, project_uid, experience_short_uid, variant_short_uid)
);
"""

# Rows of a batch are copied into this per-connection temporary table, then moved with one INSERT ... SELECT ...
# ON CONFLICT DO NOTHING (a replayed event_id is skipped), see _MOVE.
_INCOMING = f"""
CREATE TEMP TABLE IF NOT EXISTS {TABLE}_incoming (
    event_id text, day date, ts double precision, project_uid text, user_uid text, type text,
    experience_short_uid text, variant_short_uid text, event_key text, source text
) ON COMMIT DELETE ROWS
"""
_COLUMNS = "event_id, day, ts, project_uid, user_uid, type, experience_short_uid, variant_short_uid, event_key, source"
# The rows newly inserted also lower the first-seen times they beat, in the same statement (so in the same
# transaction); keys in a fixed order, so two drainers upserting the same keys wait rather than deadlock.
_MOVE = f"""
WITH inserted AS (
    INSERT INTO {TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM {TABLE}_incoming ON CONFLICT DO NOTHING
    RETURNING user_uid, project_uid, type, experience_short_uid, variant_short_uid, ts
), seen AS (
    INSERT INTO {FIRST_SEEN} AS f (user_uid, project_uid, experience_short_uid, variant_short_uid, ts, day)
    SELECT user_uid, project_uid, experience_short_uid, variant_short_uid, min(ts), trunc(min(ts) / 86400)
    FROM inserted
    WHERE type = 'IMPRESSION' AND experience_short_uid IS NOT NULL AND variant_short_uid IS NOT NULL
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (user_uid, project_uid, experience_short_uid, variant_short_uid)
    DO UPDATE SET ts = excluded.ts, day = excluded.day WHERE excluded.ts < f.ts
)
SELECT count(*) FROM inserted
"""
_REBUILD_FIRST_SEEN = f"""
INSERT INTO {FIRST_SEEN} (user_uid, project_uid, experience_short_uid, variant_short_uid, ts, day)
SELECT user_uid, project_uid, experience_short_uid, variant_short_uid, min(ts), trunc(min(ts) / 86400) FROM {TABLE}
WHERE type = 'IMPRESSION' AND experience_short_uid IS NOT NULL AND variant_short_uid IS NOT NULL
GROUP BY 1, 2, 3, 4
"""
# After retention: the first-seen times that pointed at removed impressions, recomputed from those that remain.
_RESEEN = f"""
WITH stale AS (
    DELETE FROM {FIRST_SEEN} WHERE ts < %(older_than)s
    RETURNING user_uid, project_uid, experience_short_uid, variant_short_uid
)
INSERT INTO {FIRST_SEEN} (user_uid, project_uid, experience_short_uid, variant_short_uid, ts, day)
SELECT e.user_uid, e.project_uid, e.experience_short_uid, e.variant_short_uid, min(e.ts), trunc(min(e.ts) / 86400)
FROM {TABLE} AS e JOIN stale AS s USING (user_uid, project_uid, experience_short_uid, variant_short_uid)
WHERE e.type = 'IMPRESSION' AND e.day >= %(limit_day)s AND e.ts >= %(older_than)s
GROUP BY 1, 2, 3, 4
"""
_EVENT_FIELDS = "ts, project_uid, user_uid, type, experience_short_uid, variant_short_uid, event_key, source"


def day_of_event(ts: float) -> dt.date:
    """The UTC day (the partition) of a POSIX time."""
    if not math.isfinite(ts):
        raise StoreError(f"event time {ts!r} is not a finite number of seconds")
    try:
        return EPOCH + dt.timedelta(days=math.floor(ts / DAY_SECONDS))
    except OverflowError:
        raise StoreError(f"event time {ts!r} is outside the years 1-9999") from None


def partition_name(day: dt.date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def connect_sync(url: str) -> psycopg.Connection[Any]:
    """A blocking connection (autocommit) for one-shot readers such as the report; psycopg.Error when it fails."""
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="edgeproxy")


def _record(row: Sequence[Any]) -> EventRecord:
    ts, project, user, kind, experience, variant, key, source = row
    return EventRecord(float(ts), project, user, kind, experience, variant, key, source)


class PostgresEventStore:
    """Events in PostgreSQL, over one asyncio connection used by one operation at a time. A connection that
    broke (server restarted) is replaced and the operation tried once more; every operation is one transaction,
    so a failure leaves nothing half-written. Failures raise StoreError naming the server (without password)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._partitions: set[dt.date] = set()  # days known to have a partition
        self._incoming_on: psycopg.AsyncConnection[Any] | None = None  # the connection that has the temp table

    def _failure(self, doing: str, exc: BaseException) -> StoreError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreError(f"PostgreSQL event store {shown_url(self.url)}: {doing}: {detail}")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            connection = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="edgeproxy"
            )
        except psycopg.Error as exc:
            raise self._failure("cannot connect", exc) from exc
        self._connection = connection
        return connection

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            with contextlib.suppress(psycopg.Error):  # it is broken already; nothing to flush
                await connection.close()

    async def _run(self, doing: str, operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        async with self._lock:
            for attempt in (1, 2):
                reused = self._connection is not None and not self._connection.closed
                connection = self._connection if reused and self._connection else await self._connect()
                try:
                    return await operation(connection)
                except psycopg.OperationalError as exc:
                    await self._drop_connection()
                    if reused and attempt == 1:
                        continue  # a connection opened before a server restart: once more on a new one
                    raise self._failure(doing, exc) from exc
                except psycopg.Error as exc:
                    if connection.closed or connection.broken:
                        await self._drop_connection()
                    raise self._failure(doing, exc) from exc
            raise AssertionError("unreachable: the second attempt returns or raises")

    async def start(self) -> None:
        """Connect and create the schema when missing (two processes starting at once: one creates, one waits)."""

        async def create(connection: psycopg.AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                await connection.execute(SCHEMA)
            self._partitions = set(await _partition_days(connection))

        await self._run("cannot create the schema", create)

    async def close(self) -> None:
        async with self._lock:
            await self._drop_connection()

    async def create_partitions(self, days: Iterable[dt.date]) -> None:
        """Make sure these days have their partitions (inserts create them on demand; a bulk load may ask first)."""
        wanted = set(days)

        async def create(connection: psycopg.AsyncConnection[Any]) -> None:
            await self._ensure_partitions(connection, wanted)

        await self._run("cannot create partitions", create)

    async def _ensure_partitions(self, connection: psycopg.AsyncConnection[Any], days: set[dt.date]) -> None:
        missing = sorted(days - self._partitions)
        if not missing:
            return
        # Its own short transaction, before the insert's: creating a partition locks the parent table exclusively.
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for day in missing:
                await connection.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier(partition_name(day)),
                        sql.Identifier(TABLE),
                        sql.Literal(day),
                        sql.Literal(day + dt.timedelta(days=1)),
                    )
                )
        self._partitions.update(missing)

    async def insert_events(self, rows: Sequence[tuple[str, EventRecord]]) -> int:
        """Store (event_id, event) pairs in one transaction, committed when this returns; an event_id already
        stored (a replay) is skipped. Returns how many rows were newly inserted."""
        if not rows:
            return 0
        prepared = [(event_id, day_of_event(event.ts), event) for event_id, event in rows]
        days = {day for _, day, _ in prepared}

        async def insert(connection: psycopg.AsyncConnection[Any]) -> int:
            try:
                await self._ensure_partitions(connection, days)
                return await _marked(connection, await self._copy_and_move(connection, prepared))
            except (psycopg.errors.UndefinedTable, psycopg.errors.CheckViolation):
                # Another process dropped a partition we knew of (retention) or the table: look again, once.
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                    await connection.execute(SCHEMA)
                self._partitions = set(await _partition_days(connection))
                await self._ensure_partitions(connection, days)
                return await _marked(connection, await self._copy_and_move(connection, prepared))

        return await self._run(f"cannot insert {len(rows)} events", insert)

    async def _copy_and_move(
        self, connection: psycopg.AsyncConnection[Any], prepared: list[tuple[str, dt.date, EventRecord]]
    ) -> int:
        async with connection.transaction():
            if self._incoming_on is not connection:
                await connection.execute(_INCOMING)
                self._incoming_on = connection
            async with connection.cursor() as cursor:
                async with cursor.copy(f"COPY {TABLE}_incoming ({_COLUMNS}) FROM STDIN") as copy:
                    for event_id, day, event in prepared:
                        await copy.write_row(
                            (event_id, day, event.ts, event.project_uid, event.user_uid, event.type,
                             event.experience_short_uid, event.variant_short_uid, event.event_key, event.source)
                        )  # fmt: skip
                await cursor.execute(_MOVE)
                row = await cursor.fetchone()
                return int(row[0]) if row else 0

    async def count_events(self, project_uid: str) -> int:
        async def count(connection: psycopg.AsyncConnection[Any]) -> int:
            cursor = await connection.execute(f"SELECT count(*) FROM {TABLE} WHERE project_uid = %s", (project_uid,))
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

        return await self._run("cannot count events", count)

    async def user_events(self, user_uid: str) -> list[EventRecord]:
        """Every event of `user_uid`, in every project, oldest first (the export of a data-subject request)."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[EventRecord]:
            cursor = await connection.execute(
                f"SELECT {_EVENT_FIELDS} FROM {TABLE} WHERE user_uid = %s ORDER BY ts, event_id", (user_uid,)
            )
            return [_record(row) for row in await cursor.fetchall()]

        return await self._run("cannot read the user's events", read)

    async def delete_user_events(self, user_uid: str) -> int:
        """Delete every event of `user_uid` in every project; returns how many went (0 when none: idempotent)."""

        async def delete(connection: psycopg.AsyncConnection[Any]) -> int:
            async with connection.transaction():
                cursor = await connection.execute(f"DELETE FROM {TABLE} WHERE user_uid = %s", (user_uid,))
                await connection.execute(f"DELETE FROM {FIRST_SEEN} WHERE user_uid = %s", (user_uid,))
            return await _marked(connection, max(cursor.rowcount, 0))

        return await self._run("cannot delete the user's events", delete)

    async def purge_events(self, older_than: float) -> int:
        """Retention: delete the older rows of the day that straddles `older_than` and recompute the first-seen
        times that pointed at removed impressions (one transaction), then drop the day partitions whose every
        possible row is older (a transaction each: a long purge holds the table's lock only briefly). Returns how
        many events went. Interrupted, it leaves old partitions that the next call drops."""
        limit_day = day_of_event(older_than)

        async def purge(connection: psycopg.AsyncConnection[Any]) -> int:
            async with connection.transaction():
                cursor = await connection.execute(
                    f"DELETE FROM {TABLE} WHERE day = %s AND ts < %s", (limit_day, older_than)
                )
                removed = max(cursor.rowcount, 0)
                await connection.execute(_RESEEN, {"older_than": older_than, "limit_day": limit_day})
            doomed = [day for day in await _partition_days(connection) if day < limit_day]
            for day in doomed:  # one transaction per partition: a long purge holds no lock for long
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                    name = sql.Identifier(partition_name(day))
                    cursor = await connection.execute(sql.SQL("SELECT count(*) FROM {}").format(name))
                    row = await cursor.fetchone()
                    await connection.execute(sql.SQL("DROP TABLE {}").format(name))
                removed += int(row[0]) if row else 0
                self._partitions.discard(day)
            return await _marked(connection, removed)

        return await self._run("cannot purge old events", purge)

    async def rebuild_first_seen(self) -> int:
        """Recompute every first-seen time from the events (after rows were loaded around `insert_events`, e.g. a
        bulk COPY into the partitions); one transaction. Returns how many (user, experience, variant) there are."""

        async def rebuild(connection: psycopg.AsyncConnection[Any]) -> int:
            async with connection.transaction():
                await connection.execute(f"DELETE FROM {FIRST_SEEN}")
                cursor = await connection.execute(_REBUILD_FIRST_SEEN)
                return max(cursor.rowcount, 0)

        return await self._run("cannot rebuild the first-seen times", rebuild)

    async def partition_days(self) -> list[dt.date]:
        """The days that have a partition, oldest first."""
        return await self._run("cannot list partitions", _partition_days)


async def _marked(connection: psycopg.AsyncConnection[Any], changed: int) -> int:
    """After a committed change of `changed` rows: advance the change marker (the dashboard recomputes when it
    moves; after the commit, so a reader that sees it moved also sees the rows). Returns `changed`."""
    if changed:
        await connection.execute(f"SELECT nextval('{CHANGES}')")
    return changed


async def _partition_days(connection: psycopg.AsyncConnection[Any]) -> list[dt.date]:
    cursor = await connection.execute(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)",
        (TABLE,),
    )
    days = []
    for (name,) in await cursor.fetchall():
        match = _PARTITION_NAME.fullmatch(name)
        if match:
            days.append(dt.datetime.strptime(match.group(1), "%Y%m%d").date())
    return sorted(days)
