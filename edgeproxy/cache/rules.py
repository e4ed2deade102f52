"""RFC 9111 (HTTP caching) and RFC 5861 (stale-while-revalidate / stale-if-error) for a shared cache.

Small pure functions, each citing the section it implements (after hishel's `_core/_spec.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

STORABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})  # no 206: no ranges here


def parse_cache_control(values: list[str]) -> dict[str, str | None]:
    """RFC 9111 §5.2: comma-separated directives, case-insensitive names, optional (quoted) values."""
    directives: dict[str, str | None] = {}
    for value in values:
        for part in value.split(","):
            name, sep, arg = part.strip().partition("=")
            name = name.strip().lower()
            if not name:
                continue
            directives[name] = arg.strip().strip('"') if sep else None
    return directives


def _seconds(directives: Mapping[str, str | None], name: str) -> int | None:
    raw = directives.get(name)
    if raw is None:
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        return None  # RFC 9111 §1.2.2: an invalid delta-seconds is treated as absent here


def _http_date(value: str | None) -> float | None:
    """RFC 9110 §5.6.7: all three HTTP-date formats are GMT, including asctime, which names no zone."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def storable(
    status: int, response_cc: Mapping[str, str | None], headers: Mapping[str, str], *, has_authorization: bool,
    has_set_cookie: bool, default_ttl: float,
) -> tuple[bool, str]:  # fmt: skip
    """RFC 9111 §3: may a shared cache store this response? Returns (yes, reason when not)."""
    if status not in STORABLE_STATUSES:
        return False, f"status {status}"
    if "no-store" in response_cc:
        return False, "no-store"  # §5.2.2.5
    if "private" in response_cc:
        return False, "private"  # §5.2.2.7 (shared cache)
    if has_set_cookie:
        return False, "Set-Cookie"  # ours: a cookie from the origin belongs to one visitor
    vary = headers.get("Vary", "")
    if "*" in [v.strip() for v in vary.split(",")]:
        return False, "Vary: *"  # §4.1
    if has_authorization and not any(d in response_cc for d in ("public", "s-maxage", "must-revalidate")):
        return False, "Authorization"  # §3.5
    explicit = any(d in response_cc for d in ("max-age", "s-maxage", "public")) or "Expires" in headers
    if not explicit and default_ttl <= 0:
        return False, "no freshness information"
    return True, ""


def freshness_lifetime(
    response_cc: Mapping[str, str | None], headers: Mapping[str, str], response_time: float, default_ttl: float
) -> float:
    """RFC 9111 §4.2.1: s-maxage, then max-age, then Expires - Date, else our configured default TTL."""
    for name in ("s-maxage", "max-age"):
        if name in response_cc:
            value = _seconds(response_cc, name)
            # An invalid value makes the response stale, and Expires is ignored when max-age is present (§5.3).
            return 0.0 if value is None else float(value)
    expires = headers.get("Expires")
    if expires is not None:
        when = _http_date(expires)
        if when is None:
            return 0.0  # §5.3: an invalid Expires means "already expired"
        date = _http_date(headers.get("Date")) or response_time
        return max(0.0, when - date)
    return max(0.0, default_ttl)


def initial_age(headers: Mapping[str, str], request_time: float, response_time: float) -> float:
    """RFC 9111 §4.2.3: corrected initial age from Age and Date."""
    age_value = 0.0
    try:
        age_value = float(int(headers.get("Age", "0")))
    except ValueError:
        age_value = 0.0
    date = _http_date(headers.get("Date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = response_time - request_time
    return max(apparent_age, age_value + response_delay)


def needs_revalidation(response_cc: Mapping[str, str | None]) -> bool:
    """`no-cache` (§5.2.2.4): store, but never serve without validating with the origin first."""
    return "no-cache" in response_cc


def stale_windows(response_cc: Mapping[str, str | None]) -> tuple[float, float]:
    """RFC 5861: (stale-while-revalidate, stale-if-error) seconds; none when must-revalidate applies."""
    if "must-revalidate" in response_cc or "proxy-revalidate" in response_cc or "no-cache" in response_cc:
        return 0.0, 0.0  # RFC 9111 §5.2.2.2: must not serve stale
    return float(_seconds(response_cc, "stale-while-revalidate") or 0), float(
        _seconds(response_cc, "stale-if-error") or 0
    )


def vary_names(headers: Mapping[str, str]) -> tuple[str, ...]:
    """RFC 9111 §4.1: the request headers a stored response depends on, normalised."""
    names = sorted({v.strip().lower() for v in headers.get("Vary", "").split(",") if v.strip()})
    return tuple(names)
