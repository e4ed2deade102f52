"""RFC 9111 (HTTP caching, shared cache) and RFC 5861 (stale-while-revalidate / stale-if-error), table-driven.

The pure functions of `edgeproxy.cache.rules`, then `ResponseCache.build_entry` (may this response be stored,
for how long, stale windows, tags, Vary) and `ResponseCache.refreshed` (a 304 updating a stored entry).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
from multidict import CIMultiDict

from edgeproxy.cache import rules
from edgeproxy.cache.layer import ResponseCache
from edgeproxy.cache.store import CachedResponse, MemoryCacheStore

T = 1_800_000_000.0  # the response time of every case (a fixed clock)


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


def cache(default_ttl: float = 0.0, key_headers: tuple[str, ...] = ()) -> ResponseCache:
    return ResponseCache(
        MemoryCacheStore(1 << 20), key_headers=key_headers, default_ttl=default_ttl, max_object_bytes=1 << 20,
        events=Counter(), not_stored=Counter(),
    )


# -- Cache-Control parsing (RFC 9111 §5.2) -----------------------------------------------------------------

PARSE_CASES = [
    ("directives and arguments", ["public, max-age=60"], {"public": None, "max-age": "60"}),
    ("names are case-insensitive", ["Public, MAX-AGE=60, S-MaxAge=5"], {"public": None, "max-age": "60",
                                                                         "s-maxage": "5"}),
    ("several field lines combine", ["max-age=60", "stale-while-revalidate=30"],
     {"max-age": "60", "stale-while-revalidate": "30"}),
    ("quoted argument", ['max-age="60"'], {"max-age": "60"}),
    ("empty members and whitespace", [" , no-cache ,, "], {"no-cache": None}),
    ("no field", [], {}),
]  # fmt: skip


@pytest.mark.parametrize(("values", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_cache_control(values: list[str], expected: dict[str, str | None]) -> None:
    assert rules.parse_cache_control(values) == expected


# -- may a shared cache store it (RFC 9111 §3) ---------------------------------------------------------------

# (id, status, Cache-Control, other response headers, request had Authorization, response has Set-Cookie,
#  default TTL, expected (storable, reason))
STORABLE_CASES: list[tuple[str, int, str, dict[str, str], bool, bool, float, tuple[bool, str]]] = [
    ("s-maxage", 200, "s-maxage=60", {}, False, False, 0, (True, "")),
    ("max-age", 200, "max-age=60", {}, False, False, 0, (True, "")),
    ("public", 200, "public", {}, False, False, 0, (True, "")),
    ("Expires", 200, "", {"Expires": http_date(T + 60)}, False, False, 0, (True, "")),
    ("no freshness, no default TTL", 200, "", {}, False, False, 0, (False, "no freshness information")),
    ("no freshness, default TTL", 200, "", {}, False, False, 30, (True, "")),
    ("no-store", 200, "public, max-age=60, no-store", {}, False, False, 30, (False, "no-store")),
    ("private", 200, "private, max-age=60", {}, False, False, 30, (False, "private")),
    ("Set-Cookie", 200, "public, max-age=60", {}, False, True, 0, (False, "Set-Cookie")),
    ("Vary: *", 200, "public, max-age=60", {"Vary": "*"}, False, False, 0, (False, "Vary: *")),
    ("Vary with * among names", 200, "max-age=60", {"Vary": "Accept, *"}, False, False, 0, (False, "Vary: *")),
    ("Vary on a header", 200, "max-age=60", {"Vary": "Accept-Language"}, False, False, 0, (True, "")),
    ("Authorization without public", 200, "max-age=60", {}, True, False, 0, (False, "Authorization")),
    ("Authorization, default TTL only", 200, "", {}, True, False, 30, (False, "Authorization")),
    ("Authorization with public", 200, "public, max-age=60", {}, True, False, 0, (True, "")),
    ("Authorization with s-maxage", 200, "s-maxage=60", {}, True, False, 0, (True, "")),
    ("Authorization with must-revalidate", 200, "max-age=60, must-revalidate", {}, True, False, 0, (True, "")),
    ("no-cache is stored (and revalidated)", 200, "no-cache, max-age=60", {}, False, False, 0, (True, "")),
    ("404 with freshness", 404, "max-age=60", {}, False, False, 0, (True, "")),
    ("301 with freshness", 301, "max-age=60", {}, False, False, 0, (True, "")),
    ("206 partial content", 206, "max-age=60", {}, False, False, 0, (False, "status 206")),
    ("500", 500, "max-age=60", {}, False, False, 0, (False, "status 500")),
    ("304", 304, "max-age=60", {}, False, False, 0, (False, "status 304")),
]


@pytest.mark.parametrize(
    ("status", "cc", "headers", "auth", "set_cookie", "default_ttl", "expected"),
    [c[1:] for c in STORABLE_CASES], ids=[c[0] for c in STORABLE_CASES],
)  # fmt: skip
def test_storable(
    status: int, cc: str, headers: dict[str, str], auth: bool, set_cookie: bool, default_ttl: float,
    expected: tuple[bool, str],
) -> None:  # fmt: skip
    directives = rules.parse_cache_control([cc] if cc else [])
    got = rules.storable(status, directives, CIMultiDict(headers), has_authorization=auth,
                         has_set_cookie=set_cookie, default_ttl=default_ttl)  # fmt: skip
    assert got == expected


# -- freshness lifetime (RFC 9111 §4.2.1): s-maxage > max-age > Expires > default TTL --------------------------

# (id, Cache-Control, other response headers, default TTL, expected lifetime in seconds)
LIFETIME_CASES: list[tuple[str, str, dict[str, str], float, float]] = [
    ("s-maxage beats max-age and Expires", "s-maxage=10, max-age=20", {"Expires": http_date(T + 30)}, 99, 10),
    ("max-age beats Expires", "max-age=20", {"Expires": http_date(T + 30), "Date": http_date(T)}, 99, 20),
    ("Expires minus Date", "", {"Expires": http_date(T + 30), "Date": http_date(T - 10)}, 99, 40),
    ("Expires minus response time without Date", "", {"Expires": http_date(T + 30)}, 99, 30),
    ("Expires in the past", "", {"Expires": http_date(T - 30), "Date": http_date(T)}, 99, 0),
    ("invalid Expires 0 means already expired", "public", {"Expires": "0"}, 99, 0),
    ("invalid Expires text means already expired", "", {"Expires": "tomorrow"}, 99, 0),
    (
        "Expires in RFC 850 form",
        "",
        {"Expires": "Sunday, 06-Nov-94 08:49:47 GMT", "Date": "Sunday, 06-Nov-94 08:49:37 GMT"},
        99,
        10,
    ),
    ("nothing: the default TTL", "public", {}, 45, 45),
    ("nothing and no default", "", {}, 0, 0),
    ("s-maxage=0 does not fall through", "s-maxage=0, max-age=60", {}, 99, 0),
    ("max-age=0 does not fall through to Expires", "max-age=0", {"Expires": http_date(T + 30)}, 99, 0),
]


@pytest.mark.parametrize(("cc", "headers", "default_ttl", "expected"), [c[1:] for c in LIFETIME_CASES],
                         ids=[c[0] for c in LIFETIME_CASES])  # fmt: skip
def test_freshness_lifetime(cc: str, headers: dict[str, str], default_ttl: float, expected: float) -> None:
    directives = rules.parse_cache_control([cc] if cc else [])
    assert rules.freshness_lifetime(directives, CIMultiDict(headers), T, default_ttl) == pytest.approx(expected)


@pytest.mark.parametrize(("headers", "default_ttl"), [({"Expires": http_date(T + 30)}, 0), ({}, 300)],
                         ids=["with Expires", "with a default TTL"])  # fmt: skip
def test_invalid_max_age_is_stale(headers: dict[str, str], default_ttl: float) -> None:
    directives = rules.parse_cache_control(["max-age=soon"])
    assert rules.freshness_lifetime(directives, CIMultiDict(headers), T, default_ttl) == 0


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """A server whose local time zone is not UTC (HTTP dates are always GMT, whatever the machine's zone)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "EST+05")
    time.tzset()
    try:
        yield
    finally:
        mp.undo()
        time.tzset()


def test_asctime_http_date_is_gmt_whatever_the_local_time_zone(new_york_local_time: None) -> None:
    headers = CIMultiDict({"Expires": "Sun Nov  6 08:49:47 1994", "Date": "Sun, 06 Nov 1994 08:49:37 GMT"})
    assert rules.freshness_lifetime({}, headers, T, 0) == 10


# -- age (RFC 9111 §4.2.3) ------------------------------------------------------------------------------------

# (id, response headers, request time, response time, expected corrected initial age)
AGE_CASES: list[tuple[str, dict[str, str], float, float, float]] = [
    ("nothing: the response delay", {}, T - 0.5, T, 0.5),
    ("Age", {"Age": "100"}, T, T, 100),
    ("Age plus the response delay", {"Age": "100"}, T - 2, T, 102),
    ("apparent age from Date wins when larger", {"Age": "10", "Date": http_date(T - 30)}, T, T, 30),
    ("Age wins when larger than the apparent age", {"Age": "50", "Date": http_date(T - 30)}, T, T, 50),
    ("a Date in the future counts as no apparent age", {"Date": http_date(T + 300)}, T, T, 0),
    ("an invalid Age is ignored", {"Age": "old", "Date": http_date(T)}, T - 1, T, 1),
    ("an invalid Date is ignored", {"Age": "5", "Date": "yesterday"}, T, T, 5),
]


@pytest.mark.parametrize(("headers", "request_time", "response_time", "expected"), [c[1:] for c in AGE_CASES],
                         ids=[c[0] for c in AGE_CASES])  # fmt: skip
def test_initial_age(headers: dict[str, str], request_time: float, response_time: float, expected: float) -> None:
    assert rules.initial_age(CIMultiDict(headers), request_time, response_time) == pytest.approx(expected)


# -- stale windows (RFC 5861; RFC 9111 §5.2.2.2, §5.2.2.4, §5.2.2.8) -------------------------------------------

STALE_CASES = [
    ("both windows", "max-age=60, stale-while-revalidate=30, stale-if-error=600", (30.0, 600.0)),
    ("only stale-if-error", "max-age=60, stale-if-error=600", (0.0, 600.0)),
    ("none", "max-age=60", (0.0, 0.0)),
    ("must-revalidate disables them", "max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=9",
     (0.0, 0.0)),
    ("proxy-revalidate disables them", "max-age=60, proxy-revalidate, stale-while-revalidate=30", (0.0, 0.0)),
    ("no-cache disables them", "no-cache, max-age=60, stale-while-revalidate=30, stale-if-error=9", (0.0, 0.0)),
    ("an invalid window is none", "max-age=60, stale-while-revalidate=later", (0.0, 0.0)),
]  # fmt: skip


@pytest.mark.parametrize(("cc", "expected"), [c[1:] for c in STALE_CASES], ids=[c[0] for c in STALE_CASES])
def test_stale_windows(cc: str, expected: tuple[float, float]) -> None:
    assert rules.stale_windows(rules.parse_cache_control([cc])) == expected


@pytest.mark.parametrize(
    ("cc", "revalidate"),
    [("no-cache", True), ("No-Cache, max-age=60", True), ("max-age=60", False), ("no-store", False)],
)
def test_needs_revalidation(cc: str, revalidate: bool) -> None:
    assert rules.needs_revalidation(rules.parse_cache_control([cc])) is revalidate


@pytest.mark.parametrize(
    ("vary", "names"),
    [("", ()), ("Accept-Language", ("accept-language",)),
     ("Accept-Language, accept-encoding ,X-CS-Variant-Uid",
      ("accept-encoding", "accept-language", "x-cs-variant-uid"))],
)  # fmt: skip
def test_vary_names_are_normalised(vary: str, names: tuple[str, ...]) -> None:
    assert rules.vary_names(CIMultiDict({"Vary": vary} if vary else {})) == names



# -- ResponseCache.build_entry: the whole decision on one origin response ---------------------------------------

UPSTREAM = {"Accept-Language": "de", "X-CS-Variant-Uid": "cs_personalize_0_1", "Accept": "text/html"}

# (id, response headers, upstream request headers, default TTL, expected: None -> stored with these fields;
#  str -> not stored for this reason)
BUILD_CASES: list[tuple[str, list[tuple[str, str]], dict[str, str], float, dict[str, Any] | str]] = [
    ("s-maxage", [("Cache-Control", "public, s-maxage=300, max-age=10")], UPSTREAM, 0,
     {"lifetime": 300, "swr": 0, "sie": 0, "no_cache": False}),
    ("max-age with both stale windows", [("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=90")],
     UPSTREAM, 0, {"lifetime": 60, "swr": 30, "sie": 90}),
    ("must-revalidate disables the stale windows",
     [("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=90, must-revalidate")], UPSTREAM, 0,
     {"lifetime": 60, "swr": 0, "sie": 0}),
    ("Expires", [("Expires", http_date(T + 120)), ("Date", http_date(T))], UPSTREAM, 0, {"lifetime": 120}),
    ("invalid Expires: stored already expired", [("Expires", "0"), ("ETag", '"e1"')], UPSTREAM, 30,
     {"lifetime": 0, "etag": '"e1"'}),
    ("default TTL when the origin says nothing", [("Content-Type", "text/html")], UPSTREAM, 45, {"lifetime": 45}),
    ("nothing and no default TTL", [("Content-Type", "text/html")], UPSTREAM, 0, "no freshness information"),
    ("no-store", [("Cache-Control", "no-store, max-age=60")], UPSTREAM, 30, "no-store"),
    ("private", [("Cache-Control", "private, max-age=60")], UPSTREAM, 30, "private"),
    ("Vary: *", [("Cache-Control", "max-age=60"), ("Vary", "*")], UPSTREAM, 0, "Vary: *"),
    ("Vary: Cookie", [("Cache-Control", "public, max-age=60"), ("Vary", "Accept-Encoding, Cookie")], UPSTREAM, 0,
     "Vary: Cookie"),
    ("Set-Cookie", [("Cache-Control", "public, max-age=60"), ("Set-Cookie", "sid=1; Path=/")], UPSTREAM, 0,
     "Set-Cookie"),
    ("Authorization without public", [("Cache-Control", "max-age=60")], {**UPSTREAM, "Authorization": "Bearer x"}, 0,
     "Authorization"),
    ("Authorization with public", [("Cache-Control", "public, max-age=60")], {**UPSTREAM, "Authorization": "Bearer x"},
     0, {"lifetime": 60}),
    ("no-cache: stored, revalidated before every use", [("Cache-Control", "no-cache, max-age=60"), ("ETag", '"v"')],
     UPSTREAM, 0, {"lifetime": 60, "no_cache": True, "swr": 0, "sie": 0, "etag": '"v"'}),
    ("Surrogate-Control wins over a private Cache-Control",
     [("Surrogate-Control", "max-age=600"), ("Cache-Control", "private, no-store")], UPSTREAM, 0, {"lifetime": 600}),
    ("Surrogate-Control wins over s-maxage", [("Surrogate-Control", "max-age=120"), ("Cache-Control", "s-maxage=5")],
     UPSTREAM, 0, {"lifetime": 120}),
    ("Surrogate-Control no-store wins over a public Cache-Control",
     [("Surrogate-Control", "no-store"), ("Cache-Control", "public, max-age=600")], UPSTREAM, 0, "no-store"),
    ("initial age from Age and Date", [("Cache-Control", "max-age=600"), ("Age", "20"), ("Date", http_date(T - 50))],
     UPSTREAM, 0, {"initial_age": 50, "lifetime": 600}),
    ("Vary records the selecting request headers as forwarded",
     [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language, X-CS-Variant-Uid, X-Missing")], UPSTREAM, 0,
     {"vary": (("accept-language", "de"), ("x-cs-variant-uid", "cs_personalize_0_1"), ("x-missing", ""))}),
    ("surrogate keys and cache tags",
     [("Cache-Control", "max-age=60"), ("Surrogate-Key", "blt1 homepage"), ("Cache-Tag", "a, b"),
      ("Surrogate-Key", "blt2")], UPSTREAM, 0, {"tags": ("blt1", "homepage", "blt2", "a", "b")}),
    ("validators", [("Cache-Control", "max-age=60"), ("ETag", 'W/"x"'),
                    ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")], UPSTREAM, 0,
     {"etag": 'W/"x"', "last_modified": "Sun, 06 Nov 1994 08:49:37 GMT"}),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "upstream", "default_ttl", "expected"), [c[1:] for c in BUILD_CASES],
                         ids=[c[0] for c in BUILD_CASES])  # fmt: skip
def test_build_entry(
    headers: list[tuple[str, str]], upstream: dict[str, str], default_ttl: float, expected: dict[str, Any] | str
) -> None:
    layer = cache(default_ttl)
    entry = layer.build_entry(
        status=200, reason="OK", headers=headers, body=b"body", path="/p?q=1", upstream_headers=CIMultiDict(upstream),
        request_time=T, response_time=T,
    )  # fmt: skip
    if isinstance(expected, str):
        assert entry is None
        assert dict(layer.not_stored) == {expected: 1}
        return
    assert entry is not None, dict(layer.not_stored)
    assert not layer.not_stored
    for name, value in expected.items():
        got = getattr(entry, name)
        assert got == (pytest.approx(value) if isinstance(value, float | int) and not isinstance(value, bool)
                       else value), name  # fmt: skip
    assert entry.body == b"body" and entry.path == "/p?q=1" and entry.stored_at == T


def test_build_entry_keeps_the_origin_headers_for_replay() -> None:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "max-age=60"), ("Link", "</a>; rel=preload"),
               ("Link", "</b>; rel=preload")]  # fmt: skip
    entry = cache().build_entry(
        status=200, reason="OK", headers=headers, body=b"{}", path="/", upstream_headers=CIMultiDict(),
        request_time=T, response_time=T,
    )  # fmt: skip
    assert entry is not None and entry.headers == headers


