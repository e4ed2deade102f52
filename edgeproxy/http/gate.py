"""The request gate: the one place where a request is accepted as HTTP the proxy will relay, or refused.

Every request passes `check` before anything else looks at it: the general path and the hit lane, the Edge API
and the ops endpoints. It is a pure function of what a parser hands over — the method, the raw request-target,
the HTTP version and the raw header lines — with no aiohttp types and no I/O, so the same gate serves any
HTTP/1.x front end (aiohttp's parser today, an own httptools protocol later). It returns None ("ok") or a
`Refusal(status, code, message)`; the message never repeats what the client sent.

What it refuses and why (README, "What the gate refuses"):
- framing that two parsers could read differently (request smuggling, RFC 9112 §6.1-§6.3): Content-Length
  together with Transfer-Encoding, repeated or non-decimal Content-Length (signs, spaces, hex, lists, over 18
  digits), any Transfer-Encoding but a single `chunked` (TE.TE obfuscations, `chunked` not last), and
  Transfer-Encoding on HTTP/1.0;
- header syntax (RFC 9110 §5, RFC 9112 §5): names that are not tokens (spaces, colons, empty), values with
  NUL, CR, LF or other control characters (bare LF, obs-fold remnants);
- sizes: more than `max_headers` header lines or `max_header_bytes` of them (431), a target over
  `max_target` (414);
- request-targets (RFC 9112 §3.2): anything but origin-form (`/path?q`), absolute-form with an http(s)
  scheme (forwarded in origin-form, see `origin_form`) and `OPTIONS *`; fragments, control characters,
  spaces and non-ASCII bytes;
- methods: `CONNECT` (a reverse proxy opens no tunnels) and `TRACE`/`TRACK` (they reflect the request,
  cookies included, back to the client) get a 405; versions other than HTTP/1.0 and 1.1 a 400;
- Host (RFC 9112 §3.2): missing on HTTP/1.1, repeated, or not `host[:port]` — it feeds the cache key,
  X-Forwarded-Host and the page URL;
- request Content-Encoding (RFC 9110 §8.4) other than a list of known codings: 415. Bodies are relayed as the
  exact bytes the client framed, never decoded on the proxied path;
- a repeated `X-CS-Personalize-User-Uid` header: ambiguous, so refused. A single invalid uid is not refused
  here: pages treat it as absent and mint a new uid (`valid_user_uid`, contract §11).
An `Upgrade: h2c` attempt is not refused: RFC 9110 §7.8 lets a server ignore Upgrade, and the proxy strips it
(and HTTP2-Settings) before the origin, so the request is served as HTTP/1.1.
"""

from __future__ import annotations

import hmac
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

from edgeproxy.engine.context import valid_user_uid

__all__ = ["Limits", "Refusal", "check", "origin_form", "valid_user_uid"]


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # always 4xx
    code: str  # machine-readable, for the JSON body and the log line
    message: str  # for people; never contains client input


@dataclass(frozen=True, slots=True)
class Limits:
    max_target: int = 16_384  # bytes of the request-target -> 414
    max_headers: int = 100  # header lines -> 431
    max_header_bytes: int = 65_536  # names and values together -> 431


DEFAULT_LIMITS = Limits()

# RFC 9110 §5.6.2 token characters, and what a field value may hold (VCHAR, obs-text, SP, HTAB).
# An origin-form target: printable ASCII without space or '#'.
_BAD_TARGET = re.compile(r"[^\x21-\x22\x24-\x7e]").search
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?").fullmatch
_DIGITS = re.compile(rb"[0-9]{1,18}").fullmatch
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch

_ORDINARY_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
_KNOWN_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress", "identity"})

_HOST_H, _CL, _TE, _CE, _UID = 1, 2, 3, 4, 5
_SPECIAL = {b"host": _HOST_H, b"content-length": _CL, b"transfer-encoding": _TE, b"content-encoding": _CE,
            b"x-cs-personalize-user-uid": _UID}  # fmt: skip

_BAD_NAME, _LONG_NAME = -1, -2
_MAX_NAME = 256
_TOKEN_OCTETS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Not allowed in a field value: controls but HTAB, and DEL (values are HTAB, SP, VCHAR, obs-text).
_BAD_VALUE_OCTETS = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
# Header names seen before -> their kind: valid tokens by construction, so a known name costs one lookup.
# A memo, not state: the answer for a name never changes.
_NAMES: dict[bytes, int] = {}
_NAMES_LIMIT = 4096
_HOSTS: set[bytes] = set()  # Host values seen valid before (bounded like _NAMES)
_value_of = operator.itemgetter(1)

