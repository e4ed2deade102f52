"""Traffic readers: HAR files, edgeproxy decision logs and request-description JSON lines, streamed.

Every reader yields `TrafficRecord`s one at a time with flat memory: JSON lines are read line by line, and a HAR
is parsed incrementally with ijson (`log.entries[]` one entry at a time), so a 5 GB HAR never sits in memory.
The format is detected per file from its first bytes (or forced with `--format`); `.gz` files are decompressed
on the fly and `-` is standard input.

What a record carries is a request description (docs/contract.md §9) plus, when the traffic recorded one, the
decision that was served (`Recorded`): the decision log's `decision`, or the `cs-personalize-manifest` cookie
edgeproxy set on a HAR response. A HAR has no client IP (`serverIPAddress` is the server's); an `X-Forwarded-For`
request header, when recorded, is the client.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from edgeproxy.engine.context import MANIFEST_COOKIE, USER_UID_COOKIE, USER_UID_HEADER, parse_cookie_header

Format = Literal["har", "log", "jsonl"]
FORMATS: tuple[Format, ...] = ("har", "log", "jsonl")

# The proxy never personalizes these (edgeproxy.runtime.config.DEFAULT_STATIC_EXTENSIONS, kept in step by a test);
# duplicated rather than imported so that replay does not depend on the proxy package.
STATIC_EXTENSIONS = frozenset(
    (
        ".css", ".js", ".mjs", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico", ".bmp",
        ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp4", ".webm", ".mp3", ".ogg", ".wav", ".pdf", ".zip", ".gz",
        ".wasm",
    )
)  # fmt: skip
# edgeproxy's own endpoints (ops and the emulated Edge API) are not pages.
RESERVED_PREFIXES = ("/_edgeproxy/", "/_personalize/")
# Sec-Fetch-Dest values / Chrome `_resourceType`s of a page load.
DOCUMENT_DESTINATIONS = frozenset({"document", "iframe", "frame"})
# Responses that are assets whatever their URL says (a HAR records the response's content type).
ASSET_MIME_PREFIXES = ("image/", "font/", "audio/", "video/")
ASSET_MIME_TYPES = frozenset(
    {"text/css", "text/javascript", "application/javascript", "application/x-javascript", "application/wasm",
     "application/font-woff", "application/font-woff2", "application/vnd.ms-fontobject"}
)  # fmt: skip
MAX_INVALID_KEPT = 20


class TrafficError(ValueError):
    """A traffic file cannot be read at all (missing, not JSON, not a HAR): names the file and what to do."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """The decision the traffic says was served. Fields absent from the source are None."""

    user_uid: str | None
    experiences: tuple[tuple[str, str | None], ...] | None  # (shortUid, variant) in manifest order
    variant_param: str | None = None
    aliases: tuple[str, ...] | None = None
    snapshot: str | None = None
    where: str = ""  # "decision log" | "manifest cookie"


@dataclass(slots=True)
class TrafficRecord:
    source: str
    position: int  # JSON line number, or HAR entry number (1-based)
    description: dict[str, Any]
    recorded: Recorded | None = None
    # Decision-log records carry the geo as decided: do not look the IP up again.
    geo_lookup_allowed: bool = True
    # A decision-log record: decided by a proxy for a visitor it identified (one without consent is never logged),
    # its description keeping only the cookies decisions read, so consent mode is not asked again of it.
    logged: bool = False


@dataclass
class Invalid:
    source: str
    position: int
    message: str


@dataclass
class SourceStats:
    """What one traffic file held: records replayed, entries skipped (by reason), lines that were invalid."""

    source: str
    format: str = ""
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    invalid: int = 0
    invalid_samples: list[Invalid] = field(default_factory=list)
    size_bytes: int | None = None

    def reject(self, position: int, message: str) -> None:
        self.invalid += 1
        if len(self.invalid_samples) < MAX_INVALID_KEPT:
            self.invalid_samples.append(Invalid(self.source, position, message))


@dataclass(frozen=True, slots=True)
class HarFilter:
    """Which HAR entries are replayed: by default the page loads edgeproxy personalizes (see `page_skip_reason`).

    `routes` (an `edgeproxy.exchange.routes.RouteTable` from the proxy's config file, `--config`) applies the proxy's
    own routing: paths it does not personalize are skipped, and a route's experience tags go into the request."""

    all_requests: bool = False
    routes: Any = None


# -- opening and detection ---------------------------------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """A binary stream that counts the bytes read through it (the progress bar reads `consumed`)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.consumed += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: str) -> tuple[CountingReader | gzip.GzipFile, CountingReader, int | None]:
    """(stream to read, counter of bytes read from disk, size on disk when known); .gz is decompressed."""
    if path == "-":
        counting = CountingReader(sys.stdin.buffer)
        return counting, counting, None
    target = Path(path)
    try:
        size = target.stat().st_size
        raw: IO[bytes] = target.open("rb")
    except OSError as exc:
        raise TrafficError(f"{path}: cannot open traffic file: {exc.strerror or exc}") from None
    counting = CountingReader(raw)
    if path.endswith(".gz"):
        # Progress counts compressed bytes read, so it still runs against the size on disk.
        return gzip.GzipFile(fileobj=io.BufferedReader(counting)), counting, size
    return counting, counting, size


def detect_format(path: str, head: bytes) -> Format:
    """HAR when the file is one JSON document with a `log` object; JSON lines otherwise (log vs plain descriptions
    is decided per line, so a file may mix both)."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.lower().endswith(".har"):
        return "har"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"{"):
        return "jsonl"
    first_line = text.split(b"\n", 1)[0]
    try:
        first = json.loads(first_line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        first = None
    if isinstance(first, dict):
        return "har" if set(first) == {"log"} else "jsonl"
    return "har" if b'"log"' in text[:4096] else "jsonl"


# -- JSON lines: descriptions and decision-log records -------------------------------------------------------------


def _recorded_from_decision(decision: Any, snapshot: Any) -> Recorded | None:
    if not isinstance(decision, dict):
        return None
    experiences = decision.get("experiences")
    order: tuple[tuple[str, str | None], ...] | None = None
    if isinstance(experiences, list):
        order = tuple(
            (str(item.get("shortUid")), item.get("activeVariantShortUid"))
            for item in experiences
            if isinstance(item, dict)
        )
    elif isinstance(decision.get("activeVariants"), dict):
        order = tuple(decision["activeVariants"].items())
    aliases = decision.get("aliases")
    return Recorded(
        user_uid=decision.get("userUid") if isinstance(decision.get("userUid"), str) else None,
        experiences=order,
        variant_param=decision.get("variantParam") if isinstance(decision.get("variantParam"), str) else None,
        aliases=tuple(aliases) if isinstance(aliases, list) else None,
        snapshot=snapshot if isinstance(snapshot, str) else None,
        where="decision log",
    )


def _uid_pinned(request: dict[str, Any]) -> dict[str, Any]:
    """A decision-log line written before the log named the uid's source always carries the decided uid as
    `userUid`, but not the `X-CS-Personalize-User-Uid` header that may have decided it: a uid cookie in the line
    would then win when replayed. Pin the decided uid with that header."""
    uid = request.get("userUid")
    headers = request.get("headers")
    if not isinstance(uid, str) or not uid or (headers is not None and not isinstance(headers, dict)):
        return request
    headers = headers or {}
    if any(name.lower() == USER_UID_HEADER for name in headers):
        return request
    return {**request, "headers": {**headers, USER_UID_HEADER: uid}}


def read_json_lines(
    stream: io.BufferedIOBase, source: str, stats: SourceStats, *, force: Format | None = None
) -> Iterator[TrafficRecord]:
    """Request descriptions, one JSON object per line; a line `{"request", "decision", ...}` is a decision-log
    record (its request is replayed, its decision kept for --from-log)."""
    loads = json.loads
    fast_loads = msgspec.json.Decoder().decode
    stats.format = "log" if force == "log" else "jsonl"
    kinds: set[str] = set()
    number = 0
    for raw in stream:
        number += 1
        # msgspec reads valid JSON to the objects json makes, faster; what it refuses (invalid JSON, but also NaN,
        # numbers beyond a float's range, lone surrogates, which json accepts) is read by json, whose messages the
        # report shows.
        try:
            obj = fast_loads(raw)
        except msgspec.DecodeError:
            if not raw.strip():
                continue
            try:
                obj = loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                stats.reject(number, f"not valid JSON: {msg}")
                continue
        if obj.__class__ is not dict:
            stats.reject(number, "expected a JSON object (a request description or a decision-log record)")
            continue
        request = obj.get("request")
        if request is not None and "decision" in obj:
            if request.__class__ is not dict:
                stats.reject(number, "decision-log record: `request` must be a request description object")
                continue
            kinds.add("log")
            stats.records += 1
            recorded = _recorded_from_decision(obj.get("decision"), obj.get("snapshot"))
            if "now" not in request and isinstance(obj.get("ts"), str):
                request = {**request, "now": obj["ts"]}  # the decision's own time, not today's clock
            if "userUid" not in request and recorded is not None and recorded.user_uid:
                request = {**request, "userUid": recorded.user_uid}  # who was decided (a minted uid)
            elif "userUidSource" not in obj:
                request = _uid_pinned(request)
            yield TrafficRecord(source, number, request, recorded, "geo" not in request, logged=True)
        elif force == "log":
            stats.reject(number, 'not a decision-log record: expected {"ts", "request", "decision", "snapshot"}')
        else:
            kinds.add("jsonl")
            stats.records += 1
            yield TrafficRecord(source, number, obj)
    if kinds:
        stats.format = "+".join(sorted(kinds))


# -- HAR ------------------------------------------------------------------------------------------------------------


def _header_dict(items: Any) -> dict[str, str]:
    """HAR `headers` [{name, value}] -> one value per name; repeats joined (cookies with `; `)."""
    headers: dict[str, str] = {}
    lowered: dict[str, str] = {}
    if not isinstance(items, list):
        return headers
    for item in items:
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        value = item.get("value")
        if not isinstance(name, str) or not isinstance(value, str) or name.startswith(":"):
            continue  # HTTP/2 pseudo-headers (:authority, :path) are not headers
        key = name.lower()
        if key in lowered:
            existing = lowered[key]
            joiner = "; " if key == "cookie" else ", "
            headers[existing] = headers[existing] + joiner + value
        else:
            lowered[key] = name
            headers[name] = value
    return headers


def _get(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _set_cookies(response: Any) -> dict[str, str]:
    """Cookies a HAR response set: name -> raw value (the text between the first `=` and `;`, docs/contract.md §6)."""
    found: dict[str, str] = {}
    if not isinstance(response, dict):
        return found
    for item in response.get("headers") or ():
        if isinstance(item, dict) and str(item.get("name", "")).lower() == "set-cookie":
            for line in str(item.get("value", "")).split("\n"):  # some tools fold several into one value
                first = line.split(";", 1)[0]
                name, sep, value = first.partition("=")
                if sep and name.strip():
                    found.setdefault(name.strip(), value)
    for item in response.get("cookies") or ():
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("value"), str):
            found.setdefault(item["name"], item["value"])
    return found


def _recorded_from_cookies(cookies: dict[str, str]) -> Recorded | None:
    raw = cookies.get(MANIFEST_COOKIE)
    uid = cookies.get(USER_UID_COOKIE)
    if uid is not None:
        uid = unquote(uid) if "%" in uid else uid
    if raw is None:
        return None
    try:
        manifest = json.loads(unquote(raw) if raw.startswith("%7B") else raw)
    except json.JSONDecodeError:
        return None
    recorded = _recorded_from_decision(manifest, None)
    if recorded is None:
        return None
    return Recorded(user_uid=uid, experiences=recorded.experiences, where="manifest cookie")


def _response_mime(entry: dict[str, Any]) -> str:
    response = entry.get("response")
    content = response.get("content") if isinstance(response, dict) else None
    mime = content.get("mimeType") if isinstance(content, dict) else None
    return mime.split(";", 1)[0].strip().lower() if isinstance(mime, str) else ""


def page_skip_reason(entry: dict[str, Any], method: str, url: str, headers: dict[str, str]) -> str | None:
    """Why a HAR entry is not a page load edgeproxy would personalize, or None. The README lists these."""
    path = urlsplit(url).path
    if method != "GET":
        return "not GET"
    if path.startswith(RESERVED_PREFIXES):
        return "edgeproxy endpoint"
    last = path.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    if dot > 0 and last[dot:].lower() in STATIC_EXTENSIONS:
        return "static asset"
    mime = _response_mime(entry)
    if mime.startswith(ASSET_MIME_PREFIXES) or mime in ASSET_MIME_TYPES:
        return "static asset"
    resource_type = entry.get("_resourceType")
    if isinstance(resource_type, str) and resource_type and resource_type.lower() not in DOCUMENT_DESTINATIONS:
        return "not a document"
    destination = _get(headers, "sec-fetch-dest")
    if destination is not None and destination.lower() not in DOCUMENT_DESTINATIONS:
        return "not a document"
    return None


def har_entry_record(
    entry: Any, source: str, position: int, stats: SourceStats, har_filter: HarFilter
) -> TrafficRecord | None:
    """One HAR entry -> a record, or None (skipped or invalid, counted in `stats`)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        stats.reject(position, "HAR entry without a `request` object")
        return None
    request = entry["request"]
    url = request.get("url")
    method = request.get("method")
    if not isinstance(url, str) or not isinstance(method, str):
        stats.reject(position, "HAR request needs `url` and `method` strings")
        return None
    headers = _header_dict(request.get("headers"))
    response = entry.get("response")
    if not url.startswith(("http://", "https://")):
        stats.skipped["not http(s)"] += 1  # data:, blob:, chrome-extension: never reach a server
        return None
    if not har_filter.all_requests:
        reason = page_skip_reason(entry, method.upper(), url, headers)
        if reason is None and isinstance(response, dict) and response.get("status") in (0, None):
            reason = "no response"  # blocked or failed before it reached a server
        if reason is not None:
            stats.skipped[reason] += 1
            return None
    if _get(headers, "cookie") is None:
        cookies = request.get("cookies")
        if isinstance(cookies, list) and cookies:
            pairs = [
                f"{c['name']}={c['value']}" for c in cookies if isinstance(c, dict) and "name" in c and "value" in c
            ]
            if pairs:
                headers["Cookie"] = "; ".join(pairs)
    description: dict[str, Any] = {"url": url, "method": method.upper(), "headers": headers}
    if har_filter.routes is not None:
        route = har_filter.routes.decide(unquote(urlsplit(url).path))
        if not route.personalize and not har_filter.all_requests:
            stats.skipped["not personalized (routes)"] += 1
            return None
        if route.tags is not None:
            description["tags"] = list(route.tags)
    started = entry.get("startedDateTime")
    if isinstance(started, str):
        description["now"] = started
    recorded = _recorded_from_cookies(_set_cookies(response))
    # A first visit has no uid: edgeproxy minted one and set it on the response, so that is who was decided.
    cookie_header = _get(headers, "cookie")
    has_uid = _get(headers, USER_UID_HEADER) is not None or (
        cookie_header is not None and USER_UID_COOKIE in parse_cookie_header(cookie_header)
    )
    if not has_uid and recorded is not None and recorded.user_uid:
        description["userUid"] = recorded.user_uid
    elif not has_uid and isinstance(response, dict):
        minted = _set_cookies(response).get(USER_UID_COOKIE)
        if minted:
            description["userUid"] = unquote(minted)
    return TrafficRecord(source, position, description, recorded)


def read_har(
    stream: io.BufferedIOBase, source: str, stats: SourceStats, har_filter: HarFilter
) -> Iterator[TrafficRecord]:
    """`log.entries[]` of a HAR, one entry at a time (ijson's C backend when available)."""
    import ijson

    stats.format = "har"
    position = 0
    try:
        for entry in ijson.items(stream, "log.entries.item", use_float=True):
            position += 1
            record = har_entry_record(entry, source, position, stats, har_filter)
            if record is not None:
                stats.records += 1
                yield record
    except ijson.JSONError as exc:
        raise TrafficError(
            f"{source}: not a valid HAR (JSON error after entry {position}: {exc}); "
            "export it again or pass --format jsonl if it is JSON lines"
        ) from None
    if position == 0:
        stats.reject(0, "no log.entries[] found: is this a HAR file?")


def _peek(stream: io.BufferedIOBase) -> bytes:
    peek = getattr(stream, "peek", None)
    data: bytes = peek(65536)[:65536] if peek is not None else b""
    return data


# -- all files ------------------------------------------------------------------------------------------------------


@dataclass
class OpenSource:
    path: str
    stream: CountingReader
    stats: SourceStats


def read_traffic(
    paths: list[str],
    *,
    force: Format | None,
    har_filter: HarFilter,
    on_open: Callable[[OpenSource], None] | None = None,
) -> Iterator[TrafficRecord]:
    """Records of every file in order. `on_open` sees each file as it starts (stats, progress)."""
    for path in paths:
        stream, counter, size = open_binary(path)
        stats = SourceStats(source=path, size_bytes=size)
        if on_open is not None:
            on_open(OpenSource(path, counter, stats))
        buffered: io.BufferedIOBase = (
            stream if isinstance(stream, gzip.GzipFile) else io.BufferedReader(stream, buffer_size=1 << 20)
        )
        try:
            kind = force or detect_format(path, _peek(buffered))
            if kind == "har":
                yield from read_har(buffered, path, stats, har_filter)
            else:
                yield from read_json_lines(buffered, path, stats, force=force)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TrafficError(f"{path}: cannot read traffic: {exc}") from None
        finally:
            buffered.close()