def test_build_entry_of_a_404_with_freshness_keeps_its_status() -> None:
    entry = cache().build_entry(
        status=404, reason="Not Found", headers=[("Cache-Control", "max-age=60")], body=b"nope", path="/gone",
        upstream_headers=CIMultiDict(), request_time=T, response_time=T,
    )  # fmt: skip
    assert entry is not None and (entry.status, entry.reason) == (404, "Not Found")


# -- an entry over time: fresh, stale-while-revalidate, stale-if-error ------------------------------------------

# (id, lifetime, swr, sie, no_cache, initial age, seconds since stored, expected (fresh, within swr, within sie))
TIMELINE_CASES = [
    ("fresh", 60, 30, 90, False, 0, 59.9, (True, True, True)),
    ("stale at exactly the lifetime", 60, 0, 0, False, 0, 60, (False, False, False)),
    ("within stale-while-revalidate", 60, 30, 90, False, 0, 80, (False, True, True)),
    ("past stale-while-revalidate, within stale-if-error", 60, 30, 90, False, 0, 100, (False, False, True)),
    ("past both windows", 60, 30, 90, False, 0, 150, (False, False, False)),
    ("the initial age counts", 60, 0, 0, False, 50, 10, (False, False, False)),
    ("no-cache is never fresh", 60, 0, 0, True, 0, 0, (False, False, False)),
]


