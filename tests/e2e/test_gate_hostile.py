"""Hostile requests against `edgeproxy serve` in front of a recording origin (recording_origin.cjs), over raw
sockets: each case asserts the proxy's answer (a 4xx of its own, or the origin's answer), exactly what the
origin received (nothing smuggled, nothing altered), that the proxy still serves a normal request afterwards,
and that its log holds no traceback. One case per class of issue 14 and of RFC 9112 §6-§7 / RFC 6265 and the
request-smuggling literature (CL.TE, TE.CL, TE.TE, obs-fold, bare LF, NUL, names with spaces, Content-Encoding
on requests, h2c upgrades, duplicate and malformed Content-Length, chunk-size overflow, extensions, trailers).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.processes import free_port

from .conftest import ROOT, TRUSTED, Http, Launcher, Service, require_tool

pytestmark = pytest.mark.e2e
PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
RECORDING_ORIGIN = Path(__file__).with_name("recording_origin.cjs")


@dataclass
class Site:
    origin: Service
    proxy: Service

    def recorded(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.origin.url + "/__recorded", timeout=10) as reply:
            records: list[dict[str, Any]] = json.loads(reply.read())
        return records


@pytest.fixture(scope="module")
def site(session_launcher: Launcher) -> Site:
    node = require_tool("node")
    port = free_port()
    origin = Service(
        name=f"recording origin :{port}", argv=[node, str(RECORDING_ORIGIN), "--port", str(port)], port=port,
        log_path=session_launcher.tmp / f"recording-origin-{port}.log", env=dict(os.environ), cwd=ROOT,
    )  # fmt: skip
    session_launcher._launch(origin, "/__ready")
    proxy = session_launcher.proxy(origin, *TRUSTED)
    found = Site(origin, proxy)
    found.recorded()  # forget the readiness probes
    return found


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    closed: bool
    more: list[Answer] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def _parse(data: bytes) -> tuple[Answer, bytes] | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    lengths = [int(v) for n, v in headers if n.lower() == "content-length"]
    if status in (100, 101, 204, 304) or (not lengths and status < 200):
        return Answer(status, headers, b"", data, False), rest
    if not lengths:
        return None  # read to the close
    if len(rest) < lengths[0]:
        return None
    return Answer(status, headers, rest[: lengths[0]], data, False), rest[lengths[0] :]


def exchange(proxy: Service, payload: bytes, answers: int = 1, *, to_close: bool = False) -> Answer:
    """Send `payload` as it is; read `answers` responses, or until the proxy closes the connection (`to_close`:
    go on reading until it does)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        got: list[Answer] = []
        closed = False
        while len(got) < answers or (to_close and not closed):
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            while len(got) < answers:
                parsed = _parse(data)
                if parsed is None:
                    break
                answer, data = parsed
                if answer.status == 100:
                    continue
                got.append(answer)
        if not got:
            parsed = _parse(data + b"\r\n\r\n") if data else None
            return Answer(parsed[0].status if parsed else 0, [], data, data, closed)
        first = got[0]
        first.closed, first.more = closed, got[1:]
        return first


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", "Host: shop.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def after_each(site: Site, http: Http, forwarded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The proxy still serves a normal request; returns what the origin received before it (that normal request
    taken off the end), with no connection-level parse error at the origin."""
    assert site.proxy.alive(), site.proxy.log_tail()
    normal = http.get(site.proxy.url + "/after-case")
    assert normal.status == 200, normal.body[:300]
    records = site.recorded()
    assert records and records[-1]["url"] == "/after-case", records
    records = records[:-1]
    assert not [r for r in records if r["kind"] == "clientError"], records
    assert "Traceback" not in site.proxy.log_tail(2000)
    forwarded.extend(records)
    return records


def body_of(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["body"])


def headers_of(record: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in record["rawHeaders"]:
        found.setdefault(name.lower(), []).append(value)
    return found


# -- refused at the gate (or by the parser in front of it): a 4xx of edgeproxy's own, nothing forwarded ---------

SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n"
REFUSED: dict[str, tuple[bytes, int]] = {
    # CL.TE / TE.CL: both framings on one request
    "CL.TE": (request("POST", "/page", "Content-Length: 6", "Transfer-Encoding: chunked", body=b"0\r\n\r\nG"), 400),
    "TE.CL": (request("POST", "/page", "Transfer-Encoding: chunked", "Content-Length: 3",
                      body=f"{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n".encode()), 400),
    # TE.TE: obfuscated or repeated Transfer-Encoding
    "TE xchunked": (request("POST", "/page", "Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400),
    "TE space before colon": (request("POST", "/page", "Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    "TE repeated": (request("POST", "/page", "Transfer-Encoding: chunked", "Transfer-Encoding: identity",
                            body=b"0\r\n\r\n"), 400),
    "TE chunked not last": (request("POST", "/page", "Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"), 400),
    "TE gzip, chunked": (request("POST", "/page", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 400),
    "TE on HTTP/1.0": (request("POST", "/page", "Transfer-Encoding: chunked", body=b"0\r\n\r\n",
                               version="HTTP/1.0"), 400),
    # Content-Length: duplicates, signs, spaces, hex, lists, overflow
    "CL duplicate differing": (request("POST", "/page", "Content-Length: 1", "Content-Length: 2", body=b"ab"), 400),
    "CL duplicate equal": (request("POST", "/page", "Content-Length: 2", "Content-Length: 2", body=b"ab"), 400),
    "CL plus sign": (request("POST", "/page", "Content-Length: +2", body=b"ab"), 400),
    "CL negative": (request("POST", "/page", "Content-Length: -2", body=b"ab"), 400),
    "CL hex": (request("POST", "/page", "Content-Length: 0x2", body=b"ab"), 400),
    "CL inner space": (request("POST", "/page", "Content-Length: 1 1", body=b"ab"), 400),
    "CL list": (request("POST", "/page", "Content-Length: 2, 2", body=b"ab"), 400),
    "CL overflow": (request("POST", "/page", "Content-Length: 99999999999999999999999", body=b"ab"), 400),
    # chunked bodies: size overflow, bare LF, bad extension
    "chunk size overflow": (request("POST", "/page", "Transfer-Encoding: chunked",
                                    body=b"ffffffffffffffffff1\r\na\r\n0\r\n\r\n"), 400),
    "chunk bare LF": (request("POST", "/page", "Transfer-Encoding: chunked", body=b"1\na\r\n0\r\n\r\n"), 400),
    "chunk extension with NUL": (request("POST", "/page", "Transfer-Encoding: chunked",
                                         body=b"1;a\x00=b\r\na\r\n0\r\n\r\n"), 400),
    # header syntax (RFC 9110 §5, RFC 9112 §5)
    "obs-fold": (b"GET /page HTTP/1.1\r\nHost: shop.test\r\nX-A: a\r\n b\r\n\r\n", 400),
    "bare LF": (b"GET /page HTTP/1.1\nHost: shop.test\nX-A: a\n\n", 400),
    "bare LF after a header": (b"GET /page HTTP/1.1\r\nHost: shop.test\nX-A: a\r\n\r\n", 400),
    "NUL in a value": (request("GET", "/page", "X-A: a\x00b"), 400),
    "CR in a value": (request("GET", "/page", "X-A: a\rb"), 400),
    "control char in a value": (request("GET", "/page", "X-A: a\x01b"), 400),
    "space in a name": (request("GET", "/page", "X Evil: a"), 400),
    "empty name": (request("GET", "/page", ": a"), 400),
    "two Host headers": (request("GET", "/page", "Host: evil.example"), 400),
    "Host with a path": (b"GET /page HTTP/1.1\r\nHost: evil.example/x\r\n\r\n", 400),
    "Host with userinfo": (b"GET /page HTTP/1.1\r\nHost: user@evil.example\r\n\r\n", 400),
    "no Host on HTTP/1.1": (b"GET /page HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    "repeated uid header": (request("GET", "/page", "X-CS-Personalize-User-Uid: a", "X-CS-Personalize-User-Uid: b"),
                            400),
    # targets, methods, versions (RFC 9112 §3)
    "CONNECT": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 405),
    "TRACE": (request("TRACE", "/page"), 405),
    "unknown method": (request("FOO", "/page"), 400),
    "fragment in target": (request("GET", "/page#frag"), 400),
    "non-ASCII target": (request("GET", "/p\xe4ge"), 400),
    "absolute-form with another scheme": (request("GET", "ftp://evil.example/page"), 400),
    "absolute-form with userinfo": (request("GET", "http://user@evil.example/page"), 400),
    "asterisk-form on GET": (request("GET", "*"), 400),
    "HTTP/2.0 request line": (request("GET", "/page", version="HTTP/2.0"), 400),
    "HTTP/0.9": (b"GET /page\r\n\r\n", 400),
    "h2 prior knowledge preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "not HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    # Content-Encoding on a request body the proxy does not know
    "unknown Content-Encoding": (request("POST", "/page", "Content-Encoding: evil", "Content-Length: 2", body=b"ab"),
                                 415),
    # sizes (RFC 6585): our own short page, never the input
    "huge header": (request("GET", "/page", "X-Big: " + "a" * 70_000), 431),
    "huge header name": (request("GET", "/page", "X" + "a" * 70_000 + ": 1"), 431),
    "too many headers": (request("GET", "/page", *[f"X-H{i}: {i}" for i in range(300)]), 431),
    "huge target": (request("GET", "/" + "a" * 70_000), 414),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_requests_get_our_4xx_and_reach_nothing(site: Site, http: Http, case: str) -> None:
    payload, status = REFUSED[case]
    answer = exchange(site.proxy, payload, to_close=True)
    assert answer.status == status, (case, answer.raw[:400])
    assert answer.closed and not answer.more, "a refused connection is closed, nothing more answered"
    assert b"edgeproxy" in answer.body, answer.body[:300]  # our page, not aiohttp's
    for echo in (b"aaaaaaaa", b"evil", b"smuggled", b"Got more than"):
        assert echo not in answer.body.lower(), (case, answer.body[:300])
    assert after_each(site, http, []) == [], f"{case}: the origin received something"


def test_refusals_answer_json_when_asked(site: Site, http: Http) -> None:
    answer = exchange(site.proxy, request("GET", "/page#x", "Accept: application/json"))
    assert answer.status == 400
    assert json.loads(answer.body) == {"error": "bad_target", "message": json.loads(answer.body)["message"]}
    answer = exchange(site.proxy, request("TRACE", "/page", "Accept: application/json"))
    assert answer.status == 405 and answer.header("Allow") and json.loads(answer.body)["error"] == "method_not_allowed"
    assert after_each(site, http, []) == []


def test_the_gate_guards_reserved_paths_and_the_hit_lane_too(site: Site, http: Http) -> None:
    for target in ("/_edgeproxy/health", "/_personalize/manifest"):
        assert exchange(site.proxy, request("GET", target, "Content-Encoding: evil")).status == 415
    # A fresh cache hit is answered by the lane; a hostile variant of the same request is not.
    visitor = "X-CS-Personalize-User-Uid: lane-visitor"  # one visitor, one variant set, one cache entry
    for _ in range(2):
        exchange(site.proxy, request("GET", "/cacheable?lane", visitor))
    hit = exchange(site.proxy, request("GET", "/cacheable?lane", visitor))
    assert hit.status == 200 and hit.header("X-Cache") == ["HIT"]
    for hostile in (
        request("GET", "/cacheable?lane", visitor, visitor),
        request("GET", "/cacheable?lane", visitor, "Content-Encoding: evil"),
        b"GET /cacheable?lane HTTP/1.1\r\nHost: evil.example/x\r\n" + visitor.encode() + b"\r\n\r\n",
    ):
        answer = exchange(site.proxy, hostile)
        assert answer.status in (400, 415) and not answer.header("X-Cache"), answer.raw[:300]
    records = after_each(site, http, [])
    assert [r["url"] for r in records] == ["/cacheable?lane"], records  # only the one miss that filled the cache


# -- let through: what the origin receives is exactly what it must --------------------------------------------


def only_request(site: Site, http: Http) -> dict[str, Any]:
    records = after_each(site, http, [])
    assert len(records) == 1, records
    return records[0]


def test_gzip_request_bodies_are_relayed_as_the_exact_bytes_sent(site: Site, http: Http) -> None:
    inner = b'{"a":1}' + b"\r\n\r\n" + SMUGGLED.replace("/smuggled", "/smuggled-gzip").encode()
    for body in (gzip.compress(inner), b"this is not gzip at all", gzip.compress(b"\0" * 10_000_000)):
        answer = exchange(site.proxy, request("POST", "/upload", "Content-Encoding: gzip",
                                              f"Content-Length: {len(body)}", body=body))  # fmt: skip
        assert answer.status == 200, answer.raw[:300]
        record = only_request(site, http)
        assert (record["method"], record["url"]) == ("POST", "/upload")
        assert body_of(record) == body, "the body was altered"
        sent = headers_of(record)
        assert sent["content-encoding"] == ["gzip"] and sent["content-length"] == [str(len(body))]


def test_chunked_bodies_arrive_whole_without_extensions_or_trailers(site: Site, http: Http) -> None:
    for chunked in (b"1;ext=val\r\na\r\n2;x\r\nbc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\nX-Smuggled: 1\r\n\r\n",
                    b"3\r\nabc\r\n0\r\n\r\n"):  # fmt: skip
        answer = exchange(site.proxy, request("POST", "/upload", "Transfer-Encoding: chunked", body=chunked))
        assert answer.status == 200, answer.raw[:300]
        record = only_request(site, http)
        assert body_of(record) == b"abc"
        assert "x-smuggled" not in headers_of(record) and record["trailers"] == []


def test_whitespace_variants_that_are_valid_http_keep_their_meaning(site: Site, http: Http) -> None:
    cases = (request("POST", "/ows", "Transfer-Encoding:\tchunked", body=b"2\r\nab\r\n0\r\n\r\n"),
             request("POST", "/ows", "Content-Length: 2 ", body=b"ab"),
             request("POST", "/ows", "Transfer-Encoding: CHUNKED", body=b"2\r\nab\r\n0\r\n\r\n"))  # fmt: skip
    for payload in cases:
        assert exchange(site.proxy, payload).status == 200
        assert body_of(only_request(site, http)) == b"ab"


def test_pipelined_requests_stay_separate(site: Site, http: Http) -> None:
    payload = request("POST", "/one", "Content-Length: 3", body=b"abc") + request("GET", "/two")
    answer = exchange(site.proxy, payload, answers=2)
    assert answer.status == 200 and [a.status for a in answer.more] == [200]
    records = after_each(site, http, [])
    assert [(r["method"], r["url"], body_of(r)) for r in records] == [("POST", "/one", b"abc"), ("GET", "/two", b"")]


def test_absolute_form_is_forwarded_in_origin_form(site: Site, http: Http) -> None:
    answer = exchange(site.proxy, request("GET", "http://evil.example/page?q=1"))
    assert answer.status == 200
    record = only_request(site, http)
    assert record["url"] == "/page?q=1"
    assert headers_of(record)["host"] == [f"127.0.0.1:{site.origin.port}"]


def test_options_asterisk_is_answered_here(site: Site, http: Http) -> None:
    answer = exchange(site.proxy, request("OPTIONS", "*"))
    assert answer.status == 200 and answer.header("Allow")
    assert after_each(site, http, []) == []


def test_h2c_upgrade_attempts_are_served_as_http_1_1(site: Site, http: Http) -> None:
    answer = exchange(site.proxy, request("GET", "/h2c", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                          "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"))  # fmt: skip
    assert answer.status == 200
    record = only_request(site, http)
    assert record["kind"] == "request"
    sent = headers_of(record)
    assert "upgrade" not in sent and "http2-settings" not in sent


def test_websocket_upgrades_the_origin_declines_pass_its_answer_through(site: Site, http: Http) -> None:
    handshake = request("GET", "/ws", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")  # fmt: skip
    answer = exchange(site.proxy, handshake)
    # Declined (the origin answered 200): its answer to the same request without Upgrade goes through, not a 502.
    assert answer.status == 200 and json.loads(answer.body)["url"] == "/ws", answer.raw[:300]
    records = after_each(site, http, [])
    assert [r["kind"] for r in records] == ["upgrade", "request"]
    assert all(r["url"] == "/ws" for r in records)
    no_key = request("GET", "/ws", "Connection: Upgrade", "Upgrade: websocket")
    answer = exchange(site.proxy, no_key)
    assert answer.status == 200, answer.raw[:300]
    record = only_request(site, http)
    assert record["kind"] == "request" and "upgrade" not in headers_of(record)


INJECTED_UIDS = (
    "abc; Domain=evil.example; Expires=Wed, 21 Oct 2099 07:28:00 GMT",
    "u" * 10_000,
    "a\\b",
    '"quoted"',
    "with space",
    "\xff\xfe",
)


# In a Cookie header `;` ends the value (`abc; Domain=x` is a cookie `abc` and another named Domain): the
# cookie's own injections are the other non-cookie-octets.
COOKIE_UIDS = (*INJECTED_UIDS[1:], "abc,Domain=evil.example")
CASES = [("header", uid) for uid in INJECTED_UIDS] + [("cookie", uid) for uid in COOKIE_UIDS]


@pytest.mark.parametrize(("where", "uid"), CASES, ids=[f"{where}-{n}" for n, (where, _) in enumerate(CASES)])
def test_an_invalid_uid_is_never_echoed_a_new_one_is_minted(site: Site, http: Http, where: str, uid: str) -> None:
    header = f"X-CS-Personalize-User-Uid: {uid}" if where == "header" else f"Cookie: cs-personalize-user-uid={uid}"
    answer = exchange(site.proxy, request("GET", "/page", header, "Accept: text/html"))
    assert answer.status == 200, answer.raw[:300]
    cookies = [c for c in answer.header("Set-Cookie") if c.startswith("cs-personalize-user-uid=")]
    assert len(cookies) == 1
    minted = cookies[0].split(";")[0].split("=", 1)[1]
    assert minted != uid and len(minted) == 36, answer.header("Set-Cookie")
    assert "evil" not in " ".join(answer.header("Set-Cookie"))
    record = only_request(site, http)
    assert headers_of(record)["x-cs-personalize-user-uid"] == [minted]


def test_a_valid_uid_is_kept(site: Site, http: Http) -> None:
    uid = "visitor-42_!#$%&'()*+-./:<=>?@[]^`{|}~"
    answer = exchange(site.proxy, request("GET", "/page", f"X-CS-Personalize-User-Uid: {uid}"))
    assert f"cs-personalize-user-uid={uid};" in " ".join(answer.header("Set-Cookie"))
    assert headers_of(only_request(site, http))["x-cs-personalize-user-uid"] == [uid]


def test_invalid_utf8_in_user_agent_is_served(site: Site, http: Http) -> None:
    ua = b"User-Agent: Mozilla/5.0 \xff\xfe\xfd"
    answer = exchange(site.proxy, b"GET /page HTTP/1.1\r\nHost: shop.test\r\n" + ua + b"\r\n\r\n")
    assert answer.status == 200
    assert headers_of(only_request(site, http))["user-agent"] == ["Mozilla/5.0 \xff\xfe\xfd"]  # as Node reads latin-1


def test_forwarded_headers_are_read_from_the_hop_that_recorded_the_client(site: Site, http: Http) -> None:
    chain = ("X-Forwarded-For: 6.6.6.6, 81.2.69.160", "X-Forwarded-Proto: http, https",
             "X-Forwarded-Host: evil.example, shop.example")  # fmt: skip
    answer = exchange(site.proxy, request("GET", "/xf", *chain))
    assert answer.status == 200
    sent = headers_of(only_request(site, http))
    assert sent["x-forwarded-proto"] == ["https"] and sent["x-forwarded-host"] == ["shop.example"]
    assert sent["x-forwarded-for"] == ["6.6.6.6, 81.2.69.160, 127.0.0.1"]
    for ambiguous in (("X-Forwarded-For: 81.2.69.160", "X-Forwarded-For: 6.6.6.6"),
                      ("X-Forwarded-For: not-an-ip",), ("X-Forwarded-For: 999.1.1.1",),
                      ("X-Forwarded-For: 81.2.69.160", "X-Forwarded-Proto: gopher"),
                      ("X-Forwarded-For: 81.2.69.160", "X-Forwarded-Host: evil.example/x"),
                      ("X-Forwarded-Proto: https", "X-Forwarded-Proto: http")):  # fmt: skip
        assert exchange(site.proxy, request("GET", "/xf", *ambiguous)).status == 400, ambiguous
    assert after_each(site, http, []) == []


# -- the Edge API: bounded parsing, 4xx JSON errors, gzip decoded here -----------------------------------------

MERGE = b'{"sourceUserUid":"a; Domain=evil.example","targetUserUid":"b"}'
EDGE = ("X-Project-Uid: " + PROJECT, "X-CS-Personalize-User-Uid: edge-user-1")


def edge_json(answer: Answer) -> dict[str, Any]:
    assert answer.header("Content-Type")[0].startswith("application/json"), answer.raw[:300]
    found: dict[str, Any] = json.loads(answer.body)
    return found


@pytest.mark.parametrize(
    ("case", "payload", "status", "code"),
    [
        ("live attributes nested 5,000 deep", request("GET", "/_personalize/manifest", *EDGE,
         "X-Live-Attributes: " + "[" * 5000 + "]" * 5000), 400, "personalize.INVALID_LIVE_ATTRIBUTES"),
        ("live attributes with a 5,001-digit number", request("GET", "/_personalize/manifest", *EDGE,
         'X-Live-Attributes: {"a": ' + "9" * 5001 + "}"), 400, "personalize.INVALID_LIVE_ATTRIBUTES"),
        ("live attributes with 1e999999", request("GET", "/_personalize/manifest", *EDGE,
         'X-Live-Attributes: {"a": 1e999999}'), 400, "personalize.INVALID_LIVE_ATTRIBUTES"),
        ("uid with cookie attributes", request("GET", "/_personalize/manifest", "X-Project-Uid: " + PROJECT,
         "X-CS-Personalize-User-Uid: abc; Domain=evil.example"), 400, "personalize.INVALID_USER_UID"),
        ("non-gzip body labelled gzip", request("PATCH", "/_personalize/user-attributes", *EDGE,
         "Content-Encoding: gzip", "Content-Length: 9", body=b"not gzip!"), 400, "personalize.INVALID_BODY"),
        ("gzip bomb", request("PATCH", "/_personalize/user-attributes", *EDGE, "Content-Encoding: gzip",
         f"Content-Length: {len(gzip.compress(b' ' * 5_000_000))}", body=gzip.compress(b" " * 5_000_000)), 413,
         "personalize.BODY_TOO_LARGE"),
        ("brotli body", request("PATCH", "/_personalize/user-attributes", *EDGE, "Content-Encoding: br",
         "Content-Length: 2", body=b"{}"), 415, "personalize.UNSUPPORTED_ENCODING"),
        ("body nested 5,000 deep", request("PATCH", "/_personalize/user-attributes", *EDGE,
         "Content-Length: 10000", body=b"[" * 5000 + b"]" * 5000), 400, "personalize.INVALID_JSON"),
        ("merge with an injected uid", request("POST", "/_personalize/user-attributes/actions/merge", *EDGE,
         f"Content-Length: {len(MERGE)}", body=MERGE), 400,
         "personalize.INVALID_MERGE"),
        ("invalid UTF-8 body", request("POST", "/_personalize/events", *EDGE, "Content-Length: 4",
         body=b"\xff\xfe\xfd\xfc"), 400, "personalize.INVALID_JSON"),
    ],
)  # fmt: skip
def test_edge_api_hostile_input_is_a_4xx_json_error(
    site: Site, http: Http, case: str, payload: bytes, status: int, code: str
) -> None:
    answer = exchange(site.proxy, payload)
    assert answer.status == status, (case, answer.raw[:400])
    error = edge_json(answer)
    assert error["error"] == code, error
    assert "evil" not in answer.raw.decode("latin-1")
    assert after_each(site, http, []) == []


def test_edge_api_decodes_a_gzip_body_itself(site: Site, http: Http) -> None:
    body = gzip.compress(json.dumps({"tier": "gold"}).encode())
    answer = exchange(site.proxy, request("PATCH", "/_personalize/user-attributes", *EDGE, "Content-Encoding: gzip",
                                          f"Content-Length: {len(body)}", body=body))  # fmt: skip
    assert answer.status == 200, answer.raw[:300]
    assert edge_json(answer)["updated"] == ["tier"]
    assert after_each(site, http, []) == []
