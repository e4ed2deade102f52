"""The one clock of a running process, passed in (never read from `time` inside a decision).

The proxy, the Edge API, the cache and the stores all take a `Clock`; tests and demos give them one that starts
at a chosen instant (`--now`), so time-bound rules behave the same on any date.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgeproxy.engine.model import parse_iso_time

Clock = Callable[[], float]  # POSIX seconds, UTC


def system_clock() -> float:
    return time.time()


def clock_starting_at(instant: float, monotonic: Callable[[], float] = time.monotonic) -> Clock:
    """A clock that reads `instant` now and then runs on at the rate of `monotonic`."""
    offset = instant - monotonic()

    def now() -> float:
        return monotonic() + offset

    return now


def parse_instant(text: str) -> float:
    """ISO-8601 (a time without a zone is UTC) to POSIX seconds; ValueError names the expected form."""
    try:
        return parse_iso_time(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 date-time, e.g. 2026-11-28T12:00:00Z") from None


def clock_for(now: str) -> Clock:
    """The process clock for the `now` setting: empty = the system clock."""
    return clock_starting_at(parse_instant(now)) if now else system_clock
