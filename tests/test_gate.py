"""The request gate (edgeproxy/http/gate.py), a pure function: table-driven cases, the uid rule (SPEC §11),
bounded client JSON, forwarded-header trust, and a hypothesis fuzz over raw request bytes (parsed by llhttp
through httptools, as a front end would, and by a naive splitter, so the gate also sees what no parser passes)."""

from __future__ import annotations

import contextlib

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.engine.context import ClientJsonError, load_client_json, valid_user_uid
from edgeproxy.http.gate import Refusal, check, origin_form
from edgeproxy.visitor.forwarded import TrustedProxies

H = (b"Host", b"shop.test")


CASES: list[tuple[str, dict[str, object], int]] = [
    ("plain GET", {}, 0),
    ("POST with a length", {"headers": [(b"Content-Length", b"3")], "method": "POST"}, 0),
    ("chunked POST", {"headers": [(b"Transfer-Encoding", b"chunked")], "method": "POST"}, 0),
    ("chunked, any case", {"headers": [(b"transfer-encoding", b"CHUNKED")], "method": "POST"}, 0),
    ("CL and TE", {"headers": [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")]}, 400),
    ("TE and CL", {"headers": [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")]}, 400),
    ("two CL", {"headers": [(b"Content-Length", b"3"), (b"content-length", b"3")]}, 400),
    ("CL sign", {"headers": [(b"Content-Length", b"+3")]}, 400),
    ("CL hex", {"headers": [(b"Content-Length", b"0x3")]}, 400),
    ("CL list", {"headers": [(b"Content-Length", b"3,3")]}, 400),
    ("CL space", {"headers": [(b"Content-Length", b"3 3")]}, 400),
    ("CL 19 digits", {"headers": [(b"Content-Length", b"1" * 19)]}, 400),
    ("CL empty", {"headers": [(b"Content-Length", b"")]}, 400),
    ("TE xchunked", {"headers": [(b"Transfer-Encoding", b"xchunked")]}, 400),
    ("TE chunked twice", {"headers": [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")]}, 400),
    ("TE list", {"headers": [(b"Transfer-Encoding", b"gzip, chunked")]}, 400),
    ("TE vertical tab", {"headers": [(b"Transfer-Encoding", b"\x0bchunked")]}, 400),
    ("TE on 1.0", {"headers": [(b"Transfer-Encoding", b"chunked")], "version": (1, 0)}, 400),
    ("NUL in value", {"headers": [(b"X-A", b"a\x00b")]}, 400),
    ("LF in value", {"headers": [(b"X-A", b"a\nb")]}, 400),
    ("CR in value", {"headers": [(b"X-A", b"a\rb")]}, 400),
    ("DEL in value", {"headers": [(b"X-A", b"a\x7fb")]}, 400),
    ("tab and obs-text in value", {"headers": [(b"X-A", b"a\tb\xff")]}, 0),
    ("space in name", {"headers": [(b"X A", b"1")]}, 400),
    ("colon in name", {"headers": [(b"X:A", b"1")]}, 400),
    ("empty name", {"headers": [(b"", b"1")]}, 400),
    ("obs-fold remnant name", {"headers": [(b" X-A", b"1")]}, 400),
    ("no Host on 1.1", {"headers": [(b"-", b"-")]}, 400),
    ("no Host on 1.0", {"headers": [(b"-", b"-")], "version": (1, 0)}, 0),
    ("two Host", {"headers": [(b"Host", b"evil.example")]}, 400),
    ("Host with path", {"headers": [(b"-", b"-")]}, 400),
    ("uid twice", {"headers": [(b"X-CS-Personalize-User-Uid", b"a"), (b"x-cs-personalize-user-uid", b"b")]}, 400),
    ("gzip body", {"headers": [(b"Content-Encoding", b"gzip")], "method": "POST"}, 0),
    ("unknown coding", {"headers": [(b"Content-Encoding", b"evil")], "method": "POST"}, 415),
    ("h2c upgrade is served", {"headers": [(b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMA")]}, 0),
    ("CONNECT", {"method": "CONNECT", "target": "evil.example:443"}, 405),
    ("TRACE", {"method": "TRACE"}, 405),
    ("method not a token", {"method": "G(T"}, 400),
    ("HTTP/2.0", {"version": (2, 0)}, 400),
    ("HTTP/0.9", {"version": (0, 9)}, 400),
    ("absolute-form", {"target": "http://evil.example/page?q=1"}, 0),
    ("absolute-form https, port", {"target": "HTTPS://evil.example:8443"}, 0),
    ("absolute-form ftp", {"target": "ftp://evil.example/"}, 400),
    ("absolute-form userinfo", {"target": "http://u@evil.example/"}, 400),
    ("absolute-form without host", {"target": "http:///page"}, 400),
    ("OPTIONS *", {"method": "OPTIONS", "target": "*"}, 0),
    ("GET *", {"target": "*"}, 400),
    ("fragment", {"target": "/a#b"}, 400),
    ("space", {"target": "/a b"}, 400),
    ("non-ASCII", {"target": "/ä"}, 400),
    ("control char", {"target": "/a\x01"}, 400),
    ("relative", {"target": "a/b"}, 400),
    ("target too long", {"target": "/" + "a" * 20_000}, 414),
    ("too many headers", {"headers": [(b"X-%d" % i, b"1") for i in range(150)]}, 431),
    ("header values too large", {"headers": [(b"X-%d" % i, b"a" * 8000) for i in range(10)]}, 431),
    ("header name too long", {"headers": [(b"X" * 300, b"1")]}, 431),
]


@pytest.mark.parametrize(("name", "args", "status"), CASES, ids=[c[0] for c in CASES])
def test_gate_table(name: str, args: dict[str, object], status: int) -> None:
    headers = list(args.get("headers", []))  # type: ignore[call-overload]
    method = str(args.get("method", "GET"))
    target = str(args.get("target", "/"))
    version = args.get("version", (1, 1))
    assert isinstance(version, tuple)
    if name == "Host with path":
        refusal = check(method, target, version, [(b"Host", b"evil.example/x")])
    elif headers == [(b"-", b"-")]:
        refusal = check(method, target, version, [])
    else:
        refusal = check(method, target, version, [H, *headers])
    assert (0 if refusal is None else refusal.status) == status, (name, refusal)


def test_refusals_never_repeat_the_input() -> None:
    marker = b"EVILMARKER"
    for headers in ([(b"X A" + marker, b"1")], [(b"X-A", marker + b"\x00")], [(b"Content-Length", marker)]):
        refusal = check("GET", "/" + marker.decode() + "#", (1, 1), [H, *headers])
        assert refusal is not None and "EVILMARKER" not in refusal.message + refusal.code


@pytest.mark.parametrize(
    ("target", "expected"),
    [("http://a.example/p?q=1", ("/p?q=1", "a.example")), ("https://a.example:8443", ("/", "a.example:8443")),
     ("http://a.example?q", ("/?q", "a.example")), ("HTTP://[::1]:80/x", ("/x", "[::1]:80"))],
)  # fmt: skip
def test_origin_form(target: str, expected: tuple[str, str]) -> None:
    assert origin_form(target) == expected


@pytest.mark.parametrize(
    ("uid", "valid"),
    [("0b7c1a2e-8f4d-4b1a-9a43-3c0f8e2d5b61", True), ("a", True), ("u" * 256, True), ("u" * 257, False), ("", False),
     ("abc; Domain=evil", False), ("a b", False), ('"a"', False), ("a,b", False), ("a\\b", False), ("é", False),
     ("a\x00", False), ("!#$%&'()*+-./:<=>?@[]^_`{|}~", True)],
)  # fmt: skip
def test_valid_user_uid_is_rfc6265_cookie_octets(uid: str, valid: bool) -> None:
    assert valid_user_uid(uid) is valid


@pytest.mark.parametrize(
    "raw", ["[" * 5000 + "]" * 5000, '{"a": ' + "9" * 5001 + "}", '{"a": 1e999999}', "NaN", '{"a": -Infinity}',
            "[" * 33 + "]" * 33, '["\\ud800"]', '{"\\udcff": 1}', "{", ""],
)  # fmt: skip
def test_client_json_fails_only_into_client_json_error(raw: str) -> None:
    with pytest.raises(ClientJsonError):
        load_client_json(raw)


def test_client_json_within_bounds_parses() -> None:
    assert load_client_json('{"a": [1, 2.5, "é", {"b": null}], "n": ' + "9" * 64 + "}")["a"][1] == 2.5
    assert load_client_json("[" * 32 + "]" * 32) is not None


def test_forwarded_headers_come_from_the_hop_that_recorded_the_client() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    # One CDN (trusted peer) in front: the rightmost of each list is what it wrote.
    assert trusted.forwarded("127.0.0.1", ["6.6.6.6, 81.2.69.160"], ["http, https"], ["evil, shop.example"]) == (
        "81.2.69.160", "https", "shop.example")  # fmt: skip
    # Two trusted proxies: the client was recorded two hops out; proto and host from that same hop.
    assert trusted.forwarded("127.0.0.1", ["81.2.69.160, 10.0.0.2"], ["https, http"], ["shop.example, inner"]) == (
        "81.2.69.160", "https", "shop.example")  # fmt: skip
    # No X-Forwarded-For: the peer recorded its own client.
    assert trusted.forwarded("127.0.0.1", [], ["https"], []) == ("127.0.0.1", "https", None)
    # A hop that did not write a proto: not believed.
    assert trusted.forwarded("127.0.0.1", ["81.2.69.160, 10.0.0.2"], ["https"], []) == ("81.2.69.160", None, None)
    assert trusted.forwarded("127.0.0.1", ["[2001:db8::1]:4711"], [], []) == ("2001:db8::1", None, None)
    for ambiguous in ((["1.1.1.1", "2.2.2.2"], [], []), (["not-an-ip"], [], []), (["999.1.1.1"], [], []),
                      (["1.1.1.1"], ["gopher"], []), (["1.1.1.1"], [], ["a/b"]), ([], ["http", "https"], []),
                      (["1.1.1.1"], [], ["a", "b"])):  # fmt: skip
        assert trusted.forwarded("127.0.0.1", *ambiguous) is None, ambiguous


# -- fuzz: raw request bytes -----------------------------------------------------------------------------------

PIECES = [b"GET", b"POST", b"CONNECT", b"TRACE", b" ", b"/", b"/a?b=c", b"http://x/", b"*", b"#", b"HTTP/1.1",
          b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"\x00", b"\t", b":", b": ", b"Host", b"Content-Length",
          b"Transfer-Encoding", b"chunked", b"Content-Encoding", b"gzip", b"X-CS-Personalize-User-Uid", b";", b",",
          b"0", b"5", b"-1", b"+1", b"0x1", b"\xff", b"\x7f", b"a", b"Upgrade", b"h2c"]  # fmt: skip
HEAD = b"GET / HTTP/1.1\r\nHost: shop.test\r\n"
raw_requests = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join),
    st.lists(st.sampled_from(PIECES), max_size=30).map(lambda parts: HEAD + b"".join(parts) + b"\r\n\r\n"),
)


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def _naive(data: bytes) -> tuple[str, str, tuple[int, int], list[tuple[bytes, bytes]]]:
    """What a careless splitter would hand over: the gate must cope with anything."""
    head = data.split(b"\r\n\r\n", 1)[0]
    first, *lines = head.split(b"\r\n")
    parts = first.split(b" ")
    method = parts[0].decode("latin-1")
    target = parts[1].decode("utf-8", "surrogateescape") if len(parts) > 1 else ""
    version = (1, 1) if parts[-1:] == [b"HTTP/1.1"] else (1, 0) if parts[-1:] == [b"HTTP/1.0"] else (0, 9)
    headers = [(name, value.strip(b" \t")) for name, _, value in (line.partition(b":") for line in lines)]
    return method, target, version, headers


def _assert_sound(refusal: Refusal | None, headers: list[tuple[bytes, bytes]], version: tuple[int, int]) -> None:
    if refusal is not None:
        assert 400 <= refusal.status < 500 and refusal.code and refusal.message
        return
    # Accepted: one unambiguous framing, clean header syntax.
    lower = [(name.lower(), value) for name, value in headers]
    lengths = [v for n, v in lower if n == b"content-length"]
    codings = [v for n, v in lower if n == b"transfer-encoding"]
    assert len(lengths) <= 1 and all(v.isdigit() for v in lengths)
    assert not (lengths and codings) and len(codings) <= 1
    assert all(v.strip().lower() == b"chunked" for v in codings) and (not codings or version == (1, 1))
    assert all(n and b" " not in n and b":" not in n for n, _ in headers)
    assert all(not any(c in v for c in (b"\x00", b"\r", b"\n")) for _, v in headers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_requests)
def test_fuzz_the_gate_over_raw_request_bytes(data: bytes) -> None:
    # As an llhttp front end hands it over (httptools is the parser the data plane will move to).
    collect = _Collect()
    parser = httptools.HttpRequestParser(collect)
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    if collect.done:
        method = parser.get_method().decode("latin-1")
        major, minor = (int(n) for n in parser.get_http_version().split("."))
        target = collect.url.decode("utf-8", "surrogateescape")
        # llhttp (strict) refuses control characters in values itself: the gate may skip that pass for it.
        assert all(not any((c < 0x20 and c != 0x09) or c == 0x7F for c in v) for _, v in collect.headers)
        refusal = check(method, target, (major, minor), collect.headers, values_checked=True)
        _assert_sound(refusal, collect.headers, (major, minor))
    # And as a careless splitter would: the gate never raises, whatever it is given.
    method, target, version, headers = _naive(data)
    _assert_sound(check(method, target, version, headers), headers, version)
