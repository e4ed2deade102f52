"""The state a visitor leaves behind: stored attributes (PATCH /user-attributes) and events (POST /events).

Both backends keep the same behaviour: attributes are upserted per (project, user), values JSON-typed,
bounded per user and expiring after `ttl_seconds` without a write; events are appended with a timestamp and
never rewritten. The event schema is what analytics aggregates over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol

EventType = Literal["IMPRESSION", "EVENT"]
BEHAVIOUR_KEY = "__edgeproxy_behaviour"  # the stored attribute a visitor's behaviour is read as (SPEC §13)
EventSource = Literal["sdk", "proxy", "origin"]


class StoreError(Exception):
    """The backend failed (I/O, connection); nothing was half-written."""


class EventsBufferFull(StoreError):
    """Events refused, not stored: the Redis stream that carries them to the event store is at its cap
    (`events_buffer_max`) because the store is not draining it. The message says so and what to check."""


class StoreLimitError(ValueError):
    """A write would exceed a configured bound; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class AttributeLimits:
    max_attributes_per_user: int = 100
    max_key_length: int = 128
    max_value_bytes: int = 1024
    ttl_seconds: int = 90 * 86_400  # attributes of a user expire this long after their last write
    max_users: int = 1_000_000  # SQLite: oldest users evicted past this


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One row of the event log (contract §5 events, plus where it came from)."""

    ts: float  # POSIX seconds
    project_uid: str
    user_uid: str
    type: EventType
    experience_short_uid: str | None = None
    variant_short_uid: str | None = None
    event_key: str | None = None
    source: EventSource = "sdk"


def event_document(event: EventRecord) -> dict[str, Any]:
    """One event as `user_data` exports it: every EventRecord field, camelCase, None where absent."""
    return {
        "ts": event.ts,
        "projectUid": event.project_uid,
        "userUid": event.user_uid,
        "type": event.type,
        "experienceShortUid": event.experience_short_uid,
        "variantShortUid": event.variant_short_uid,
        "eventKey": event.event_key,
        "source": event.source,
    }


def encode_value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check_attributes(attributes: dict[str, Any], limits: AttributeLimits) -> dict[str, str]:
    """Validate a PATCH body's values; returns key -> JSON text. Raises StoreLimitError."""
    encoded: dict[str, str] = {}
    for key, value in attributes.items():
        if not key or len(key) > limits.max_key_length:
            raise StoreLimitError(f"attribute key {key[:40]!r} must be 1..{limits.max_key_length} characters")
        if isinstance(value, dict | list):
            raise StoreLimitError(f"attribute {key!r}: values must be strings, numbers, booleans or null")
        text = encode_value(value)
        if len(text.encode()) > limits.max_value_bytes:
            raise StoreLimitError(f"attribute {key!r}: value over {limits.max_value_bytes} bytes")
        encoded[key] = text
    if len(encoded) > limits.max_attributes_per_user:
        raise StoreLimitError(f"{len(encoded)} attributes in one request; at most {limits.max_attributes_per_user}")
    return encoded


