"""The visitor context: everything a decision may read about one request, computed lazily.

Built from a request description (contract §9) or by the proxy from a live request; both go through
`build_context`, so a replayed request and a proxied one are the same context. Nothing here does I/O:
the clock, the uid generator and the geo database lookup are passed in by the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.model import Forcing, iso_timestamp
from edgeproxy.engine.useragent import UserAgentClass, UserAgentClassifier

USER_UID_HEADER = "x-cs-personalize-user-uid"
USER_UID_COOKIE = "cs-personalize-user-uid"
MANIFEST_COOKIE = "cs-personalize-manifest"
LYTICS_AUDIENCES_COOKIE = "cs-lytics-audiences"
LYTICS_FLOWS_COOKIE = "cs-lytics-flows"
LYTICS_AUDIENCES_ATTRIBUTE = "__lytics_audiences"
LIVE_ATTRIBUTES_HEADER = "x-live-attributes"
PAGE_URL_HEADER = "x-page-url"


class Geo(NamedTuple):
    """Where the visitor is, as far as known. A named tuple: one is made per request, and that is cheaper than a
    frozen dataclass."""

    country: str | None = None
    region: str | None = None
    city: str | None = None

    def complete(self) -> bool:
        return self.country is not None and self.region is not None and self.city is not None


NO_GEO = Geo()
GeoLookup = Callable[[str], Geo | None]

# Geo headers set by CDNs in front of us; trusted only where the caller says so (the proxy: from
# configured proxy addresses; `decide`: a description records what the edge saw, so yes).
GEO_HEADERS: dict[str, tuple[str, ...]] = {
    "country": (
        "cloudfront-viewer-country",
        "cf-ipcountry",
        "x-vercel-ip-country",
        "x-appengine-country",
        "fastly-geo-country",
        "x-geo-country",
        "x-country-code",
    ),
    "region": (
        "cloudfront-viewer-country-region",
        "cf-region-code",
        "x-vercel-ip-country-region",
        "x-appengine-region",
        "fastly-geo-region",
        "x-geo-region",
    ),
    "city": (
        "cloudfront-viewer-city",
        "cf-ipcity",
        "x-vercel-ip-city",
        "x-appengine-city",
        "fastly-geo-city",
        "x-geo-city",
    ),
}
_UNKNOWN_GEO = frozenset({"", "XX", "T1", "ZZ", "?", "-", "(null)"})


def geo_from_headers(headers: Mapping[str, str]) -> Geo:
    found: dict[str, str | None] = {}
    for field, names in GEO_HEADERS.items():
        value = None
        for name in names:
            raw = headers.get(name)
            if raw is not None and raw.strip() not in _UNKNOWN_GEO:
                value = unquote(raw.strip())  # Vercel URL-encodes city names
                break
        found[field] = value
    return Geo(**found)


def parse_cookie_header(header: str) -> dict[str, str]:
    """Cookie name -> raw value; the value is the text between the first `=` and `;` (contract §6)."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if sep and name and name not in cookies:
            cookies[name] = value.strip()
    return cookies


def parse_pipe_set(raw: Any) -> frozenset[str]:
    """`|vip|sale|` (Lytics audiences, contract §3) -> {"vip", "sale"}; URL-encoded or a JSON list too."""
    if isinstance(raw, list | tuple):
        return frozenset(str(item) for item in raw if item)
    if not isinstance(raw, str):
        return frozenset()
    text = unquote(raw) if "%" in raw else raw
    separator = "|" if "|" in text or "," not in text else ","
    return frozenset(item.strip() for item in text.split(separator) if item.strip())


def _known_query(page_url: str | None, query: str | None) -> str | None:
    """`query` when it is exactly `urlsplit(page_url).query` (everything after the URL's first `?`, with no
    fragment or characters urlsplit strips), else None: then it is parsed from the URL when first asked for."""
    if page_url is None or query is None or "#" in page_url or "\t" in page_url or "\r" in page_url or "\n" in page_url:
        return None
    if not query:
        return "" if "?" not in page_url else None
    return query if page_url.find("?") == len(page_url) - len(query) - 1 else None


