"""The visitor side of a proxied request: context from the live request, upstream variant headers, cookies."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from multidict import CIMultiDictProxy

from edgeproxy.engine.context import (
    LIVE_ATTRIBUTES_HEADER,
    MANIFEST_COOKIE,
    USER_UID_COOKIE,
    USER_UID_HEADER,
    ClientJsonError,
    GeoLookup,
    VisitorContext,
    build_context,
    load_client_json,
    parse_cookie_header,
    resolve_user_uid,
)
from edgeproxy.engine.decide import Manifest
from edgeproxy.engine.memo import MEMO_LIMIT, MemoDecider
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.store.base import TOMBSTONES_KEPT, tombstone_of

UID_COOKIE_MAX_AGE = 31_536_000  # contract §6
MEMO_COOKIE_CHARS = 512  # Cookie headers memoised by `Identities` (longer ones are parsed per request)


def _live_attributes(raw: str | None) -> dict[str, object]:
    # On proxied pages a malformed header is ignored rather than failing the page; the Edge API rejects it.
    if not raw:
        return {}
    try:
        value = load_client_json(raw)
    except ClientJsonError:
        return {}
    return value if isinstance(value, dict) else {}


class Identity(NamedTuple):  # immutable, and built per request: a frozen dataclass costs three times as much
    cookies: Mapping[str, str]  # read-only: a returning visitor's may be shared between requests (Identities)
    user_uid: str
    is_new: bool


def consent_given(cookies: Mapping[str, str], cookie: str, value: str) -> bool:
    """Consent mode (SPEC §11): whether the visitor's `cookie` says they consented: any non-empty value, or exactly
    `value` when one is configured. Without it the visitor is nobody (`ANONYMOUS_UID`): the proxy's decision reads
    request data only, sets no cookie and is stored and counted nowhere; replay decides their traffic the same way."""
    given = cookies.get(cookie)
    return bool(given) and (not value or given == value)


def new_user_uid() -> str:
    return str(uuid.uuid4())


def identify(headers: CIMultiDictProxy[str]) -> Identity:
    """User uid: `X-CS-Personalize-User-Uid` header, else the cookie, else a new UUID4 (contract §9)."""
    cookie_header = headers.get("Cookie")
    cookies = parse_cookie_header(cookie_header) if cookie_header else {}
    user_uid, is_new = resolve_user_uid(headers, cookies, None, new_user_uid)
    return Identity(cookies, user_uid, is_new)


class Identities:
    """`identify`, memoised for returning visitors on the two headers it reads (uid header, Cookie): a visitor
    sends the same cookies page after page. A new visitor is never memoised: each gets a uid of its own. Sized for
    tens of thousands of visitors in rotation; a Cookie header longer than `MEMO_COOKIE_CHARS` is parsed each time,
    which bounds the memory (about 50 MB at worst, a few MB for typical cookies)."""

    __slots__ = ("_limit", "_memo")

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._memo: dict[tuple[str | None, str | None], Identity] = {}

    def of(self, headers: CIMultiDictProxy[str]) -> Identity:
        asked = (headers.get(USER_UID_HEADER), headers.get("Cookie"))
        found = self._memo.get(asked)
        if found is not None:
            return found
        identity = identify(headers)
        if not identity.is_new and (asked[1] is None or len(asked[1]) <= MEMO_COOKIE_CHARS):
            if len(self._memo) >= self._limit:
                self._memo.clear()
            self._memo[asked] = identity
        return identity


def context_from_request(
    headers: CIMultiDictProxy[str],
    *,
    page_url: str,
    now: float,
    query: str | None = None,
    client_ip: str | None,
    trust_geo_headers: bool,
    geo_lookup: GeoLookup | None,
    classifier: UserAgentClassifier,
    identity: Identity | None = None,
    live: Mapping[str, object] | None = None,
    stored: Mapping[str, object] | None = None,
) -> VisitorContext:
    identity = identity or identify(headers)
    return build_context(
        headers=headers,
        cookies=identity.cookies,
        user_uid=identity.user_uid,
        now=now,
        page_url=page_url,
        query=query,
        live=live if live is not None else _live_attributes(headers.get(LIVE_ATTRIBUTES_HEADER)),
        stored=stored or {},
        ip=client_ip,
        trust_geo_headers=trust_geo_headers,
        geo_lookup=geo_lookup,
        classifier=classifier,
    )


class SetCookies(NamedTuple):
    """The visitor's Set-Cookie values (contract §6) and the response header lines they make."""

    values: tuple[str, ...]
    lines: str  # "Set-Cookie: …\r\n" per value

    @classmethod
    def of(cls, values: tuple[str, ...]) -> SetCookies:
        return cls(values, "".join([f"Set-Cookie: {value}\r\n" for value in values]))


