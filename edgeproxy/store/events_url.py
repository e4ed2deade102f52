"""The `events` setting: where events live durably when not in the state store (a PostgreSQL URL for fleets).

Kept apart from the PostgreSQL store so that validating a config or routing a report by URL scheme does not
import the driver.
"""

from __future__ import annotations

from urllib.parse import urlsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
EVENTS_FORMS = "postgresql://user[:password]@host[:port]/database (also postgres://)"


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def shown_url(url: str) -> str:
    """`url` without its password (user:secret@host -> user:***@host), for messages and reports."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    credentials, _, host = authority.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{path}"


def events_url_problem(url: str) -> str | None:
    """Why `url` is not an event store this build opens, or None. Only the form is checked: no connection."""
    if not is_postgres(url):
        scheme, sep, _ = url.partition("://")
        named = f"unknown scheme {scheme + '://'!r}" if sep else "not a URL"
        return f"{shown_url(url)!r}: {named}; use {EVENTS_FORMS}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{shown_url(url)!r} has a port that is not 1-65535"
    if not parts.hostname:
        return f"{shown_url(url)!r} names no host; use {EVENTS_FORMS}"
    if port is not None and not 1 <= port <= 65535:
        return f"{shown_url(url)!r} has a port that is not 1-65535"
    if not parts.path.strip("/"):
        return f"{shown_url(url)!r} names no database; use {EVENTS_FORMS}"
    if "/" in parts.path.strip("/"):
        return f"{shown_url(url)!r}: the path must be just the database name"
    return None