class VisitorContext:
    """One request's view for the decision; each derived value is computed on first use only."""

    __slots__ = (
        "_classifier",
        "_flows",
        "_geo",
        "_geo_lookup",
        "_lytics",
        "_params",
        "_partial_geo",
        "_query",
        "_ua",
        "cookies",
        "ip",
        "live",
        "memberships",
        "now",
        "page_url",
        "referrer",
        "stored",
        "uid_header",
        "user_agent",
        "user_uid",
    )

    def __init__(
        self,
        *,
        user_uid: str,
        now: float,
        user_agent: str | None = None,
        referrer: str | None = None,
        page_url: str | None = None,
        cookies: Mapping[str, str] | None = None,
        live: Mapping[str, Any] | None = None,
        stored: Mapping[str, Any] | None = None,
        ip: str | None = None,
        geo: Geo = NO_GEO,
        geo_lookup: GeoLookup | None = None,
        classifier: UserAgentClassifier | None = None,
        query: str | None = None,
        uid_header: str | None = None,
    ) -> None:
        """`query`: the query string of `page_url` when the caller has it already (else parsed from the URL).
        `uid_header`: the raw `X-CS-Personalize-User-Uid` header, kept to tell where the uid came from."""
        self.user_uid = user_uid
        self.uid_header = uid_header
        self.now = now  # POSIX seconds, UTC
        self.user_agent = user_agent or None
        self.referrer = referrer or None
        self.page_url = page_url or None
        self.cookies = cookies or {}
        self.live = live or {}
        self.stored = stored or {}
        self.ip = ip or None
        # Audience results of this request, by the snapshot's compiled audience (edgeproxy/engine/decide.py).
        self.memberships: dict[Callable[[VisitorContext], bool], bool] = {}
        self._geo: Geo | None = geo if geo.complete() or geo_lookup is None or not ip else None
        self._partial_geo = geo
        self._geo_lookup = geo_lookup
        self._classifier = classifier
        self._ua: UserAgentClass | None = None
        self._query: str | None = None if query is None else _known_query(self.page_url, query)
        self._params: dict[str, list[str]] | None = None
        self._lytics: frozenset[str] | None = None
        self._flows: frozenset[str] | None = None

    def user_uid_source(self) -> str:
        """Where the uid came from: "header" (`X-CS-Personalize-User-Uid`), "cookie" (`cs-personalize-user-uid`),
        else "other" (minted by the proxy, or a description's `userUid`)."""
        uid = self.user_uid
        header = self.uid_header
        if header is not None and header.strip() == uid:
            return "header"
        cookie = self.cookies.get(USER_UID_COOKIE)
        if cookie is not None and cookie.strip() == uid:
            return "cookie"
        return "other"

    # -- presets ------------------------------------------------------------------------------------

    def geo(self) -> Geo:
        geo = self._geo
        if geo is None:
            given = self._partial_geo
            looked = self._geo_lookup(self.ip) if self._geo_lookup and self.ip else None
            if looked is None:
                geo = given
            else:  # per field: description/CDN headers first, then the database
                geo = Geo(
                    country=given.country or looked.country,
                    region=given.region or looked.region,
                    city=given.city or looked.city,
                )
            self._geo = geo
        return geo

    def geo_source(self) -> tuple[str | None, str | None, str | None, str | None]:
        """What `geo()` is a function of: the known fields, and the IP when the database is still to be asked.
        Cheaper than `geo()` when it would ask (memos key on it)."""
        geo = self._geo
        if geo is not None:
            return geo.country, geo.region, geo.city, None
        given = self._partial_geo
        return given.country, given.region, given.city, self.ip

    def ua_class(self) -> UserAgentClass | None:
        if self._ua is None and self.user_agent is not None:
            classifier = self._classifier or UserAgentClassifier(limit=1)
            self._ua = classifier.classify(self.user_agent)
        return self._ua

    def query_string(self) -> str | None:
        if self._query is None:
            url = self.page_url or ""
            try:
                query = urlsplit(url).query
            except ValueError:  # a bracket out of place in the host ("http://]/?q" from a bogus Host header)
                query = url.partition("?")[2].partition("#")[0]
            self._query = query
        return self._query or None

    def query_params(self) -> dict[str, list[str]]:
        if self._params is None:
            query = self.query_string()
            self._params = parse_qs(query, keep_blank_values=True) if query else {}
        return self._params

    # -- attributes ---------------------------------------------------------------------------------

    def custom(self, key: str) -> Any:
        # Live (request-scoped) attributes override stored ones (contract §3, ours).
        if key in self.live:
            return self.live[key]
        return self.stored.get(key)

    def lytics_audiences(self) -> frozenset[str]:
        if self._lytics is None:
            raw = self.live.get(LYTICS_AUDIENCES_ATTRIBUTE)
            if raw is None:
                raw = self.cookies.get(LYTICS_AUDIENCES_COOKIE)
            self._lytics = parse_pipe_set(raw)
        return self._lytics

    def lytics_flows(self) -> frozenset[str]:
        if self._flows is None:
            self._flows = parse_pipe_set(self.cookies.get(LYTICS_FLOWS_COOKIE))
        return self._flows


