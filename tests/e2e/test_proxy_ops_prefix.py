"""The reserved ops prefix (/_edgeproxy/) belongs to the proxy: answered there, never forwarded, however it is
spelled; `explain` exists only with an ops token."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import IP_LONDON, TRUSTED, Http, Launcher, Service, VisitorCatalog, http_status

pytestmark = pytest.mark.e2e

TOKEN = "e2e-ops-token-5b1f"


def _raw_get(service: Service, target: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """GET with the request target sent byte for byte (no client-side normalization of `..` or `%5F`)."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheader("Server") or "", response.read()
    finally:
        conn.close()


def _new_access_log_lines(access_log: Path, offset: int, marker_url: str, marker: str) -> list[str]:
    """nginx access-log lines written after `offset`, read once a final marker request shows up in the log."""
    assert http_status(marker_url) == 200
    deadline = time.monotonic() + 5
    while True:
        with access_log.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        if any(marker in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_health_is_answered_by_the_proxy_and_unknown_ops_paths_are_404(nginx_proxy: Service, http: Http) -> None:
    health = http.get(nginx_proxy.url + "/_edgeproxy/health")
    assert health.status == 200 and health.json() == {"status": "ok"}
    ready = http.get(nginx_proxy.url + "/_edgeproxy/ready")
    assert ready.status == 200 and ready.json()["ready"] is True
    nope = http.get(nginx_proxy.url + "/_edgeproxy/nope", headers={"Accept": "application/json"})
    assert nope.status == 404
    assert set(nope.json()) >= {"error", "message"}
    assert "nginx" not in nope.headers.get("Server", "")


SPELLINGS = [
    "/_edgeproxy/health",
    "/_edgeproxy/nope",
    "/_edgeproxy/",
    "/_edgeproxy",
    "/%5Fedgeproxy/health",
    "/%5fedgeproxy/x",
    "/%5F%65dgeproxy/x",
    "/_EDGEPROXY/x",
    "/_EdgeProxy/health",
    "/a/../_edgeproxy/x",
    "/static/../_edgeproxy/x.css",
    "/a/%2e%2e/_edgeproxy/x",
    "/a/..%2F_edgeproxy/x",
    "/./_edgeproxy/x",
    "/%2e/_edgeproxy/x",
    "//_edgeproxy/x",
    "/_edgeproxy%2Fhealth",
    "/_edgeproxy/explain",
    "/_edgeproxy/x?y=/_edgeproxy/",
]


def test_no_spelling_of_the_ops_prefix_reaches_the_origin(nginx_proxy: Service, nginx_origin: Service) -> None:
    access_log: Path = nginx_origin.extra["access_log"]
    offset = access_log.stat().st_size
    answers = {target: _raw_get(nginx_proxy, target) for target in SPELLINGS}
    marker = f"prefix-marker-{time.monotonic_ns()}"
    lines = _new_access_log_lines(access_log, offset, f"{nginx_proxy.url}/hdr?{marker}", marker)
    leaked = [line for line in lines if marker not in line]
    assert not leaked, f"reached nginx: {leaked}"
    assert len(lines) == 1, lines
    for target, (status, server, _) in answers.items():
        assert status in (200, 403, 404), (target, status)  # 403: explain is off without an ops token
        assert "nginx" not in server, target


def test_explain_is_off_without_an_ops_token(nginx_proxy: Service, http: Http) -> None:
    """403: the endpoint exists, the feature is off (no `ops_token` configured), whatever token is sent."""
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {TOKEN}"}):
        off = http.get(nginx_proxy.url + "/_edgeproxy/explain", headers={**headers, "Accept": "application/json"})
        assert off.status == 403 and off.json()["error"] == "forbidden" and "ops_token" in off.json()["message"]
        assert http.request("POST", nginx_proxy.url + "/_edgeproxy/explain", headers=headers, data=b"{}").status == 403


@pytest.mark.parametrize(
    "target",
    ["/foo/../_edgeproxy/status", "/a/./b/../../_edgeproxy//status", "/%5Fedgeproxy/status", "/_EdgeProxy/Status/",
     "/x/%2e%2e/_edgeproxy/status"],
)  # fmt: skip
def test_ops_endpoints_are_found_after_dot_segment_removal(nginx_proxy: Service, target: str) -> None:
    """Issue 15 item 6: the endpoint is named from the normalized path, as the dispatch matched it."""
    status, _, body = _raw_get(nginx_proxy, target, {"Accept": "application/json"})
    assert status == 200, (target, body[:200])
    assert json.loads(body)["snapshot"]["loaded"] is True


def test_ops_statuses_say_what_is_wrong(nginx_proxy: Service, http: Http) -> None:
    """Issue 15 item 9: 404 unknown path, 405 + Allow wrong method (public endpoints too), 403 feature off."""
    json_accept = {"Accept": "application/json"}
    unknown = http.get(nginx_proxy.url + "/foo/../_edgeproxy/nope", headers=json_accept)
    assert unknown.status == 404 and "'nope'" in unknown.json()["message"]
    for method, path, allow in [("POST", "health", "GET, HEAD"), ("DELETE", "status", "GET, HEAD"),
                                ("GET", "sync", "POST"), ("GET", "purge", "POST"),
                                ("PUT", "explain", "GET, HEAD, POST"), ("POST", "dashboard", "GET, HEAD")]:  # fmt: skip
        reply = http.request(method, nginx_proxy.url + "/_edgeproxy/" + path, headers=json_accept)
        assert reply.status == 405 and reply.headers["Allow"] == allow, (method, path, reply.status)
        assert reply.json()["error"] == "method_not_allowed"
    for path in ("sync", "purge", "webhooks/contentstack"):
        assert http.request("POST", nginx_proxy.url + "/_edgeproxy/" + path, data=b"{}").status == 403, path
    assert http.get(nginx_proxy.url + "/_edgeproxy/dashboard").status == 403


@pytest.fixture
def ops_proxy(launch: Launcher, nginx_origin: Service) -> Service:
    return launch.proxy(nginx_origin, *TRUSTED, "--ops-token", TOKEN)


def test_explain_needs_the_right_bearer_token(ops_proxy: Service, http: Http) -> None:
    url = ops_proxy.url + "/_edgeproxy/explain"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = http.get(url, headers=headers)
        assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer"), headers
        assert http.request("POST", url, headers=headers, data=b"{}").status == 401, headers
    for path in ("sync", "purge", "webhooks/contentstack"):  # their tokens default to the ops token
        refused = http.request("POST", ops_proxy.url + "/_edgeproxy/" + path, data=b"{}")
        assert refused.status == 401 and "WWW-Authenticate" in refused.headers, path
    ok = http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    assert set(ok.json()) >= {"manifest", "explanation"}


def test_explain_post_of_a_request_description_matches_edgeproxy_decide(
    ops_proxy: Service, decide: Any, http: Http
) -> None:
    description = {
        "url": "https://shop.example/?utm_campaign=bf",
        "headers": {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148"},
        "userUid": "e2e-explain-1",
        "ip": "216.160.83.56",
        "now": "2026-11-22T10:00:00Z",
    }
    reply = http.request(
        "POST", ops_proxy.url + "/_edgeproxy/explain", data=json.dumps(description).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    assert reply.status == 200, reply.body[:300]
    (expected,) = decide([description])
    assert reply.json()["manifest"] == expected
    assert reply.json()["explanation"]
    bad = http.request(
        "POST", ops_proxy.url + "/_edgeproxy/explain", data=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
    )  # fmt: skip
    assert bad.status == 400 and set(bad.json()) >= {"error", "message"}


@pytest.mark.parametrize(
    "body",
    [b'{"liveAttributes": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"liveAttributes": {"n": ' + b"9" * 5001 + b"}}",
     b'{"storedAttributes": {"x": NaN}}', b'{"ip": "\\ud800"}', b"\xff\xfe"],
    ids=["nested-5000", "number-5001-digits", "nan", "lone-surrogate", "not-utf8"],
)  # fmt: skip
def test_explain_post_of_hostile_json_is_a_400_and_the_proxy_serves_on(
    ops_proxy: Service, http: Http, body: bytes
) -> None:
    reply = http.request(
        "POST", ops_proxy.url + "/_edgeproxy/explain", data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
    )  # fmt: skip
    assert reply.status == 400, reply.body[:300]
    assert set(reply.json()) >= {"error", "message"}
    assert http.get(ops_proxy.url + "/_edgeproxy/health").status == 200
    assert "Traceback" not in ops_proxy.log_tail(400)


def test_explain_get_explains_the_decision_the_calling_visitor_gets_on_the_page(
    ops_proxy: Service, visitors: VisitorCatalog, http: Http
) -> None:
    visitor = visitors.new(
        "explained", user_agent=visitors.london.user_agent, client_ip=IP_LONDON,
        cookies=(("cs-personalize-user-uid", "e2e-explain-get"),),
    )  # fmt: skip
    page = http.get(ops_proxy.url + "/hdr", headers=visitor.headers()).json()
    explained = http.get(
        ops_proxy.url + "/_edgeproxy/explain?path=/hdr",
        headers={**visitor.headers(), "Authorization": f"Bearer {TOKEN}"},
    )
    assert explained.status == 200
    manifest = explained.json()["manifest"]
    assert manifest["userUid"] == "e2e-explain-get"
    assert manifest["variantParam"] == page["x-cs-personalize-variants"]


def test_status_reports_every_time_on_the_process_clock(launch: Launcher, nginx_origin: Service, http: Http) -> None:
    proxy = launch.proxy(nginx_origin, "--now", "2026-11-28T12:00:00Z")
    status = http.get(proxy.url + "/_edgeproxy/status").json()
    day = "2026-11-28T"  # the `now` setting's day, not the machine's
    assert status["snapshot"]["loadedAt"].startswith(day), status["snapshot"]
    sync = status["sync"]
    assert sync["lastAttempt"].startswith(day) and sync["lastSuccess"].startswith(day), sync
    assert all(entry["at"].startswith(day) for entry in sync["recent"]), sync["recent"]
