"""Behavioural attributes computed from the replayed traffic itself (`replay --behaviour FILE`, SPEC §13).

The proxy counts a visitor's page views as they come, and each decision reads the visitor's behaviour merged over
the stored attributes (edgeproxy/exchange/plan.py, `Planner.decide`). Replay does the same with the recorded
traffic, so a rule set whose audiences use those attributes can be tested against it:

- the records are decided in time order (`in_time_order`: by the description's `now`; stable, so records with
  equal times, and records without `now`, keep their input order; those are taken at the replay's clock);
- before each record is decided (`BehaviourReplay.apply`), a page view — a GET navigation (no `Sec-Fetch-Mode`,
  or `navigate`; not `X-Requested-With: XMLHttpRequest`; no prefetch `Sec-Purpose`/`Purpose`), not from a bot
  User-Agent, not a preview — updates the visitor's behaviour, and the attributes it gives are merged over the
  description's stored attributes (computed values win, as on the proxy). Other records read the visitor's
  current behaviour without counting.

Where the behaviour starts, as on the proxy (`BehaviourTracker.current_fields`): the newer of what replay has
counted and the behaviour a description's stored attributes carry (`__edgeproxy_behaviour`, which a decision log
records), so a log that starts in the middle of a visitor's history carries on from it. A visitor without a uid (a
stand-in uid) is a new visitor on every request: its page view counts as its first, and nothing of it is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from edgeproxy.engine.context import DescribedRequest
from edgeproxy.engine.model import iso_timestamp
from edgeproxy.replay.readers import TrafficRecord
from edgeproxy.visitor.behaviour import (
    STATE_KEY,
    Behaviour,
    BehaviourConfig,
    PageView,
    attributes_of,
    decode,
    is_page_view,
    observe,
)


def load_behaviour(path: str) -> BehaviourConfig:
    """The `[behaviour]` table of a TOML config file (the proxy's own config file works), expiring after its
    `attribute_ttl_days` as on the proxy; ValueError naming the file and what is wrong, also when it has no such
    table."""
    from edgeproxy.runtime.config import ConfigError, read_settings

    try:
        config = read_settings(path, {}, {})
    except ConfigError as exc:
        raise ValueError(f"--behaviour {path}: {exc}") from None
    behaviour = config.behaviour_expiring()
    if behaviour is None:
        raise ValueError(
            f"--behaviour {path}: no [behaviour] table; write one, e.g.\n"
            '  [behaviour]\n  visits = "visit_count"\n  session_timeout = "30m"'
        )
    return behaviour


def time_of(record: TrafficRecord, missing: float) -> float:
    """A record's time: its description's `now`, else `missing` (an unreadable `now` too: the record is then
    rejected as invalid when it is decided)."""
    now = record.description.get("now")
    if isinstance(now, str):
        try:
            return iso_timestamp(now)
        except ValueError:
            pass
    return missing


def in_time_order(records: Iterable[TrafficRecord], missing: float) -> list[TrafficRecord]:
    """Every record, ordered by `time_of` (a stable sort: equal times keep their input order)."""
    return sorted(records, key=lambda record: time_of(record, missing))


def _header(headers: Any, name: str) -> str | None:
    """A description header by name, in any case (several values joined as the context joins them)."""
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            if isinstance(value, list):
                return ", ".join(str(v) for v in value)
            return value if isinstance(value, str) else str(value)
    return None


def navigation(description: Mapping[str, Any]) -> bool:
    """Whether a description is a page view as the proxy counts it (`is_page_view`; no method is a GET)."""
    method = description.get("method")
    headers = description.get("headers")
    return is_page_view(method if isinstance(method, str) else "GET", lambda name: _header(headers, name.lower()))


class BehaviourReplay:
    """Visitors' behaviour as the replayed traffic (in time order) builds it, applied to each context."""

    def __init__(self, config: BehaviourConfig) -> None:
        self.config = config
        self._known: dict[str, Behaviour] = {}  # user uid -> behaviour after their last counted page view
        self.page_views = 0  # page views counted

    def _current(self, user_uid: str, stored: Mapping[str, Any]) -> Behaviour | None:
        mine = self._known.get(user_uid)
        theirs = decode(stored.get(STATE_KEY))
        if mine is None or (theirs is not None and theirs.last_seen > mine.last_seen):
            return theirs
        return mine

    def apply(self, description: Mapping[str, Any], described: DescribedRequest) -> None:
        """Count the request when it is a page view, then merge the visitor's attributes over the context's stored
        ones (before the context is decided)."""
        ctx = described.context
        user_uid = ctx.user_uid
        if not user_uid:
            return
        new = described.user_uid_is_new
        stored = ctx.stored
        state = None if new else self._current(user_uid, stored)
        if described.forcing is None and navigation(description):
            ua = ctx.ua_class()
            if ua is None or ua.device_type != "BOT":
                state = observe(self.config, state, PageView.of(ctx.page_url or "", ctx.referrer), ctx.now)
                self.page_views += 1
                if not new:
                    self._known[user_uid] = state
        found = attributes_of(self.config, state, ctx.now)
        if found:
            ctx.stored = {**stored, **found}
