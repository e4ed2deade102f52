"""The decision log: one JSON line per personalized request, replayable by `edgeproxy replay --from-log`.

    {"ts": "...Z", "method": "GET", "path": "/p?x=1", "status": 200, "cache": "MISS", "ms": 1.9,
     "snapshot": "sha256:...", "request": <SPEC §9 request description>, "decision": <decide output>}

The request description carries everything the decision read — page URL, the headers rules can see, the uid,
client IP and resolved geo, live and stored attributes, the clock and the tags — so replaying it through the
same snapshot reproduces the decision exactly. Cookies other than the Personalize/Lytics ones are not logged.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from edgeproxy.engine.context import (
    LYTICS_AUDIENCES_COOKIE,
    LYTICS_FLOWS_COOKIE,
    USER_UID_COOKIE,
    VisitorContext,
)
from edgeproxy.engine.decide import Manifest

log = logging.getLogger("edgeproxy.decisions")
LOGGED_COOKIES = (USER_UID_COOKIE, LYTICS_AUDIENCES_COOKIE, LYTICS_FLOWS_COOKIE)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def description_of(ctx: VisitorContext, method: str, tags: tuple[str, ...] | None) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if ctx.user_agent:
        headers["User-Agent"] = ctx.user_agent
    if ctx.referrer:
        headers["Referer"] = ctx.referrer
    cookies = "; ".join(f"{name}={ctx.cookies[name]}" for name in LOGGED_COOKIES if name in ctx.cookies)
    if cookies:
        headers["Cookie"] = cookies
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
    """Appends lines to a file; flushed at least once a second and at shutdown (no line lost on a clean stop)."""

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        self._last_flush = time.monotonic()
        self.lines = 0

    def write(
        self, *, ctx: VisitorContext, manifest: Manifest, snapshot: str, method: str, path: str,
        tags: tuple[str, ...] | None, status: int, cache: str | None, started: float,
    ) -> None:  # fmt: skip
        record = {
            "ts": iso(time.time()), "method": method, "path": path, "status": status, "cache": cache,
            "ms": round((time.perf_counter() - started) * 1000, 3), "snapshot": snapshot,
            "request": description_of(ctx, method, tags), "decision": manifest.to_dict(),
        }  # fmt: skip
        try:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self.lines += 1
            now = time.monotonic()
            if now - self._last_flush > 1.0:
                self._file.flush()
                self._last_flush = now
        except OSError as exc:  # a full disk must not take pages down; it is reported
            log.error("decision log %s: %s", self.path, exc)

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            log.error("decision log %s: %s", self.path, exc)

    def close(self) -> None:
        self.flush()
        try:
            self._file.close()
        except OSError as exc:
            log.error("decision log %s: %s", self.path, exc)