BAD_FRAMING = "bad_framing"
BAD_HEADER = "bad_header"


def _refuse(status: int, code: str, message: str) -> Refusal:
    return Refusal(status, code, message)


# Refusals are constants: nothing of the request goes into them, and nothing is allocated to refuse.
R_VERSION = _refuse(400, "unsupported_version", "Only HTTP/1.0 and HTTP/1.1 are served here.")
R_METHOD = _refuse(400, "bad_method", "The request method is not a valid token.")
R_NOT_ALLOWED = _refuse(405, "method_not_allowed", "This method is not served by this proxy.")
R_TARGET = _refuse(400, "bad_target", "The request target is not a valid origin-form or absolute URL.")
R_TARGET_LONG = _refuse(414, "uri_too_long", "The request target is too long.")
R_HEADER_NAME = _refuse(400, BAD_HEADER, "A header name is not a valid token.")
R_HEADER_VALUE = _refuse(400, BAD_HEADER, "A header value contains a control character.")
R_TOO_MANY = _refuse(431, "headers_too_large", "The request has too many header fields.")
R_TOO_LARGE = _refuse(431, "headers_too_large", "The request header fields are too large.")
R_HOST = _refuse(400, "bad_host", "The request needs exactly one valid Host header.")
R_CL = _refuse(400, BAD_FRAMING, "Content-Length must be one decimal number.")
R_CL_TE = _refuse(400, BAD_FRAMING, "Content-Length and Transfer-Encoding must not be sent together.")
R_TE = _refuse(400, BAD_FRAMING, "The only Transfer-Encoding accepted on a request is a single `chunked`.")
R_TE_10 = _refuse(400, BAD_FRAMING, "Transfer-Encoding is not allowed on an HTTP/1.0 request.")
R_CE = _refuse(415, "unsupported_content_encoding", "The request body's Content-Encoding is not supported.")
R_UID = _refuse(400, "ambiguous_user_uid", "X-CS-Personalize-User-Uid must not be repeated.")


def check(
    method: str,
    target: str,
    version: tuple[int, int],
    headers: Sequence[tuple[bytes, bytes]],
    limits: Limits = DEFAULT_LIMITS,
    values_checked: bool = False,
) -> Refusal | None:
    """None when the request may go on; otherwise why not. `headers` are the raw (name, value) lines in order,
    as the parser split them (values without surrounding whitespace). `values_checked`: the parser in front
    already refuses control characters in header values (llhttp in strict mode does: aiohttp's C request parser
    and httptools), which spares a pass over every byte of every request; everything else is checked here."""
    if method not in _ORDINARY_METHODS:
        if method in _REFUSED_METHODS:
            return R_NOT_ALLOWED
        if not _METHOD(method):
            return R_METHOD
    if version != (1, 1) and version != (1, 0):
        return R_VERSION
    if len(target) > limits.max_target:
        return R_TARGET_LONG
    if (
        (target[:1] != "/" or not (target.isascii() and target.isprintable()) or " " in target or "#" in target)
        and not (target == "*" and method == "OPTIONS")
        and not _absolute_ok(target)
    ):
        return R_TARGET
    if len(headers) > limits.max_headers:
        return R_TOO_MANY
    special = None
    names = _NAMES
    for name, value in headers:
        kind = names.get(name)
        if kind is None:
            kind = _learn(name)
            if kind < 0:
                return R_TOO_LARGE if kind == _LONG_NAME else R_HEADER_NAME
        if kind:
            if special is None:
                special = [(kind, value)]
            else:
                special.append((kind, value))
    # Values all at once: one join and one pass in C over what every request carries.
    if values_checked:
        if sum(map(len, map(_value_of, headers))) > limits.max_header_bytes:
            return R_TOO_LARGE
    else:
        values = b"".join(map(_value_of, headers))
        if len(values) > limits.max_header_bytes:
            return R_TOO_LARGE
        if len(values.translate(None, _BAD_VALUE_OCTETS)) != len(values):
            return R_HEADER_VALUE
    return _check_special(special, version)