class StateStore(Protocol):
    limits: AttributeLimits

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get_attributes(self, project_uid: str, user_uid: str) -> dict[str, Any]: ...

    def cached_attributes(
        self, project_uid: str, user_uid: str, *, behaviour_at_hand: bool = False
    ) -> dict[str, Any] | None:
        """What `get_attributes` would return, known without I/O: from an in-process cache, or `{}` for a user
        the store knows has nothing stored; None when not known (read it). `behaviour_at_hand`: the caller holds
        the user's behaviour (BEHAVIOUR_KEY), so a user with no attribute rows is `{}` whatever their behaviour."""
        ...

    async def follow_writes(self) -> int:
        """Bring what this process knows without I/O (`cached_attributes`) up to date with the users other processes
        sharing the store gave rows to since the last call; returns how many it learned of. A store that knows
        nothing in-process returns 0."""
        ...

    async def patch_attributes(self, project_uid: str, user_uid: str, attributes: dict[str, Any]) -> None:
        """Upsert; a null value removes the key; other keys unchanged. StoreLimitError past the per-user cap."""
        ...

    async def merge_attributes(self, project_uid: str, source_uid: str, target_uid: str) -> None:
        """Copy source's attributes onto target; source values win on conflict (contract §5)."""
        ...

    async def put_behaviour(
        self, project_uid: str, states: dict[str, str], *, new: Collection[str] | None = None
    ) -> None:
        """Set many visitors' behaviour (visitor/behaviour.py's encoded state, trusted) in one batch; read back
        by `get_attributes` as the attribute BEHAVIOUR_KEY (and exported, deleted, merged and expired with the
        user's attributes). It may leave an in-process read-through cache as it was: the writer keeps it newer.
        `new`: the users among `states` this store may not have written a behaviour row for before (None: any);
        the others a store that keeps track of who has rows (SQLite's filters) need not mark again."""
        ...

    async def append_events(self, events: list[EventRecord]) -> None: ...

    async def count_events(self, project_uid: str) -> int: ...

    async def user_data(self, user_uid: str) -> dict[str, Any]:
        """Everything stored for `user_uid` in every project, as one JSON-able document (SPEC §11 export):
        `{"userUid", "attributes": {project: {key: value}}, "events": [event_document(...), ...]}`, events
        oldest first; attributes as `get_attributes` returns them (expired ones are not there)."""
        ...

    async def delete_user(self, user_uid: str) -> dict[str, int]:
        """Delete everything stored for `user_uid` in every project (SPEC §11), in-process caches included.
        Returns `{"attributes": projects whose attributes went, "events": events removed}`; idempotent."""
        ...

    async def purge_events(self, older_than: float, limit: int) -> int:
        """Retention: remove at most `limit` events with ts < `older_than`, oldest first; returns how many went.
        Bounded work per call: repeat while it returns `limit`."""
        ...

    def forget_deleted(self, tombstones: set[str]) -> int:
        """Drop what this process caches of the users these tombstones name (deleted through another process);
        returns how many cache entries went. A store that caches nothing returns 0."""
        ...

    async def deletions_after(self, cursor: int) -> tuple[list[str], int]:
        """The tombstones (`tombstone_of(uid)`) of users deleted after `cursor` (0: all kept), oldest first, at
        most TOMBSTONE_BATCH, and the cursor to ask from next. `delete_user` writes one; every instance sharing
        the store polls them, so a deleted user's next visit is a new identity (SPEC §11)."""
        ...


TOMBSTONES_KEPT = 100_000  # most recent deletions remembered; older ones are dropped when a new one is written
TOMBSTONE_BATCH = 10_000


def tombstone_of(user_uid: str) -> str:
    """What a deletion leaves behind: a digest of the uid, enough to recognise the old cookie, not to read it."""
    return hashlib.sha256(b"edgeproxy-deleted:" + user_uid.encode("utf-8")).hexdigest()[:32]


def uid_digest(user_uid: str) -> str:
    """What a log line names a user by: a short SHA-256 digest, enough to tie lines together, not to read back."""
    return hashlib.sha256(user_uid.encode("utf-8")).hexdigest()[:12]


STATE_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, a file path, or redis://host:port/db "
    "(also rediss://, unix://)"
)


def _shown(url: str) -> str:
    """`url` without a password (user:secret@host -> ***@host), for error messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def state_url_problem(url: str) -> str | None:
    """Why `url` is not a state store this build opens, or None (the message names the accepted forms)."""
    if not url:
        return f"empty; use {STATE_FORMS}"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return None
    if url.startswith("sqlite://"):
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            return f"{_shown(url)!r} names no file; use {STATE_FORMS}"
        return None
    scheme, sep, _ = url.partition("://")
    if sep:
        return f"{_shown(url)!r}: unknown scheme {scheme + '://'!r}; use {STATE_FORMS}"
    return None
