"""Behavioural attributes (SPEC §13): what a tag would collect about a visitor, computed from the page views the
proxy sees and handed to Personalize audiences as ordinary custom attributes.

Pure: a visitor's `Behaviour` (what is kept between page views) and the next one after a page view (`observe`),
the attributes a decision reads (`attributes_of`), and the text it is stored as (`encode`/`decode`). The time is
passed in; nothing here reads a clock, a store or a socket.

Our decisions, where the contract is silent:
- A visit (session) ends after `session_timeout` without a page view; the next page view starts a new one.
- `days_since_*` are whole days (floor), computed at each decision, so they grow without a page view.
  `days_since_last_visit` counts from the last page view of the previous visit, and is absent during the first.
- The first referrer is the host (lower case, as a URL parser reads it, without a trailing dot: "www.google.com")
  of the Referer of the first page view that came from another site; it never changes after. A Referer of the
  site's own host, with or without a leading "www.", is not "another site".
- `utm_source` is the last non-empty `utm_source` query parameter seen.
- A visitor's behaviour expires `expires` after their last page view (the proxy's `attribute_ttl_days`, as the
  stored row does): a page view after that starts afresh, and a decision reads nothing of it.
- A path counter counts page views whose path matches its glob (`*` any characters, `?` one) within the sliding
  window `within` before now; it keeps the times of the last PATH_VIEWS_KEPT matching views, so counts saturate
  at that number.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from multidict import istr

from edgeproxy.store.base import BEHAVIOUR_KEY

STATE_KEY = BEHAVIOUR_KEY  # the stored attribute that holds a visitor's Behaviour (encoded)
PATH_VIEWS_KEPT = 100
DAY = 86_400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY, None: 1.0}


def parse_duration(text: str | float | int, where: str) -> float:
    """ "30m", "7d", "2h", "45s", "1w" or a number of seconds; ValueError naming `where` otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(str(text).strip())
        if match is None:
            raise ValueError(f"{where}: {text!r} is not a duration such as 30m, 2h, 7d or a number of seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not seconds > 0:
        raise ValueError(f"{where}: {text!r} must be a positive duration")
    return seconds


@dataclass(frozen=True, slots=True)
class PathCounter:
    attribute: str
    path: str  # a glob on the page's path
    within: float  # seconds: the sliding window
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    @classmethod
    def of(cls, attribute: str, path: str, within: float) -> PathCounter:
        return cls(attribute, path, within, re.compile(fnmatch.translate(path)))


@dataclass(frozen=True, slots=True)
class BehaviourConfig:
    """The `[behaviour]` section: which computed value goes to which custom attribute key ("" = not computed)."""

    session_timeout: float = 1800.0
    visits: str = ""
    pageviews: str = ""
    days_since_first_visit: str = ""
    days_since_last_visit: str = ""
    first_referrer: str = ""
    utm_source: str = ""
    paths: tuple[PathCounter, ...] = ()
    expires: float = 90 * DAY  # seconds after the last page view (the proxy's attribute_ttl_days, not the section's)
    # The path counters' attributes: a visitor's path views with only these keys, none empty, are reused as they
    # are by a page view that changes none of them (no new dict per page view).
    path_attributes: frozenset[str] = field(init=False, repr=False, compare=False)
    # Matches a path that any counter's glob matches: one regex call tells that a visitor with no path views yet
    # (most of them) has none after this page view either.
    any_path: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_attributes", frozenset(p.attribute for p in self.paths))
        patterns = "|".join(f"(?:{p.pattern.pattern})" for p in self.paths)
        object.__setattr__(self, "any_path", re.compile(patterns) if patterns else None)

    @property
    def owned_keys(self) -> frozenset[str]:
        """The attribute keys this section computes (never written through PATCH /user-attributes)."""
        named = (self.visits, self.pageviews, self.days_since_first_visit, self.days_since_last_visit,
                 self.first_referrer, self.utm_source, *(p.attribute for p in self.paths))  # fmt: skip
        return frozenset(k for k in named if k) | {STATE_KEY}


NAMES = ("visits", "pageviews", "days_since_first_visit", "days_since_last_visit", "first_referrer", "utm_source")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def behaviour_config(section: Mapping[str, Any], where: str = "[behaviour]") -> BehaviourConfig:
    """The `[behaviour]` table of a config file (SPEC §13); ValueError naming the key and what to write."""
    known = {"session_timeout", "paths", *NAMES}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
    names: dict[str, Any] = {}  # (Any: mypy would match a str to every field of the config, `expires` too)
    for name in NAMES:
        value = section.get(name, "")
        if not isinstance(value, str) or (value and not _KEY.fullmatch(value)):
            raise ValueError(f"{where}.{name}: expected an attribute key (letters, digits, _ . : -), got {value!r}")
        names[name] = value
    paths = section.get("paths", [])
    if not isinstance(paths, list):
        raise ValueError(f"{where}.paths: expected [[behaviour.paths]] tables")
    counters = []
    for index, entry in enumerate(paths):
        at = f"{where}.paths[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"attribute", "path", "within"}:
            raise ValueError(f"{at}: expected a table of attribute, path and within")
        attribute, path = entry.get("attribute"), entry.get("path")
        if not isinstance(attribute, str) or not _KEY.fullmatch(attribute):
            raise ValueError(f"{at}.attribute: expected an attribute key, got {attribute!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{at}.path: expected a path glob starting with '/', e.g. /checkout*, got {path!r}")
        counters.append(PathCounter.of(attribute, path, parse_duration(entry.get("within", "30d"), f"{at}.within")))
    config = BehaviourConfig(
        session_timeout=parse_duration(section.get("session_timeout", "30m"), f"{where}.session_timeout"),
        paths=tuple(counters),
        **names,
    )
    keys = [k for k in (*names.values(), *(p.attribute for p in counters)) if k]
    if len(keys) != len(set(keys)):
        raise ValueError(f"{where}: an attribute key is used twice ({sorted(k for k in keys if keys.count(k) > 1)[0]})")
    return config


class Behaviour(NamedTuple):  # built on every page view: a named tuple is the cheapest immutable record
    """What is kept of one visitor between page views (times in whole POSIX seconds)."""

    first_seen: float
    last_seen: float
    previous_visit: float | None  # the last page view of the previous visit; None during the first
    visits: int
    pageviews: int
    first_referrer: str | None
    utm_source: str | None
    path_views: Mapping[str, tuple[float, ...]]  # path counter's attribute -> times of its recent views, oldest first


# Behaviour's fields as a plain tuple, the path views None when there are none: what the behaviour tracker keeps of
# each visitor. The cyclic collector stops tracking an exact tuple of atoms the first time it sees it (never a named
# tuple, nor a tuple holding any dict): kept as Behaviour, every visitor seen since the last collection was promoted
# to the old generation, which then ran a full collection (~80 ms at 20,000 visitors) every ~200,000 page views.
BehaviourFields = tuple[
    float, float, float | None, int, int, str | None, str | None, Mapping[str, tuple[float, ...]] | None
]


class PageView(NamedTuple):
    """A page view as the request has it: the page's URL and the Referer; parsed only as far as a value needs."""

    url: str
    referer: str | None

    @classmethod
    def of(cls, url: str, referer: str | None) -> PageView:
        return cls(url, referer)

    def split(self) -> tuple[str, str, str]:
        """(own host, path, query) of `url` ("scheme://host[:port]/path?query"), without a full URL parse."""
        rest = self.url.partition("://")[2] or self.url
        slash = rest.find("/")
        host, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
        path, _, query = target.partition("#")[0].partition("?")
        return host.rpartition("@")[2].split(":", 1)[0], path or "/", query


def is_page_view(method: str, header: Callable[[str], str | None]) -> bool:
    """Whether a request is a page the visitor navigated to (what counts, SPEC §13), by its method and headers
    (`header(name)`, any case): a GET; no Sec-Fetch-Mode, or "navigate" (not a script's fetch); not
    X-Requested-With: XMLHttpRequest; no prefetch Sec-Purpose/Purpose. Bots and previews are the caller's to leave
    out."""
    if method != "GET" and method.upper() != "GET":
        return False
    mode = header(_SEC_FETCH_MODE)
    if mode is not None and mode != "navigate":
        return False
    if header(_X_REQUESTED_WITH) == "XMLHttpRequest":
        return False
    purpose = header(_SEC_PURPOSE) or header(_PURPOSE) or ""
    return "prefetch" not in purpose


# The names as multidict's case-insensitive keys (a str each): looked up without folding their case per request.
_SEC_FETCH_MODE, _X_REQUESTED_WITH, _SEC_PURPOSE, _PURPOSE = map(
    istr, ("Sec-Fetch-Mode", "X-Requested-With", "Sec-Purpose", "Purpose")
)


def _site(host: str) -> str:
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def observe(config: BehaviourConfig, before: Behaviour | None, view: PageView, now: float) -> Behaviour:
    """The visitor's behaviour after this page view at `now`."""
    return behaviour_of(observe_fields(config, before, view.url, view.referer, now))


_new_behaviour = tuple.__new__  # Behaviour(...) without the named tuple's Python-level __new__ (half the cost)
# A first page view's path views when it counts none: one shared empty mapping, never changed (observe builds a
# new one for a change), so most visitors' behaviour holds no container of its own.
NO_PATH_VIEWS: Mapping[str, tuple[float, ...]] = {}


def behaviour_of(fields: BehaviourFields) -> Behaviour:
    """Fields (`observe_fields`', or a Behaviour) as a Behaviour."""
    first, last, previous, visits, pageviews, referrer, utm, paths = fields
    return _new_behaviour(
        Behaviour, (first, last, previous, visits, pageviews, referrer, utm, NO_PATH_VIEWS if paths is None else paths)
    )


def observe_fields(
    config: BehaviourConfig,
    before: BehaviourFields | None,
    url: str,
    referer: str | None,
    now: float,
    path: str | None = None,
) -> BehaviourFields:
    """`observe` of a page view given as the page's URL and its Referer (what the proxy has at hand: no PageView)
    and `path`, the URL's path (`PageView.split`'s) when the caller has it at hand (else read from `url`); on plain
    fields (`before`: a Behaviour or the fields this returns), giving the fields as a plain tuple, no path views:
    None (what the behaviour tracker keeps, as it is). Runs on every page view, so it reads only what a value
    needs: the path while there are path counters, the query only when it names utm_source, the Referer only while
    the first referrer is unknown (and not when it is a page of the same origin); unchanged path views are the same
    mapping as before."""
    second = int(now)  # whole seconds: what is stored
    shared = _SECONDS.get(second)
    now = _second(second) if shared is None else shared
    paths: Mapping[str, tuple[float, ...]] | None
    if before is None:
        referrer: str | None = None
        utm_before: str | None = None
        paths = None
    else:
        first, last, previous, visits, pageviews, referrer, utm_before, paths = before
        if now - last >= config.expires:  # expired, as the store's row: a new visitor
            before, referrer, utm_before, paths = None, None, None, None
    if paths:  # (path views kept under another config's counters are dropped)
        paths = _path_views(config, paths, _path_of(url) if path is None else path, now) or None
    elif config.any_path is not None:  # none kept: only a page view that a counter matches adds one
        if path is None:
            path = _path_of(url)
        matched = config.any_path.match(path)
        paths = (_path_views(config, NO_PATH_VIEWS, path, now) or None) if matched else None
    else:
        paths = None
    utm = None
    if config.utm_source and ("utm_source" in url or ("%" in url and "%" in url.partition("?")[2])):
        # (a percent-encoded name, "utm%5Fsource", is utm_source too, as a URL parser reads it)
        utm = next((v for k, v in parse_qsl(PageView(url, None).split()[2]) if k == "utm_source"), None)
    external = None
    if config.first_referrer and referer and referrer is None:
        external = _external_referrer(url, referer)
    if before is None:
        return (now, now, None, 1, 1, external, utm, paths)
    new_visit = now - last > config.session_timeout
    return (
        first,
        now if now > last else last,
        last if new_visit else previous,
        visits + new_visit,
        pageviews + 1,
        referrer or external,
        utm or utm_before,
        paths,
    )


# The recent whole seconds as floats, one object each: every visitor seen in a second keeps the same one as its
# last page view's time, so a page view reads a time the CPU has at hand instead of a float of its own allocated
# when the visitor was last seen (a cache miss per page view and time read, at 20,000 visitors and more).
_SECONDS: dict[int, float] = {}


def _second(second: int) -> float:
    if len(_SECONDS) >= 64:  # (time-ordered replay walks through seconds: only the last few are shared)
        _SECONDS.clear()
    shared = _SECONDS[second] = float(second)
    return shared


def _path_of(url: str) -> str:
    """The path of `url`, as `PageView.split` has it, with a few string searches."""
    scheme = url.find("://")
    slash = url.find("/", scheme + 3) if 0 <= scheme < len(url) - 3 else url.find("/")
    if slash < 0:
        return "/"
    query, fragment = url.find("?", slash), url.find("#", slash)
    end = query if fragment < 0 or 0 <= query < fragment else fragment
    return url[slash:] if end < 0 else url[slash:end]


def _path_views(
    config: BehaviourConfig, before: Mapping[str, tuple[float, ...]], path: str, now: float
) -> Mapping[str, tuple[float, ...]]:
    """The path counters' recent views after a page view of `path` at `now`: `before` itself when none changed."""
    if before and not (before.keys() <= config.path_attributes and all(before.values())):
        before = {k: v for k, v in before.items() if k in config.path_attributes and v}  # another config's
    changed: dict[str, tuple[float, ...]] | None = None
    for counter in config.paths:
        kept = before.get(counter.attribute, ())
        now_kept = kept
        if kept and now - kept[0] >= counter.within:
            now_kept = tuple(t for t in kept if now - t < counter.within)
        if counter.pattern.match(path):
            now_kept = (*now_kept, now)[-PATH_VIEWS_KEPT:]
        if now_kept is not kept:
            if changed is None:
                changed = dict(before)
            if now_kept:
                changed[counter.attribute] = now_kept
            else:
                del changed[counter.attribute]
    return before if changed is None else changed


# "scheme://host[:port]" with nothing a URL parser would read differently from PageView.split (userinfo, an IPv6
# literal, white space): a Referer starting with it (then a path, query, fragment or nothing) is of the page's site.
_PLAIN_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~!$&'()*+,;=%-]*(?::[0-9]*)?")


def _external_referrer(url: str, referer: str) -> str | None:
    """The host of `referer` when it is not the page's own site (`_site` of both hosts), else None."""
    scheme = url.find("://")
    slash = url.find("/", scheme + 3) if 0 <= scheme < len(url) - 3 else -1
    origin = url[:slash] if slash >= 0 else url
    if (
        referer.startswith(origin)
        and referer[len(origin) : len(origin) + 1] in ("", "/", "?", "#")
        and _PLAIN_ORIGIN.fullmatch(origin)
    ):
        return None  # the same scheme and host: internal navigation, the common case
    try:
        host = (urlsplit(referer).hostname or "").rstrip(".")
    except ValueError:  # not a URL a parser reads (an unclosed "[", an IP literal that is none): no site named
        return None
    return host if host and _site(host) != _site(PageView(url, None).split()[0]) else None


def reading(config: BehaviourConfig, keys: frozenset[str] | None) -> BehaviourConfig:
    """`config` computing only the attributes among `keys` (None: all of them), for `attributes_of` in a decision
    whose rules read only those keys: the others would be computed for nobody. (`observe` keeps the full config:
    what is kept of a visitor does not depend on the rules.)"""
    if keys is None:
        return config
    read = keys.__contains__
    return replace(
        config,
        visits=config.visits if read(config.visits) else "",
        pageviews=config.pageviews if read(config.pageviews) else "",
        days_since_first_visit=config.days_since_first_visit if read(config.days_since_first_visit) else "",
        days_since_last_visit=config.days_since_last_visit if read(config.days_since_last_visit) else "",
        first_referrer=config.first_referrer if read(config.first_referrer) else "",
        utm_source=config.utm_source if read(config.utm_source) else "",
        paths=tuple(counter for counter in config.paths if read(counter.attribute)),
    )


def attributes_of(config: BehaviourConfig, state: BehaviourFields | None, now: float) -> dict[str, object]:
    """The custom attributes a decision at `now` reads (absent ones are not set: an audience on them is false).
    `state`: a Behaviour or its plain fields (`observe_fields`')."""
    if state is None:
        return {}
    first, last, previous, visits, pageviews, referrer, utm, paths = state
    if now - last >= config.expires:  # expired (a decision without a page view, long after the last)
        return {}
    found: dict[str, object] = {}
    key = config.visits
    if key:
        found[key] = visits
    key = config.pageviews
    if key:
        found[key] = pageviews
    key = config.days_since_first_visit
    if key:
        since = now - first
        found[key] = int(since // DAY) if since > 0.0 else 0
    key = config.days_since_last_visit
    if key and previous is not None:
        since = now - previous
        found[key] = int(since // DAY) if since > 0.0 else 0
    key = config.first_referrer
    if key and referrer:
        found[key] = referrer
    key = config.utm_source
    if key and utm:
        found[key] = utm
    for counter in config.paths:
        times = paths.get(counter.attribute) if paths else None
        if not times:
            found[counter.attribute] = 0
        elif now - min(times) < counter.within:  # all within the window (the common case): no loop
            found[counter.attribute] = len(times)
        else:
            found[counter.attribute] = sum(1 for t in times if now - t < counter.within)
    return found


def encode(state: BehaviourFields) -> str:
    """The stored text: a JSON array `[1, first, last, previous, visits, pageviews, referrer, utm, {paths}]`, times
    as whole seconds (what `observe` keeps). Written by hand: it runs for every visitor with a page view, each
    second, and json.dumps of the tuple costs about 40% more (floats' repr); one %-format is the cheapest here."""
    first, last, previous, visits, pageviews, referrer, utm, paths = state
    return "[1,%d,%d,%s,%d,%d,%s,%s,{%s}]" % (  # noqa: UP031 - one C call, half an f-string's cost here
        first,
        last,
        "null" if previous is None else _whole(previous),
        visits,
        pageviews,
        "null" if referrer is None else _string(referrer),
        "null" if utm is None else _string(utm),
        ",".join([f"{_string(key)}:[{','.join(map(_whole, times))}]" for key, times in paths.items()]) if paths else "",
    )


_whole: Callable[[float], str] = "%d".__mod__  # a time as whole seconds, as int() then str()
_string: Callable[[str], str] = json.encoder.encode_basestring  # C, as json.dumps


def decode(text: object) -> Behaviour | None:
    """A stored behaviour, or None when `text` is absent or not one (a visitor then starts afresh)."""
    if not isinstance(text, str):
        return None
    try:
        version, first, last, previous, visits, pageviews, referrer, utm, paths = json.loads(text)
        if version != 1 or not isinstance(paths, dict):
            return None
        return Behaviour(float(first), float(last), None if previous is None else float(previous), int(visits),
                         int(pageviews), referrer if isinstance(referrer, str) else None,
                         utm if isinstance(utm, str) else None,
                         {str(k): tuple(float(t) for t in v) for k, v in paths.items()})  # fmt: skip
    except (ValueError, TypeError):
        return None
