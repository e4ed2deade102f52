"""The decision log: one JSON line per personalized request, replayable by `edgeproxy replay --from-log`.

    {"ts": "...Z", "method": "GET", "path": "/p?x=1", "status": 200, "cache": "MISS", "ms": 1.9,
     "snapshot": "sha256:...", "userUid": "...", "userUidSource": "header"|"cookie"|"minted",
     "request": <request description (docs/contract.md §9)>, "decision": <decide output>}

The request description carries everything the decision read, as it was read — page URL, the headers rules can
see (User-Agent, Referer), the uid where it came from (the `X-CS-Personalize-User-Uid` header when that decided,
the `cs-personalize-user-uid` cookie when that did, only `userUid` for a minted one), the Lytics cookies, client
IP and resolved geo, live attributes (`X-Live-Attributes` merged in), stored attributes, the clock and the
tags — so replaying it through the same snapshot reproduces the decision exactly. Cookies other than the
Personalize/Lytics ones are not logged.

Lines are buffered and flushed within half a second of being written, also when no further request comes (a
timer on the event loop), and at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from edgeproxy.clock import Clock, system_clock
from edgeproxy.engine.context import (
    LYTICS_AUDIENCES_COOKIE,
    LYTICS_FLOWS_COOKIE,
    USER_UID_COOKIE,
    VisitorContext,
)
from edgeproxy.engine.decide import Manifest

log = logging.getLogger("edgeproxy.decisions")
LOGGED_COOKIES = (LYTICS_AUDIENCES_COOKIE, LYTICS_FLOWS_COOKIE)  # and the uid cookie when it decided
UID_HEADER_NAME = "X-CS-Personalize-User-Uid"
FLUSH_SECONDS = 0.5  # a written line reaches the file within this, even if no other request follows


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def uid_source(ctx: VisitorContext) -> str:
    """Where the decided uid came from: "header", "cookie" or "minted" (the proxy made a new one)."""
    source = ctx.user_uid_source()
    return "minted" if source == "other" else source


def description_of(ctx: VisitorContext, method: str, tags: tuple[str, ...] | None) -> dict[str, Any]:
    """The request description that decides as `ctx` did (`edgeproxy decide`, `replay --from-log`)."""
    headers: dict[str, str] = {}
    if ctx.user_agent:
        headers["User-Agent"] = ctx.user_agent
    if ctx.referrer:
        headers["Referer"] = ctx.referrer
    source = uid_source(ctx)
    if source == "header":  # the header wins over the cookie when replayed too
        headers[UID_HEADER_NAME] = ctx.user_uid
    cookie_pairs = []
    if source == "header" and USER_UID_COOKIE in ctx.cookies:
        cookie_pairs.append(f"{USER_UID_COOKIE}={ctx.cookies[USER_UID_COOKIE]}")  # what the visitor also sent
    elif source == "cookie":
        cookie_pairs.append(f"{USER_UID_COOKIE}={ctx.user_uid}")
    # A minted uid: the uid cookie (absent, or refused) is left out, so `userUid` decides when replayed.
    cookie_pairs += [f"{name}={ctx.cookies[name]}" for name in LOGGED_COOKIES if name in ctx.cookies]
    if cookie_pairs:
        headers["Cookie"] = "; ".join(cookie_pairs)
    geo = ctx.geo()
    description: dict[str, Any] = {
        "url": ctx.page_url, "method": method, "headers": headers, "userUid": ctx.user_uid, "ip": ctx.ip,
        "geo": {"country": geo.country, "region": geo.region, "city": geo.city},
        "liveAttributes": dict(ctx.live), "storedAttributes": dict(ctx.stored), "now": iso(ctx.now),
    }  # fmt: skip
    if tags is not None:
        description["tags"] = list(tags)
    return description


class DecisionLog:
    """Appends lines to a file; each line is flushed within `FLUSH_SECONDS` (a timer on the running event loop,
    so an idle proxy's last lines reach the file too) and at shutdown (no line lost on a clean stop)."""

    def __init__(self, path: str, clock: Clock = system_clock) -> None:
        self.path = path
        self.clock = clock  # the process clock (`now` setting): `ts` and `request.now` agree
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        self._last_flush = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.lines = 0

    def write(
        self, *, ctx: VisitorContext, manifest: Manifest, snapshot: str, method: str, path: str,
        tags: tuple[str, ...] | None, status: int, cache: str | None, started: float,
    ) -> None:  # fmt: skip
        record = {
            "ts": iso(self.clock()), "method": method, "path": path, "status": status, "cache": cache,
            "ms": round((time.perf_counter() - started) * 1000, 3), "snapshot": snapshot,
            "userUid": ctx.user_uid, "userUidSource": uid_source(ctx),
            "request": description_of(ctx, method, tags), "decision": manifest.to_dict(),
        }  # fmt: skip
        try:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        except OSError as exc:  # a full disk must not take pages down; it is reported
            log.error("decision log %s: %s", self.path, exc)
            return
        self.lines += 1
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._timer is not None:
            return  # a flush is already due
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # written outside the server (a tool, a test): flush by age
            if time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self.flush()
            return
        self._timer = loop.call_later(FLUSH_SECONDS, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        try:
            self._file.flush()
        except (OSError, ValueError) as exc:  # ValueError: already closed
            log.error("decision log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._file.closed:
            return
        self.flush()
        try:
            self._file.close()
        except OSError as exc:
            log.error("decision log %s: %s", self.path, exc)