NO_COOKIES = SetCookies((), "")  # responses to requests that are not personalized


class VisitorCookies:
    """`cookie_headers` per decided manifest of one snapshot, memoised by the manifest object: the snapshot's
    decider hands a returning visitor the same manifest object again (engine/memo.py), and its cookies are the
    same strings again. Kept with the snapshot (snapshots.LoadedSnapshot), so it goes when the snapshot goes."""

    __slots__ = ("_decider", "_limit", "_memo")

    def __init__(self, decider: MemoDecider, limit: int = MEMO_LIMIT) -> None:  # as many as the decider's visitors
        self._decider = decider
        self._limit = limit
        # id(manifest) -> (manifest, secure, domain, cookies); holding the manifest keeps its id from being reused
        self._memo: dict[int, tuple[Manifest, bool, str, SetCookies]] = {}

    def of(self, manifest: Manifest, secure: bool, domain: str = "") -> SetCookies:
        found = self._memo.get(id(manifest))
        if found is not None and found[0] is manifest and found[1] is secure and found[2] == domain:
            return found[3]
        cookies = SetCookies.of(cookie_headers(manifest, secure, self._decider.manifest_json(manifest), domain))
        if len(self._memo) >= self._limit:
            self._memo.clear()
        self._memo[id(manifest)] = (manifest, secure, domain, cookies)
        return cookies


def cookie_headers(
    manifest: Manifest, secure: bool, manifest_json: str | None = None, domain: str = ""
) -> tuple[str, str]:
    """contract §6, built by hand: the SDK reads the raw text between `=` and `;`, so nothing is quoted. `domain`:
    the `cookie_domain` setting when the visitor's host is within it (SPEC §11)."""
    flags = "; Secure; SameSite=Lax" if secure else "; SameSite=Lax"
    if domain:
        flags = f"; Domain={domain}{flags}"
    # Raw, as the SDK writes and reads it: any encoding here would come back as a different uid.
    # Control characters cannot be sent in a header at all; they are dropped.
    uid = manifest.user_uid
    if not uid.isprintable():
        uid = "".join(ch for ch in uid if ch >= " " and ch != "\x7f")
    return (
        f"{USER_UID_COOKIE}={uid}; Max-Age={UID_COOKIE_MAX_AGE}; Path=/{flags}",
        f"{MANIFEST_COOKIE}={manifest_json or manifest.cookie_json()}; Path=/{flags}",
    )


class Tombstones:
    """The users deleted by a data subject request (SPEC §11), by `tombstone_of(uid)` (never the uid): a browser
    that still sends a deleted uid starts a new identity. Filled from the state store (`deletions_after`, polled by
    runtime/users.py, so every instance and worker sharing the store learns of a deletion) and at once by the
    instance that deleted. Bounded: the most recent TOMBSTONES_KEPT."""

    __slots__ = ("cursor", "seen")

    def __init__(self) -> None:
        self.seen: dict[str, None] = {}  # tombstone -> None, oldest first (read it, don't write it)
        self.cursor = 0  # the store's position after the last tombstone read

    def __bool__(self) -> bool:
        return bool(self.seen)

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, tombstones: Iterable[str]) -> None:
        for tombstone in tombstones:
            self.seen[tombstone] = None
        while len(self.seen) > TOMBSTONES_KEPT:
            del self.seen[next(iter(self.seen))]

    def deleted(self, user_uid: str) -> bool:
        return tombstone_of(user_uid) in self.seen

    def renewed(self, identity: Identity) -> Identity:
        """`identity`, or a new one when its uid was deleted."""
        if identity.is_new or not self.deleted(identity.user_uid):
            return identity
        return Identity(identity.cookies, new_user_uid(), True)