def _learn(name: bytes) -> int:
    """Classify a header name not seen before: its special kind (0 for none), or a negative refusal."""
    if not name or name.translate(None, _TOKEN_OCTETS):
        return _BAD_NAME
    if len(name) > _MAX_NAME:
        return _LONG_NAME
    kind = _SPECIAL.get(name.lower(), 0)
    if len(_NAMES) >= _NAMES_LIMIT:  # bounded: a flood of made-up names cannot grow it
        _NAMES.clear()
    _NAMES[name] = kind
    return kind


def _check_special(special: list[tuple[int, bytes]] | None, version: tuple[int, int]) -> Refusal | None:
    hosts = cls = tes = uids = 0
    te = b""
    if special is not None:
        for kind, value in special:
            if kind == _HOST_H:
                hosts += 1
                if hosts > 1:
                    return R_HOST
                if value not in _HOSTS:
                    if not value.isascii() or not _HOST(value.decode("ascii")):
                        return R_HOST
                    if len(_HOSTS) >= _NAMES_LIMIT:
                        _HOSTS.clear()
                    _HOSTS.add(value)
            elif kind == _CL:
                cls += 1
                if cls > 1 or not _DIGITS(value):
                    return R_CL
            elif kind == _TE:
                tes += 1
                te = value
            elif kind == _CE:
                if not _codings_ok(value):
                    return R_CE
            elif kind == _UID:
                uids += 1
                if uids > 1:
                    return R_UID
    if hosts == 0 and version == (1, 1):
        return R_HOST
    if tes:
        if version != (1, 1):
            return R_TE_10
        if cls:
            return R_CL_TE
        if tes > 1 or te.strip().lower() != b"chunked":
            return R_TE
    return None


def _codings_ok(value: bytes) -> bool:
    if not value.isascii():
        return False
    for coding in value.decode("ascii").split(","):
        if coding.strip().lower() not in _KNOWN_CODINGS:
            return False
    return True


def _absolute_ok(target: str) -> bool:
    """An absolute-form target (RFC 9112 §3.2.2) with an http(s) scheme, an authority and a clean rest."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or _BAD_TARGET(rest) is not None:
        return False
    authority = rest.partition("/")[0]
    authority, _, _ = authority.partition("?")
    return bool(authority) and "@" not in authority and _HOST(authority) is not None


def origin_form(target: str) -> tuple[str, str]:
    """(origin-form target, authority) of an absolute-form target the gate accepted: `http://h:1/p?q` ->
    (`/p?q`, `h:1`). A proxy forwards origin-form (RFC 9112 §3.2.2) and takes the host from the target."""
    rest = target.partition("://")[2]
    cut = len(rest)
    for stop in "/?":
        at = rest.find(stop)
        if 0 <= at < cut:
            cut = at
    authority, path = rest[:cut], rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    return path, authority


def same_token(given: str, token: str) -> bool:
    """Whether a client-sent token (a header or query value) is `token`, in constant time. Header values hold
    obs-text bytes as surrogate escapes, which plain `.encode()` refuses: they are compared as the bytes sent."""
    return bool(token) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


def normalized_path(path: str) -> str:
    """Resolve `.`/`..` segments and empty segments, as an origin would before routing."""
    if "/." not in path and "//" not in path:
        return path
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    return "/" + "/".join(parts) + ("/" if path.endswith("/") and parts else "")


class ReservedPrefixes:
    """Path prefixes the proxy answers itself (ops, the Edge API), never forwarded. Matched on the decoded,
    dot-segment-resolved and raw path, case-insensitively, so an encoded or re-cased spelling cannot slip a
    proxy-internal path through to the origin; the prefix without its trailing slash is reserved too."""

    __slots__ = ("_first", "_prefixes")

    def __init__(self, prefixes: Sequence[str]) -> None:
        self._prefixes = tuple((prefix.lower(), prefix.lower().rstrip("/")) for prefix in prefixes)
        self._first = frozenset(prefix[1:2].lower() for prefix in prefixes)  # what a reserved path's 2nd char can be

    def match(self, path: str, raw_path: str) -> int | None:
        """The index of the prefix the request's decoded `path` or `raw_path` falls under; None: not reserved."""
        first = self._first
        if (
            path[1:2].lower() not in first and raw_path[1:2].lower() not in first
            and "/." not in path and "//" not in path
        ):  # fmt: skip
            return None  # the usual answer, at a glance: the first segment cannot start a reserved prefix
        path = normalized_path(path).lower()
        raw = raw_path.lower()
        for n, (prefix, bare) in enumerate(self._prefixes):
            if path.startswith(prefix) or raw.startswith(prefix) or path.rstrip("/") == bare:
                return n
        return None
