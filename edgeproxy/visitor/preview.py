"""Preview links (issue 17): a signed, short-lived token that makes the proxy decide one visitor's pages with
chosen variants forced, draft versions shown, or another time — so QA sees a variant on the real site before it
ships.

Pure: no I/O and no clock read here; every instant is passed in. The token is
`base64url(payload JSON) "." base64url(HMAC-SHA256(secret, payload JSON))`, unpadded, where the payload is
`{"d": draft, "exp": expiry, "f": [[experience, variant or null], ...], "iat": mint time, "n": preview time or
null, "v": 1}` with sorted keys and no spaces. `verify` never raises on what a visitor sends: anything but a token
this secret signed, still in date and at most 7 days long, is `Invalid` with a short reason for the one log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from edgeproxy.clock import parse_instant

PREVIEW_PARAM = "cs_preview"  # ?cs_preview=<token> starts a preview, ?cs_preview=off ends it
PREVIEW_OFF = "off"
PREVIEW_COOKIE = "cs-personalize-preview"  # the session cookie that keeps following navigation in preview
PREVIEW_HEADER = "X-Edgeproxy-Preview"  # upstream: "1"; to the browser: "invalid" for a refused token

MAX_LIFETIME = 7 * 86_400.0  # seconds from mint to expiry
CLOCK_SKEW = 300.0  # seconds the proxy's clock may lag the minting machine's before a full-length token is refused
MAX_TOKEN_CHARS = 2048  # fits a URL anywhere and a cookie (4096 bytes with name and attributes)
MAX_FORCED = 64
MAX_UID_CHARS = 64
TOKEN_VERSION = 1

MALFORMED = "malformed"
BAD_SIGNATURE = "bad signature"
EXPIRED = "expired"
TOO_LONG_LIVED = "too long-lived"
NO_SECRET = "no secret"

_SHORT_UID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_UID_CHARS}}}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")
_PAYLOAD_KEYS = frozenset({"d", "exp", "f", "iat", "n", "v"})
_SIGNATURE_BYTES = hashlib.sha256().digest_size
# Instants a preview may name: years 1 to 9999, what an ISO-8601 date-time (and `datetime`) can hold.
_EARLIEST = -62_135_596_800.0
_LATEST = 253_402_300_799.0
_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.ASCII | re.IGNORECASE)
_TTL_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


@dataclass(frozen=True, slots=True)
class Preview:
    """What a preview token grants. `forced` pairs an experience short uid with the variant short uid to show, or
    None to exclude the experience (null variant); `draft` decides experiences on their DRAFT version; `now` is the
    time every time condition reads (None: the proxy's clock). `expires` and `issued` are POSIX seconds."""

    forced: tuple[tuple[str, str | None], ...]
    draft: bool
    now: float | None
    expires: float
    issued: float


@dataclass(frozen=True, slots=True)
class Invalid:
    """A token that grants nothing; `reason` is one of MALFORMED, BAD_SIGNATURE, EXPIRED, TOO_LONG_LIVED,
    NO_SECRET."""

    reason: str


def is_short_uid(text: str) -> bool:
    """Whether `text` can name an experience or variant in a token: 1-64 of [A-Za-z0-9_-]."""
    return _SHORT_UID.fullmatch(text) is not None


def _instant(value: object) -> float | None:
    """A JSON number that is a finite instant in years 1-9999, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and _EARLIEST <= number <= _LATEST else None


def _problem(preview: Preview) -> str | None:
    """Why `preview` cannot be a token, or None: the shape rules minting and verifying share (the 7-day bound,
    a separate reason when verifying, is checked by each)."""
    if not isinstance(preview.forced, tuple) or len(preview.forced) > MAX_FORCED:
        return f"at most {MAX_FORCED} forced experiences"
    seen: set[str] = set()
    for pair in preview.forced:
        if not isinstance(pair, tuple) or len(pair) != 2:
            return "each forced entry is (experience short uid, variant short uid or None)"
        experience, variant = pair
        if not isinstance(experience, str) or not is_short_uid(experience):
            return f"experience {experience!r} is not 1-{MAX_UID_CHARS} of A-Z a-z 0-9 _ -"
        if variant is not None and (not isinstance(variant, str) or not is_short_uid(variant)):
            return f"variant {variant!r} is not 1-{MAX_UID_CHARS} of A-Z a-z 0-9 _ -"
        if experience in seen:
            return f"experience {experience!r} is forced twice"
        seen.add(experience)
    if not isinstance(preview.draft, bool):
        return "draft is true or false"
    for name in ("now", "expires", "issued"):
        value = getattr(preview, name)
        if not (name == "now" and value is None) and _instant(value) is None:
            return f"{name} is not an instant in years 1-9999"
    if not preview.expires > preview.issued:
        return "expires is not after issued"
    return None


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Unpadded base64url in its one canonical spelling (no stray bits, no other alphabet), else None."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return raw if _b64encode(raw) == text else None


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value  # 1764331200, not 1764331200.0


def _sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def mint(preview: Preview, secret: bytes | str) -> str:
    """The token for `preview`, signed with `secret`. ValueError when the secret is empty, the preview breaks a
    limit (uids, at most 64 forced experiences, expiry after mint and at most 7 days later) or the token would
    be longer than MAX_TOKEN_CHARS."""
    key = _key(secret)
    if not key:
        raise ValueError("the preview secret is empty: previews are off")
    problem = _problem(preview)
    if problem is None and preview.expires - preview.issued > MAX_LIFETIME:
        problem = "a preview lasts at most 7 days"
    if problem is not None:
        raise ValueError(f"cannot mint this preview: {problem}")
    payload = {
        "d": preview.draft,
        "exp": _number(float(preview.expires)),
        "f": [list(pair) for pair in preview.forced],
        "iat": _number(float(preview.issued)),
        "n": None if preview.now is None else _number(float(preview.now)),
        "v": TOKEN_VERSION,
    }
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    token = f"{_b64encode(body)}.{_b64encode(_sign(key, body))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(
            f"the token would be {len(token)} characters, over {MAX_TOKEN_CHARS}: force fewer experiences per link"
        )
    return token


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _preview_of(payload: object) -> Preview | None:
    """The Preview a signed payload describes, or None when its shape is not version 1's."""
    if not isinstance(payload, dict) or set(payload) != _PAYLOAD_KEYS or payload["v"] != TOKEN_VERSION:
        return None
    if isinstance(payload["v"], bool):
        return None
    forced = payload["f"]
    if not isinstance(forced, list) or len(forced) > MAX_FORCED:
        return None
    pairs: list[tuple[str, str | None]] = []
    for item in forced:
        if not isinstance(item, list) or len(item) != 2:
            return None
        pairs.append((item[0], item[1]))
    now = payload["n"]
    preview_now = None if now is None else _instant(now)
    expires, issued = _instant(payload["exp"]), _instant(payload["iat"])
    if (now is not None and preview_now is None) or expires is None or issued is None:
        return None
    preview = Preview(forced=tuple(pairs), draft=payload["d"], now=preview_now, expires=expires, issued=issued)
    return preview if _problem(preview) is None else None


def verify(token: str, secret: bytes | str, now: float) -> Preview | Invalid:
    """The Preview `token` grants at `now` (POSIX seconds), or Invalid with the reason. Never raises on `token`."""
    key = _key(secret)
    if not key:
        return Invalid(NO_SECRET)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return Invalid(MALFORMED)
    body_text, _, signature_text = token.partition(".")
    body, signature = _b64decode(body_text), _b64decode(signature_text)
    if not body or signature is None or len(signature) != _SIGNATURE_BYTES:
        return Invalid(MALFORMED)
    if not hmac.compare_digest(_sign(key, body), signature):
        return Invalid(BAD_SIGNATURE)
    try:  # signed by whoever holds the secret, so well-formed unless the minting code was another one's
        payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return Invalid(MALFORMED)
    preview = _preview_of(payload)
    if preview is None:
        return Invalid(MALFORMED)
    if now >= preview.expires:
        return Invalid(EXPIRED)
    # The 7-day bound from the recorded mint time, and from now too: a mint time set in the future must not
    # stretch a token's life.
    if preview.expires - preview.issued > MAX_LIFETIME or preview.expires - now > MAX_LIFETIME + CLOCK_SKEW:
        return Invalid(TOO_LONG_LIVED)
    return preview


def strip_preview_param(raw_query: str) -> tuple[str, str | None]:
    """`raw_query` without any `cs_preview` parameter (the rest kept byte for byte, in order), and the value of
    the first one (percent-decoded; "" for a bare `cs_preview`), or None when there is none."""
    if PREVIEW_PARAM not in raw_query and "%" not in raw_query:  # the hot path: no preview, nothing to decode
        return raw_query, None
    found: str | None = None
    kept = []
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == PREVIEW_PARAM:
            if found is None:
                found = unquote_plus(value)
            continue
        kept.append(part)
    return "&".join(kept), found


def page_url_problem(url: str) -> str | None:
    """Why `url` cannot carry a preview (not an http(s) URL with a host), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        return f"{url!r} is not a URL: give an http:// or https:// URL of a page, e.g. https://shop.example/p"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http:// or https:// URL with a host: give one like https://shop.example/p"
    return None


def preview_link(url: str, token: str) -> str:
    """`url` with `cs_preview=<token>` (any earlier `cs_preview` replaced; path, other parameters and fragment
    kept). `url` is an http(s) URL with a host, or a path on this site (`/p?q`: the dashboard's links); else
    ValueError, as for a `token` with characters a token never has."""
    if _TOKEN.fullmatch(token) is None:
        raise ValueError(f"{token!r} is not a preview token")
    on_site = url.startswith("/") and not url.startswith("//")
    problem = None if on_site else page_url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    parts = urlsplit(url)
    kept, _ = strip_preview_param(parts.query)
    query = f"{kept}&{PREVIEW_PARAM}={token}" if kept else f"{PREVIEW_PARAM}={token}"
    return urlunsplit(parts._replace(path=parts.path or "/", query=query))


def _cookie_attributes(max_age: int, secure: bool) -> str:
    return f"Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")


def session_cookie(token: str, expires: float, now: float, secure: bool) -> str:
    """The Set-Cookie value that keeps a visitor in preview until the token expires (Max-Age rounded down, so the
    cookie never outlives its token). `Secure` when the visitor's scheme is https, as the other cookies."""
    if _TOKEN.fullmatch(token) is None:
        raise ValueError(f"{token!r} is not a preview token")
    return f"{PREVIEW_COOKIE}={token}; {_cookie_attributes(max(0, math.floor(expires - now)), secure)}"


def end_cookie(secure: bool) -> str:
    """The Set-Cookie value that ends a preview (`?cs_preview=off`)."""
    return f"{PREVIEW_COOKIE}=; {_cookie_attributes(0, secure)}"


def parse_ttl(text: str) -> float:
    """A preview's lifetime in seconds from `3600`, `90s`, `30m`, `1h`, `2d` (decimals allowed: `1.5h`); at least
    1 second and at most 7 days. ValueError says which forms are accepted."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: seconds (3600) or a number with s, m, h or d (30m, 1h, 2d)")
    seconds = float(match[1]) * _TTL_UNITS[match[2].lower()]
    if not seconds >= 1:
        raise ValueError(f"{text!r} is too short: a preview lasts at least 1 second")
    if seconds > MAX_LIFETIME:
        raise ValueError(f"{text!r} is longer than the 7 days a preview link may last (at most 7d)")
    return seconds


# -- what a request says about preview (the planner asks; the Edge API too) ----------------------------------------

PREVIEW_RESPONSE_HEADERS = (("Cache-Control", "no-store"), ("X-Robots-Tag", "noindex"))
INVALID_RESPONSE_HEADERS = ((PREVIEW_HEADER, "invalid"),)


@dataclass(frozen=True, slots=True)
class PreviewAsked:
    """What a request carrying a `cs_preview` parameter or the preview cookie gets: `grant` (None: decided
    normally), why a token was refused (`refused`, for the one log line and `X-Edgeproxy-Preview: invalid`), and
    the Set-Cookie value to send (the session cookie for a token in the URL; the end cookie for `cs_preview=off`
    or a refused cookie)."""

    grant: Preview | None
    refused: str | None
    set_cookie: str | None

    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]:
        granted = PREVIEW_RESPONSE_HEADERS if self.grant is not None else ()
        return granted + INVALID_RESPONSE_HEADERS if self.refused is not None else granted


def may_ask_preview(raw_query: str, cookies: Mapping[str, str]) -> bool:
    """False when the request certainly asks nothing of preview: no preview cookie, and no `cs_preview` in the
    query, even percent-encoded. The only test a visitor's request pays for previews being on."""
    return PREVIEW_COOKIE in cookies or PREVIEW_PARAM in raw_query or "%" in raw_query


def preview_asked(
    secret: str, raw_query: str, cookies: Mapping[str, str], clock: Callable[[], float], secure: bool
) -> tuple[str, PreviewAsked | None]:
    """The query without any `cs_preview` parameter, and what the request asks of preview (None: nothing, the
    common case). A token in the URL wins over the cookie; an invalid one is ignored (a valid cookie still
    applies) and reported; `cs_preview=off` ends the preview. With no secret, previews are off and nothing is
    read. `clock` is read only when there is a token to check."""
    if not secret or not may_ask_preview(raw_query, cookies):
        return raw_query, None
    query, token = strip_preview_param(raw_query)
    cookie = cookies.get(PREVIEW_COOKIE)
    if token is None and cookie is None:
        return raw_query, None
    now = clock()
    if token == PREVIEW_OFF:
        return query, PreviewAsked(None, None, end_cookie(secure))
    refused = None
    if token is not None:
        granted = verify(token, secret, now)
        if isinstance(granted, Preview):
            return query, PreviewAsked(granted, None, session_cookie(token, granted.expires, now, secure))
        refused = f"URL token: {granted.reason}"
    if cookie is not None:
        granted = verify(cookie, secret, now)
        if isinstance(granted, Preview):
            return query, PreviewAsked(granted, refused, None)
        refused = f"{refused}; " if refused else ""
        return query, PreviewAsked(None, f"{refused}cookie: {granted.reason}", end_cookie(secure))
    return query, PreviewAsked(None, refused, None)


# -- minting, from a command line or the ops API ------------------------------------------------------------------


class PreviewRequestError(ValueError):
    """What is wrong with a request for a preview link; `field` names the part ("set", "exclude", "now", "ttl",
    "url"), for `--set` on the command line and `"set"` in the ops API's JSON."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_UID_FORM = "short uids of letters, digits, '-' or '_'"


def preview_for(
    forced: Sequence[tuple[str, str]],
    excluded: Sequence[str],
    *,
    draft: bool,
    now: str | None,
    ttl: str,
    issued: float,
) -> Preview:
    """The preview a link asks for: `forced` (experience, variant) short uid pairs, `excluded` experiences, `now`
    as ISO-8601 (None: the proxy's clock), `ttl` as `parse_ttl` reads it, minted at `issued` (whole seconds keep
    the token short). PreviewRequestError says which part is wrong and how to write it."""
    chosen: dict[str, str | None] = {}
    for experience, variant in forced:
        if not is_short_uid(experience) or not is_short_uid(variant):
            pair = f"{experience}={variant}"
            raise PreviewRequestError("set", f"{pair!r}: expected EXP=VAR, {_UID_FORM}, e.g. 0=2")
        if experience in chosen:
            raise PreviewRequestError("set", f"{experience!r}: this experience is forced twice; give it once")
        chosen[experience] = variant
    for experience in excluded:
        if not is_short_uid(experience):
            raise PreviewRequestError("exclude", f"{experience!r}: expected an experience short uid ({_UID_FORM})")
        if experience in chosen:
            raise PreviewRequestError("exclude", f"{experience!r}: this experience is already forced; give it once")
        chosen[experience] = None
    if len(chosen) > MAX_FORCED:
        raise PreviewRequestError("set", f"{len(chosen)} experiences named; a link forces at most {MAX_FORCED}")
    try:
        preview_now = parse_instant(now) if now is not None else None
    except (ValueError, OverflowError) as exc:
        raise PreviewRequestError("now", str(exc)) from None
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        raise PreviewRequestError("ttl", str(exc)) from None
    issued = float(math.floor(issued))
    expires = float(math.floor(issued + seconds))
    return Preview(forced=tuple(chosen.items()), draft=draft, now=preview_now, expires=expires, issued=issued)


def signed_link(url: str, preview: Preview, secret: str) -> str:
    """`url` (absolute, or a path on this site) carrying the signed token of `preview`. PreviewRequestError for a
    bad URL or a preview past a limit."""
    try:
        token = mint(preview, secret)
    except ValueError as exc:
        raise PreviewRequestError("set", str(exc)) from None
    try:
        return preview_link(url, token)
    except ValueError as exc:
        raise PreviewRequestError("url", str(exc)) from None