@pytest.mark.parametrize(
    ("lifetime", "swr", "sie", "no_cache", "initial", "elapsed", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in TIMELINE_CASES],
)
def test_entry_timeline(
    lifetime: float, swr: float, sie: float, no_cache: bool, initial: float, elapsed: float,
    expected: tuple[bool, bool, bool],
) -> None:  # fmt: skip
    entry = CachedResponse(status=200, reason="OK", headers=[], body=b"", path="/", tags=(), stored_at=T,
                           initial_age=initial, lifetime=lifetime, swr=swr, sie=sie, no_cache=no_cache)  # fmt: skip
    now = T + elapsed
    assert (entry.fresh(now), entry.within_swr(now), entry.within_sie(now)) == expected
    assert entry.age(now) == pytest.approx(initial + elapsed)


def test_entry_is_kept_past_freshness_for_its_stale_windows_and_for_revalidation() -> None:
    def keep(swr: float, sie: float, etag: str | None) -> float:
        entry = CachedResponse(status=200, reason="OK", headers=[], body=b"", path="/", tags=(), stored_at=T,
                               initial_age=0, lifetime=60, swr=swr, sie=sie, no_cache=False, etag=etag)  # fmt: skip
        return entry.keep_for()

    assert keep(0, 0, None) == 60
    assert keep(30, 90, None) == 150
    assert keep(0, 0, '"v"') > 60  # worth keeping to revalidate with a conditional request


