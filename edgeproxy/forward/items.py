"""What one forwarded write is, how queued writes are batched, and what the real Edge API's answer means.

Pure: no I/O, no clock read (times are passed in), no randomness of its own (the jitter's source is passed in).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import msgpack

from edgeproxy import __version__
from edgeproxy.store.base import EventRecord

EVENTS = "/events"
ATTRIBUTES = "/user-attributes"
MERGE = "/user-attributes/actions/merge"
PATHS = {EVENTS: "POST", ATTRIBUTES: "PATCH", MERGE: "POST"}  # SPEC §5, the paths the SDK writes to

# What the SDK sends besides its project and user (sdk: dist/sdk.js): its own name in X-User-Agent, and the body as
# a string, which fetch labels text/plain. A forwarded write carries the X-User-Agent the client sent (the SDK's),
# or edgeproxy's for what the proxy recorded itself.
OWN_USER_AGENT = f"edgeproxy/{__version__}"
CONTENT_TYPE = "text/plain;charset=UTF-8"
MAX_EVENTS_PER_REQUEST = 100  # events of one user merged into one POST /events, at most this many

# The Edge API host of each Contentstack region (the SDK's default is NA; setEdgeApiUrl names the others).
EDGE_API_REGIONS = {
    "na": "https://personalize-edge.contentstack.com",
    "us": "https://personalize-edge.contentstack.com",
    "eu": "https://eu-personalize-edge.contentstack.com",
    "au": "https://au-personalize-edge.contentstack.com",
    "azure-na": "https://azure-na-personalize-edge.contentstack.com",
    "azure-eu": "https://azure-eu-personalize-edge.contentstack.com",
    "gcp-na": "https://gcp-na-personalize-edge.contentstack.com",
    "gcp-eu": "https://gcp-eu-personalize-edge.contentstack.com",
}


def edge_api_base(setting: str) -> str:
    """`forward_edge_api` as a base URL: a region name (EDGE_API_REGIONS) or an http(s) URL; ValueError else."""
    value = setting.strip()
    if value.lower() in EDGE_API_REGIONS:
        return EDGE_API_REGIONS[value.lower()]
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
        regions = ", ".join(sorted(EDGE_API_REGIONS))
        raise ValueError(f"{value!r} is neither a region ({regions}) nor an http(s):// URL of an Edge API host")
    if "?" in value or "#" in value:
        raise ValueError(f"{value!r}: give the host (and a path prefix, if any) without a query or fragment")
    return value.rstrip("/")


BACKOFF_BASE = 0.5  # seconds before the first retry; doubles per failed pass
BACKOFF_CAP = 60.0  # never longer between tries of a failing Edge API
RETRY_AFTER_CAP = 600.0  # a Retry-After longer than this is read as this (a wrong header must not stall for days)


@dataclass(frozen=True, slots=True)
class ForwardItem:
    """One accepted write, as it will be sent: `method` `path` with `body` (the JSON text), headers X-Project-Uid
    and (`user_uid`, not for a merge) X-CS-Personalize-User-Uid. `order_uid`: the user whose writes keep their
    order (a merge's target); `other_uid`: a merge's source (a deletion of either user removes the item)."""

    method: str
    path: str
    project_uid: str
    user_uid: str
    body: bytes
    queued_at: float
    user_agent: str = OWN_USER_AGENT
    order_uid: str = ""
    other_uid: str = ""

    def headers(self) -> dict[str, str]:
        headers = {"X-Project-Uid": self.project_uid, "X-User-Agent": self.user_agent, "Content-Type": CONTENT_TYPE}
        if self.user_uid:
            headers["X-CS-Personalize-User-Uid"] = self.user_uid
        return headers

    @property
    def orders_by(self) -> str:
        return self.order_uid or self.user_uid


def encode_item(item: ForwardItem) -> bytes:
    packed: bytes = msgpack.packb(
        [
            1,
            item.method,
            item.path,
            item.project_uid,
            item.user_uid,
            item.body,
            item.queued_at,
            item.user_agent,
            item.order_uid,
            item.other_uid,
        ]
    )
    return packed


def decode_item(data: bytes) -> ForwardItem:
    """The item `encode_item` wrote; ValueError for anything else (a corrupt row is dead-lettered, not sent)."""
    try:
        fields = msgpack.unpackb(data)
        version, method, path, project, user, body, queued_at, agent, order_uid, other_uid = fields
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a queued write: {exc}") from None
    if version != 1 or PATHS.get(path) != method or not isinstance(body, bytes):
        raise ValueError("not a queued write: unknown version, path or body")
    return ForwardItem(method, path, project, user, body, float(queued_at), agent, order_uid, other_uid)


def item_document(item: ForwardItem) -> dict[str, Any]:
    """A queued write as `user export` and `forward status --json` show it."""
    try:
        body: Any = json.loads(item.body)
    except ValueError:
        body = item.body.decode("utf-8", "replace")
    return {
        "method": item.method,
        "path": item.path,
        "projectUid": item.project_uid,
        "userUid": item.user_uid or item.order_uid,
        "body": body,
        "queuedAt": item.queued_at,
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_body(event: EventRecord) -> dict[str, str]:
    """An event as the SDK's body carries it (sdk: impressions and triggerEvent)."""
    if event.type == "IMPRESSION":
        return {
            "experienceShortUid": event.experience_short_uid or "",
            "variantShortUid": event.variant_short_uid or "",
            "type": "IMPRESSION",
        }
    return {"eventKey": event.event_key or "", "type": "EVENT"}


def events_items(events: Iterable[EventRecord], now: float, user_agent: str = OWN_USER_AGENT) -> list[ForwardItem]:
    """`POST /events` writes for these events: one per (project, user), in the order of each user's first event,
    each user's events in their order."""
    by_user: dict[tuple[str, str], list[dict[str, str]]] = {}
    for event in events:
        if event.user_uid:  # a visitor without consent has no uid, and nothing of theirs is forwarded
            by_user.setdefault((event.project_uid, event.user_uid), []).append(event_body(event))
    return [
        ForwardItem(
            "POST", EVENTS, project, user, _json(bodies[start : start + MAX_EVENTS_PER_REQUEST]), now, user_agent
        )
        for (project, user), bodies in by_user.items()
        for start in range(0, len(bodies), MAX_EVENTS_PER_REQUEST)
    ]


def attributes_item(
    project_uid: str, user_uid: str, attributes: dict[str, Any], now: float, user_agent: str = OWN_USER_AGENT
) -> ForwardItem:
    return ForwardItem("PATCH", ATTRIBUTES, project_uid, user_uid, _json(attributes), now, user_agent)


def merge_item(project_uid: str, source: str, target: str, now: float, user_agent: str = OWN_USER_AGENT) -> ForwardItem:
    body = _json({"sourceUserUid": source, "targetUserUid": target})
    return ForwardItem("POST", MERGE, project_uid, "", body, now, user_agent, order_uid=target, other_uid=source)


@dataclass(frozen=True, slots=True)
class Request:
    """What is sent once: one item, or consecutive `POST /events` items of one user merged (`ids`: theirs)."""

    ids: tuple[str, ...]
    item: ForwardItem


def chains(entries: Sequence[tuple[str, ForwardItem]]) -> list[list[Request]]:
    """The requests to send for a window of queued entries (id, item) in queue order: one chain per user, in the
    order of each user's first entry; a chain is sent one request after another (a user's writes keep their order,
    SPEC §12), chains side by side. A merge joins its two users' chains into one for the window: it must reach the
    Edge API after the source user's earlier writes (the attributes it copies) and before the target's later ones.
    Consecutive events of one user (same project and X-User-Agent) are merged into one request of at most
    MAX_EVENTS_PER_REQUEST events."""
    joined: dict[str, str] = {}  # user -> a user of the same chain (union-find over the window's merges)

    def chain_of(user: str) -> str:
        while joined.get(user, user) != user:
            user = joined[user]
        return user

    for _, item in entries:
        if item.other_uid:
            source, target = chain_of(item.other_uid), chain_of(item.orders_by)
            if source != target:
                joined[source] = target
    by_chain: dict[str, list[Request]] = {}
    counts: dict[str, int] = {}
    for entry_id, item in entries:
        chain = by_chain.setdefault(chain_of(item.orders_by), [])
        if chain and item.path == EVENTS:
            last = chain[-1].item
            if (
                last.path == EVENTS
                and last.project_uid == item.project_uid
                and last.user_uid == item.user_uid
                and last.user_agent == item.user_agent
            ):
                events = counts[chain[-1].ids[0]] + _count(item.body)
                if events <= MAX_EVENTS_PER_REQUEST:
                    merged = last.body[:-1] + b"," + item.body[1:]  # two JSON arrays of objects joined
                    chain[-1] = Request((*chain[-1].ids, entry_id), _replace_body(last, merged))
                    counts[chain[-1].ids[0]] = events
                    continue
        chain.append(Request((entry_id,), item))
        counts[entry_id] = _count(item.body) if item.path == EVENTS else 0
    return list(by_chain.values())


def _count(body: bytes) -> int:
    value = json.loads(body)
    return len(value) if isinstance(value, list) else 1


def _replace_body(item: ForwardItem, body: bytes) -> ForwardItem:
    return ForwardItem(
        item.method,
        item.path,
        item.project_uid,
        item.user_uid,
        body,
        item.queued_at,
        item.user_agent,
        item.order_uid,
        item.other_uid,
    )


Verdict = Literal["sent", "retry", "dead"]


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str = ""  # for retry and dead: what happened, shown in status and logs
    retry_after: float = 0.0  # seconds the Edge API asked to wait (Retry-After), 0 when it did not


def outcome_of(status: int | None, retry_after: str | None, now: float, failure: str = "", body: str = "") -> Outcome:
    """What an answer means (SPEC §12): 2xx sent; no answer (connection refused or reset, timeout), 5xx, 408 and
    429 are retried, honouring Retry-After (seconds or an HTTP date); any other status is permanent: the write goes
    to the dead letters with the reason (status and the start of the answer)."""
    if status is None:
        return Outcome("retry", failure or "no answer")
    if 200 <= status < 300:
        return Outcome("sent")
    if status >= 500 or status in (408, 429):
        return Outcome("retry", f"HTTP {status}", parse_retry_after(retry_after, now))
    return Outcome("dead", f"HTTP {status}: {body[:300]}".rstrip(": "))


def parse_retry_after(value: str | None, now: float) -> float:
    """Retry-After (RFC 9110 §10.2.3) as seconds from `now`: delay-seconds or an HTTP-date; 0 when absent or
    unreadable; at most RETRY_AFTER_CAP."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


def backoff(failed_passes: int, random: Callable[[], float]) -> float:
    """Seconds to wait after `failed_passes` passes in a row that sent nothing (>= 1): exponential from
    BACKOFF_BASE, capped at BACKOFF_CAP, with "equal jitter" (half fixed, half random) so a fleet that failed
    together does not retry together."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(failed_passes - 1, 30))
    return ceiling / 2 + random() * ceiling / 2
