"""HTTP/1.1 semantics a reverse proxy must keep: bodiless responses, redirects passed through, every method with
its body, and hop-by-hop headers stopped at the proxy (RFC 9110 §7.6.1, §9.3.2, §15.3.5, §15.4.5)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os

import pytest
from support.raw_http import raw_exchange

from .conftest import Http, Service

pytestmark = pytest.mark.e2e


class KeepAlive:
    """One persistent connection (http.client): a body sent where none may be would corrupt the next response."""

    def __init__(self, service: Service) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=15)
        self.sock_id: int | None = None

    def exchange(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        self.conn.request(method, path, headers=headers or {})
        response = self.conn.getresponse()
        body = response.read()
        if self.sock_id is None:
            self.sock_id = id(self.conn.sock)
        assert id(self.conn.sock) == self.sock_id, "the proxy closed the keep-alive connection"
        return response, body

    def close(self) -> None:
        self.conn.close()


def test_head_204_and_304_have_no_body_on_a_reused_connection(proxy: Service, http: Http) -> None:
    etag = http.get(proxy.url + "/static/site.css").headers["ETag"]
    same_visitor = {"Cookie": "cs-personalize-user-uid=e2e-head-1"}
    full_page = http.get(proxy.url + "/", headers=same_visitor)
    connection = KeepAlive(proxy)
    try:
        head, body = connection.exchange("HEAD", "/", same_visitor)
        assert head.status == 200 and body == b""
        assert head.getheader("Content-Length") == str(len(full_page.body))
        assert head.getheader("Transfer-Encoding") is None

        for path, headers, status in [
            ("/status/204", {}, 204),
            ("/status/304", {}, 304),
            ("/static/site.css", {"If-None-Match": etag}, 304),
        ]:
            response, body = connection.exchange("GET", path, headers)
            assert response.status == status, path
            assert body == b""
            assert response.getheader("Transfer-Encoding") is None, path
            if status == 204:
                assert response.getheader("Content-Length") in (None, "0"), path

        # Had any of those carried body bytes, this response would be garbage.
        after, body = connection.exchange("GET", "/healthz")
        assert after.status == 200 and body == b"ok\n"
        head_again, body = connection.exchange("HEAD", "/download?bytes=1000000")
        assert head_again.status == 200 and body == b""
        assert head_again.getheader("Content-Length") == "1000000"
        last, body = connection.exchange("GET", "/healthz")
        assert last.status == 200 and body == b"ok\n"
    finally:
        connection.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_passed_through_not_followed(proxy: Service, http: Http, status: int) -> None:
    reply = http.get(f"{proxy.url}/redirect?to=/echo%3Ffrom%3Dredirect&status={status}")
    assert reply.status == status
    assert reply.headers["Location"] == "/echo?from=redirect"
    assert reply.body == b"redirecting to /echo?from=redirect\n"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_the_origin_with_its_body(proxy: Service, http: Http, method: str) -> None:
    body = os.urandom(150_000)
    reply = http.request(method, proxy.url + "/echo?m=" + method.lower(), data=body)
    assert reply.status == 200
    echoed = reply.json()
    assert echoed["method"] == method
    assert echoed["url"] == f"/echo?m={method.lower()}"
    assert echoed["bodyLength"] == len(body)
    assert echoed["bodySha256"] == hashlib.sha256(body).hexdigest()


def test_hop_by_hop_request_headers_are_removed_before_the_origin(proxy: Service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
    try:
        conn.putrequest("POST", "/echo", skip_accept_encoding=True)
        for name, value in [
            ("Connection", "keep-alive, X-Foo, x-bar"),
            ("X-Foo", "hop"),
            ("X-Bar", "hop too"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("X-End-To-End", "kept"),
            ("Content-Length", "5"),
        ]:
            conn.putheader(name, value)
        conn.endheaders(b"hello")
        response = conn.getresponse()
        assert response.status == 200
        echoed = json.loads(response.read())
    finally:
        conn.close()
    names = {name.lower() for name, _ in echoed["rawHeaders"]}
    leaked = names & {"x-foo", "x-bar", "keep-alive", "te", "trailer", "upgrade", "proxy-connection",
                      "proxy-authorization"}  # fmt: skip
    assert not leaked, echoed["rawHeaders"]
    assert "x-foo" not in echoed["headers"].get("connection", "").lower()
    assert echoed["headers"]["x-end-to-end"] == "kept"
    assert echoed["bodyLength"] == 5


def test_hop_by_hop_response_headers_of_the_origin_are_not_relayed(proxy: Service, http: Http) -> None:
    # Node answers with "Connection: keep-alive" and "Keep-Alive: timeout=5": both are about its own hop.
    reply = http.get(proxy.url + "/healthz")
    assert reply.status == 200
    assert "Keep-Alive" not in reply.headers


@pytest.mark.parametrize(
    "target",
    [
        "/echo?a=%2F%20b+c&d=%E2%9C%93&e&f=a%26b&g=%3D%3F%23",
        "/echo?x=%41%2f&empty=&dup=1&dup=2",
        "/echo?q=caf%C3%A9;semi=1",
    ],
)
def test_request_target_is_forwarded_byte_for_byte(proxy: Service, target: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        echoed = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200
    assert echoed["url"] == target


@pytest.mark.parametrize("status", [400, 404, 418, 500, 503])
def test_origin_error_statuses_pass_through_with_the_origin_body(
    proxy: Service, node_origin: Service, http: Http, status: int
) -> None:
    direct = http.get(f"{node_origin.url}/status/{status}")
    reply = http.get(f"{proxy.url}/status/{status}", headers={"Accept": "application/json"})
    assert reply.status == status
    assert reply.body == direct.body
    assert reply.headers["Content-Type"] == direct.headers["Content-Type"]


@pytest.mark.parametrize("path", ["/", "/download?bytes=3000", "/no-such-page"])
def test_whole_bodies_are_sent_as_the_general_response_path_sends_them(proxy: Service, path: str) -> None:
    """An origin response that arrived whole is written from a prebuilt head on HTTP/1.1 keep-alive requests
    (prebuilt.py) and through aiohttp's response path otherwise: the same status, headers and body, and
    pipelined requests come back whole and in order."""
    common = f"Host: 127.0.0.1:{proxy.port}\r\nCookie: cs-personalize-user-uid=prebuilt-whole\r\n"
    pipelined = raw_exchange(proxy.port, f"GET {path} HTTP/1.1\r\n{common}\r\n".encode() * 4, 4)
    (http10,) = raw_exchange(proxy.port, f"GET {path} HTTP/1.0\r\n{common}\r\n".encode(), 1)

    def comparable(headers: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: values for name, values in headers.items() if name not in ("date", "connection")}

    status, headers, body = pipelined[0]
    assert status.endswith(" 404 Not Found" if path == "/no-such-page" else " 200 OK")
    assert int(headers["content-length"][0]) == len(body) > 0
    for other_status, other_headers, other_body in [*pipelined[1:], http10]:
        assert other_status.split(" ", 1)[1] == status.split(" ", 1)[1]
        assert comparable(other_headers) == comparable(headers)
        if path.startswith("/download"):
            assert other_body == body
    assert all(h["date"] for _, h, _ in [*pipelined, http10])