def test_entry_survives_packing_for_a_shared_store() -> None:
    entry = CachedResponse(
        status=200, reason="OK", headers=[("Content-Type", "text/html"), ("Link", "a"), ("Link", "b")],
        body=bytes(range(256)), path="/p?x=1", tags=("blt1", "homepage"), stored_at=T, initial_age=3.5, lifetime=60,
        swr=30, sie=90, no_cache=True, vary=(("accept-language", "de"),), etag='"e"', last_modified="x",
    )  # fmt: skip
    assert CachedResponse.unpack(entry.pack()) == entry


# -- ResponseCache.refreshed: a 304 updates headers and freshness, the body stays (RFC 9111 §4.3.4) --------------


def stored_entry(headers: list[tuple[str, str]], *, at: float = T - 100) -> CachedResponse:
    entry = cache().build_entry(
        status=200, reason="OK", headers=headers, body=b"the stored body", path="/p",
        upstream_headers=CIMultiDict({"Accept-Language": "de"}), request_time=at, response_time=at,
    )  # fmt: skip
    assert entry is not None
    return entry


def test_304_refreshes_freshness_and_keeps_the_body() -> None:
    old = stored_entry([("Cache-Control", "max-age=60"), ("ETag", '"a"'), ("Date", http_date(T - 100)),
                        ("Content-Length", "15"), ("Content-Type", "text/plain"), ("Vary", "Accept-Language"),
                        ("Surrogate-Key", "t1")])  # fmt: skip
    assert not old.fresh(T)
    new = cache().refreshed(old, [("Cache-Control", "max-age=300"), ("ETag", '"a"'), ("Date", http_date(T)),
                                  ("Content-Length", "0")], T, T)  # fmt: skip
    assert new.fresh(T) and new.lifetime == 300 and new.stored_at == T and new.initial_age == pytest.approx(0)
    assert new.body == b"the stored body" and new.status == 200
    merged = CIMultiDict(new.headers)
    assert merged["Content-Length"] == "15"  # the 304's own framing does not describe the stored body
    assert merged["Cache-Control"] == "max-age=300" and merged["Content-Type"] == "text/plain"
    assert new.vary == old.vary and new.tags == ("t1",) and new.path == "/p"


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ([("ETag", '"b"'), ("Date", http_date(T))], {"etag": '"b"', "lifetime": 60}),
        ([("Cache-Control", "max-age=60, must-revalidate"), ("Date", http_date(T))], {"swr": 0, "sie": 0}),
        ([("Cache-Control", "no-cache"), ("Date", http_date(T))], {"no_cache": True}),
        ([("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"), ("Date", http_date(T))],
         {"last_modified": "Sun, 06 Nov 1994 08:49:37 GMT"}),
        ([("Age", "30"), ("Date", http_date(T))], {"initial_age": 30}),
    ],
    ids=["new ETag", "must-revalidate now", "no-cache now", "Last-Modified", "Age"],
)  # fmt: skip
def test_304_updates_what_it_carries(update: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    old = stored_entry([("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=90"),
                        ("ETag", '"a"'), ("Date", http_date(T - 100))])  # fmt: skip
    new = cache().refreshed(old, update, T, T)
    for name, value in expected.items():
        assert getattr(new, name) == value, name


def test_304_keeps_repeated_header_fields_it_does_not_carry() -> None:
    old = stored_entry([("Cache-Control", "max-age=60"), ("Cache-Control", "stale-while-revalidate=30"),
                        ("Link", "</a.css>; rel=preload"), ("Link", "</b.js>; rel=preload"), ("ETag", '"a"'),
                        ("Date", http_date(T - 100))])  # fmt: skip
    assert (old.lifetime, old.swr) == (60, 30)
    new = cache().refreshed(old, [("ETag", '"a"'), ("Date", http_date(T))], T, T)
    assert (new.lifetime, new.swr) == (60, 30)
    assert CIMultiDict(new.headers).getall("Link") == ["</a.css>; rel=preload", "</b.js>; rel=preload"]


# -- the key: the variant set, never the cookie or the user uid ---------------------------------------------------


def test_key_holds_the_variant_set_and_key_headers_never_cookies_or_the_user_uid() -> None:
    layer = cache(key_headers=("Accept-Language",))
    a = {"Cookie": "cs-personalize-user-uid=alice; session=1", "X-CS-Personalize-User-Uid": "alice",
         "Accept-Language": "en"}  # fmt: skip
    b = {"Cookie": "cs-personalize-user-uid=bob", "X-CS-Personalize-User-Uid": "bob", "Accept-Language": "en"}
    key_a = layer.key("Shop.Example", "/p?x=1", "0_1,1_0", CIMultiDict(a))
    assert key_a == layer.key("shop.example", "/p?x=1", "0_1,1_0", CIMultiDict(b))
    assert "alice" not in key_a and "session" not in key_a
    assert key_a != layer.key("shop.example", "/p?x=1", "1_0,0_1", CIMultiDict(b))  # priority order matters
    assert key_a != layer.key("shop.example", "/p?x=1", "0_1", CIMultiDict(b))
    assert key_a != layer.key("shop.example", "/p?x=1", "0_1,1_0", CIMultiDict({**b, "Accept-Language": "de"}))
    assert key_a != layer.key("shop.example", "/p?x=2", "0_1,1_0", CIMultiDict(b))
    assert key_a != layer.key("other.example", "/p?x=1", "0_1,1_0", CIMultiDict(b))


# -- the embedded store: bounded in bytes, least recently used out first; purge indexes ----------------------------


def stored(path: str, size: int = 1000, tags: tuple[str, ...] = (), age: float = 0.0) -> CachedResponse:
    return CachedResponse(
        status=200, reason="OK", headers=[], body=b"x" * size, path=path, tags=tags, stored_at=T - age,
        initial_age=0, lifetime=60, swr=0, sie=0, no_cache=False,
    )  # fmt: skip


def test_memory_store_is_bounded_in_bytes_and_evicts_the_least_recently_used() -> None:
    async def scenario() -> None:
        one = stored("/a").size
        store = MemoryCacheStore(max_bytes=3 * one, clock=lambda: T)
        for key in ("a", "b", "c"):
            await store.put(key, stored(f"/{key}"))
        assert await store.get("a") is not None  # a is now the most recently used
        await store.put("d", stored("/d"))
        assert await store.get("b") is None  # the least recently used went
        assert all([await store.get(k) is not None for k in ("a", "c", "d")])
        assert store.bytes == 3 * one and store.evictions == 1
        await store.put("huge", stored("/huge", size=4 * one))  # larger than the whole cache: not kept
        assert await store.get("huge") is None and store.bytes == 3 * one
        stats = await store.stats()
        assert (stats["entries"], stats["bytes"], stats["evictions"]) == (3, 3 * one, 1)

    asyncio.run(scenario())


def test_memory_store_drops_entries_past_their_keep_time() -> None:
    async def scenario() -> None:
        store = MemoryCacheStore(max_bytes=1 << 20, clock=lambda: T)
        await store.put("old", stored("/old", age=61))  # lifetime 60, no stale windows, no validators
        await store.put("new", stored("/new", age=59))
        assert await store.get("old") is None and await store.get("new") is not None
        assert (await store.stats())["entries"] == 1

    asyncio.run(scenario())


def test_memory_store_purges_every_variant_by_url_prefix_and_tag() -> None:
    async def scenario() -> None:
        store = MemoryCacheStore(max_bytes=1 << 20, clock=lambda: T)
        entries = {
            "v1|/p?x=1": stored("/p?x=1", tags=("blt1",)), "v2|/p?x=1": stored("/p?x=1", tags=("blt1",)),
            "v1|/p?x=2": stored("/p?x=2"), "v1|/products/a": stored("/products/a", tags=("product",)),
            "v2|/products/b": stored("/products/b", tags=("product", "blt2")), "v1|/": stored("/", tags=("home",)),
        }  # fmt: skip
        for key, entry in entries.items():
            await store.put(key, entry)
        per_path = {d["path"]: d["keys"] for d in (await store.stats())["variantKeysPerPath"]}
        assert per_path == {"/p?x=1": 2, "/p?x=2": 1, "/products/a": 1, "/products/b": 1, "/": 1}
        assert await store.purge(paths=["/p?x=1"], prefixes=[], tags=[]) == 2
        assert await store.purge(paths=[], prefixes=["/products/"], tags=[]) == 2
        assert await store.purge(paths=[], prefixes=[], tags=["home", "blt2", "nothing"]) == 1
        assert [k for k in entries if await store.get(k) is not None] == ["v1|/p?x=2"]
        assert (await store.stats())["variantKeysPerPath"] == [{"path": "/p?x=2", "keys": 1}]

    asyncio.run(scenario())