def _valid_text(value: str) -> bool:
    """Header bytes that are not UTF-8 arrive as lone surrogates; such a uid could not be stored or echoed."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_USER_UID_LENGTH = 256
# RFC 6265 §4.1.1 cookie-octet: printable ASCII without space, DQUOTE, comma, semicolon and backslash.
_UID_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,256}").fullmatch


def valid_user_uid(uid: str) -> bool:
    """contract §11: a user uid is 1-256 characters of RFC 6265 cookie-octet; anything else counts as absent, so it
    can never inject cookie attributes (`; Domain=...`) or headers when it is echoed."""
    return _UID_OCTETS(uid) is not None and uid not in NOT_A_UID


# What a JavaScript client writes when it has no uid (the browser SDK stores `String(undefined or null)` when a
# manifest came without a uid header, as in consent mode): absent, or every such visitor would share one identity.
NOT_A_UID = frozenset({"null", "undefined"})


def resolve_user_uid(
    headers: Mapping[str, str], cookies: Mapping[str, str], fallback: str | None, new_uid: Callable[[], str]
) -> tuple[str, bool]:
    """contract §9: header, else cookie, else the given uid, else a new one. Returns (uid, is_new). A header or
    cookie uid that is not valid (contract §11, `valid_user_uid`) counts as absent and is never echoed."""
    for candidate in (headers.get(USER_UID_HEADER), cookies.get(USER_UID_COOKIE)):
        if candidate is not None:
            candidate = candidate.strip()  # raw: the SDK neither encodes nor decodes the uid (contract §6)
            if valid_user_uid(candidate):
                return candidate, False
    if fallback is not None:
        fallback = fallback.strip()
        if fallback and _valid_text(fallback):
            return fallback, False
    return new_uid(), True


MAX_JSON_DEPTH = 32  # nesting of JSON a client sends (attributes, Edge API bodies)
MAX_JSON_NUMBER = 64  # characters of one JSON number


class ClientJsonError(ValueError):
    """JSON from a client that is malformed or beyond the bounds (depth, number size); the message is ours."""


def _bounded_int(text: str) -> int:
    if len(text) > MAX_JSON_NUMBER:
        raise ClientJsonError(f"a number over {MAX_JSON_NUMBER} characters")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_JSON_NUMBER:
        raise ClientJsonError(f"a number over {MAX_JSON_NUMBER} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ClientJsonError("a number out of range")
    return value


def _no_constant(text: str) -> Any:
    raise ClientJsonError(f"{text} is not JSON")


def load_client_json(raw: str | bytes) -> Any:
    """`json.loads` for what a client sends: numbers of at most MAX_JSON_NUMBER characters and finite, no
    NaN/Infinity, nesting at most MAX_JSON_DEPTH. Every failure is a ClientJsonError (never a RecursionError
    or the interpreter's int-size ValueError), so it can only become a 4xx."""
    try:
        value = json.loads(raw, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)
    except ClientJsonError:
        raise
    except json.JSONDecodeError as exc:
        raise ClientJsonError(f"not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError, TypeError):
        raise ClientJsonError("not valid JSON") from None
    if isinstance(value, dict | list):
        _check_depth(value)
    elif isinstance(value, str) and not value.isascii():
        _check_text(value)
    return value


def _check_depth(value: dict[str, Any] | list[Any]) -> None:
    """Nesting within MAX_JSON_DEPTH, and no string (key or value) holding a lone surrogate (`"\\ud800"`),
    which could be neither stored nor sent on as UTF-8."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ClientJsonError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            children: Any = item.values()
            for key in item:
                if not key.isascii():
                    _check_text(key)
        else:
            children = item
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, str) and not child.isascii():
                _check_text(child)


def _check_text(text: str) -> None:
    if not _valid_text(text):
        raise ClientJsonError("a string that is not valid Unicode")


def parse_live_attributes_header(raw: str | None, where: str = "X-Live-Attributes header") -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = load_client_json(raw)
    except ClientJsonError as exc:
        raise RequestDescriptionError(where, f"{exc}; send a JSON object") from None
    if not isinstance(value, dict):
        raise RequestDescriptionError(where, "must be a JSON object of attribute key -> value")
    return value


class DescribedRequest(NamedTuple):
    """A request description read (one per request: a named tuple is cheaper to make than a frozen dataclass)."""

    context: VisitorContext
    tags: tuple[str, ...] | None
    user_uid_is_new: bool
    forcing: Forcing | None = None  # the description's `preview` (SPEC §10): decide with `decide_forced`


def build_context(
    *,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    user_uid: str,
    now: float,
    page_url: str | None,
    live: Mapping[str, Any],
    stored: Mapping[str, Any],
    ip: str | None,
    geo: Geo = NO_GEO,
    trust_geo_headers: bool,
    geo_lookup: GeoLookup | None,
    classifier: UserAgentClassifier | None,
    query: str | None = None,
) -> VisitorContext:
    """The one way a context is made, for descriptions and live requests alike.

    `headers` must answer `.get()` for lower-case names (a lower-cased dict or a case-insensitive multidict).
    Geo per field: `geo` first, then CDN headers when `trust_geo_headers`, then the database for `ip`.
    """
    if trust_geo_headers and not geo.complete() and any(name in headers for name in _GEO_HEADER_NAMES):
        header_geo = geo_from_headers(headers)
        geo = Geo(
            country=geo.country or header_geo.country,
            region=geo.region or header_geo.region,
            city=geo.city or header_geo.city,
        )
    return VisitorContext(
        user_uid=user_uid,
        now=now,
        user_agent=headers.get("user-agent"),
        referrer=headers.get("referer"),
        page_url=page_url,
        cookies=cookies,
        live=live,
        stored=stored,
        ip=ip,
        geo=geo,
        geo_lookup=geo_lookup,
        classifier=classifier,
        query=query,
        uid_header=headers.get(USER_UID_HEADER),
    )


_FIELD_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "url": (str, "a URL string"),
    "method": (str, "an HTTP method string"),
    "headers": (dict, "an object of header name -> value"),
    "userUid": (str, "a string"),
    "ip": (str, "an IP address string"),
    "geo": (dict, 'an object {"country", "region", "city"}'),
    "liveAttributes": (dict, "an object of attribute key -> value"),
    "storedAttributes": (dict, "an object of attribute key -> value"),
    "now": (str, "an ISO-8601 date-time string"),
    "tags": (list, "an array of tag strings"),
    "preview": (dict, 'an object {"set": {experience: variant or null}, "draft": true|false, "now": ISO-8601}'),
}
_GEO_HEADER_NAMES = frozenset(name for names in GEO_HEADERS.values() for name in names)


def context_from_description(
    desc: Any,
    *,
    clock: Callable[[], float],
    new_uid: Callable[[], str],
    classifier: UserAgentClassifier | None = None,
    geo_lookup: GeoLookup | None = None,
) -> DescribedRequest:
    """A contract §9 request description -> a context. Raises `RequestDescriptionError` on bad fields.

    Unknown fields are ignored (descriptions may carry more, e.g. a decision log's recorded manifest).
    """
    if not isinstance(desc, dict):
        raise RequestDescriptionError("$", "a request description must be a JSON object")
    for name, value in desc.items():
        expected = _FIELD_TYPES.get(name)
        if expected is None or value is None or value.__class__ is expected[0]:  # the exact class: what JSON gives
            continue
        if not isinstance(value, expected[0]):
            raise RequestDescriptionError(name, f"expected {expected[1]}, found {type(value).__name__}")
    headers: dict[str, str] = {}
    raw_headers = desc.get("headers")
    if raw_headers:
        for name, value in raw_headers.items():
            if value.__class__ is not str:
                if isinstance(value, list):  # several values of one header
                    value = ", ".join(str(v) for v in value)
                elif isinstance(value, bool) or not isinstance(value, int | float):
                    raise RequestDescriptionError(f"headers.{name}", "expected a string")
                value = str(value)
            headers[name.lower()] = value
    tags_field = desc.get("tags")
    if tags_field is not None and not all(isinstance(tag, str) for tag in tags_field):
        raise RequestDescriptionError("tags", "every tag must be a string")
    now_field = desc.get("now")
    now: float | None = None
    if now_field is not None:
        try:
            now = iso_timestamp(now_field)
        except ValueError:
            raise RequestDescriptionError("now", f"{now_field!r} is not ISO-8601 (e.g. 2026-11-22T10:00:00Z)") from None
    forcing = None
    preview_field = desc.get("preview")
    if preview_field is not None:
        forcing, preview_now = _preview(preview_field)
        if preview_now is not None:  # the preview's time wins: it is what QA asked to see
            now = preview_now
    if now is None:
        now = clock()
    cookie_header = headers.get("cookie")
    cookies = parse_cookie_header(cookie_header) if cookie_header else {}
    user_uid, is_new = resolve_user_uid(headers, cookies, desc.get("userUid"), new_uid)
    live_header = headers.get(LIVE_ATTRIBUTES_HEADER)
    live_field = desc.get("liveAttributes")
    if live_header is not None:
        live = parse_live_attributes_header(live_header, "headers.X-Live-Attributes")
        if live_field:
            live.update(live_field)
    else:
        live = live_field or {}
    geo_field = desc.get("geo")
    given_geo = NO_GEO
    if geo_field:
        for key in ("country", "region", "city"):
            if geo_field.get(key) is not None and not isinstance(geo_field[key], str):
                raise RequestDescriptionError(f"geo.{key}", "expected a string")
        given_geo = Geo(geo_field.get("country"), geo_field.get("region"), geo_field.get("city"))
    ip = desc.get("ip")
    if ip is None and "x-forwarded-for" in headers:
        ip = headers["x-forwarded-for"].split(",")[0].strip() or None
    context = build_context(
        headers=headers,
        cookies=cookies,
        user_uid=user_uid,
        now=now,
        page_url=headers.get(PAGE_URL_HEADER) or desc.get("url"),
        live=live,
        stored=desc.get("storedAttributes") or {},
        ip=ip,
        geo=given_geo,
        # A description records what the edge saw, so its CDN geo headers count (the check is a fast way to say
        # whether there are any: `headers` is a lower-cased dict here).
        trust_geo_headers=not _GEO_HEADER_NAMES.isdisjoint(headers),
        geo_lookup=geo_lookup,
        classifier=classifier,
    )
    return DescribedRequest(context, tuple(tags_field) if tags_field is not None else None, is_new, forcing)


_PREVIEW_FIELDS = ("set", "draft", "now")


def _preview(field: dict[str, Any]) -> tuple[Forcing, float | None]:
    """A description's `preview` (SPEC §10, as a preview token carries it) -> the forcing and the preview time."""
    for key in field:
        if key not in _PREVIEW_FIELDS:
            raise RequestDescriptionError(
                f"preview.{key}", f"unknown field; a preview has {', '.join(_PREVIEW_FIELDS)}"
            )
    forced: list[tuple[str, str | None]] = []
    chosen = field.get("set")
    if chosen is not None:
        if not isinstance(chosen, dict):
            raise RequestDescriptionError(
                "preview.set",
                f"expected an object of experience shortUid -> variant shortUid or null, found {type(chosen).__name__}",
            )
        for experience, variant in chosen.items():
            if variant is not None and not isinstance(variant, str):
                raise RequestDescriptionError(
                    f"preview.set.{experience}",
                    "expected a variant shortUid string, or null to exclude the experience; "
                    f"found {type(variant).__name__}",
                )
            forced.append((experience, variant))
    draft = field.get("draft")
    if draft is not None and not isinstance(draft, bool):
        raise RequestDescriptionError("preview.draft", f"expected true or false, found {type(draft).__name__}")
    now_field = field.get("now")
    now = None
    if now_field is not None:
        if not isinstance(now_field, str):
            raise RequestDescriptionError(
                "preview.now", f"expected an ISO-8601 date-time string, found {type(now_field).__name__}"
            )
        try:
            now = iso_timestamp(now_field)
        except ValueError:
            raise RequestDescriptionError(
                "preview.now", f"{now_field!r} is not ISO-8601 (e.g. 2026-11-27T12:00:00Z)"
            ) from None
    return Forcing(tuple(forced), draft is True), now
