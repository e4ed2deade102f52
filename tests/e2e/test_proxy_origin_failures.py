"""When the origin is down or slow the proxy answers 502/504 itself (HTML or JSON by Accept) and keeps serving."""

from __future__ import annotations

import pytest

from .conftest import TRUSTED, Http, Launcher, Service

pytestmark = pytest.mark.e2e

HTML = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}


def test_origin_down_gives_502_then_recovers_when_the_origin_restarts_on_the_same_port(
    launch: Launcher, http: Http
) -> None:
    origin = launch.node_origin()
    proxy = launch.proxy(origin, *TRUSTED, "--connect-timeout", "2")
    assert http.get(proxy.url + "/healthz").status == 200  # a pooled keep-alive connection now exists

    origin.stop()
    page = http.get(proxy.url + "/", headers=HTML)
    assert page.status == 502
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"502" in page.body and b"<html" in page.body.lower()

    api = http.get(proxy.url + "/echo", headers=JSON)
    assert api.status == 502
    assert api.headers["Content-Type"].startswith("application/json")
    body = api.json()
    assert set(body) >= {"error", "message"}
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["message"], str) and body["message"]

    # The proxy's own endpoints keep answering while the origin is gone.
    assert http.get(proxy.url + "/_edgeproxy/health").status == 200

    launch.restart(origin, "/healthz")
    again = http.get(proxy.url + "/healthz")
    assert again.status == 200 and again.body == b"ok\n"
    assert http.get(proxy.url + "/echo", headers=JSON).status == 200


def test_crashed_and_restarted_origin_is_reached_despite_pooled_connections_to_the_old_process(
    launch: Launcher, http: Http
) -> None:
    origin = launch.node_origin()
    proxy = launch.proxy(origin, *TRUSTED)
    for _ in range(3):
        assert http.get(proxy.url + "/healthz").status == 200
        assert origin.process is not None
        origin.process.kill()  # a crash: no graceful close of keep-alive connections
        origin.process.wait(timeout=10)
        launch.restart(origin, "/healthz")
        assert http.get(proxy.url + "/healthz").status == 200


def test_origin_slower_than_the_read_timeout_gives_504_and_the_proxy_keeps_serving(
    launch: Launcher, node_origin: Service, http: Http
) -> None:
    proxy = launch.proxy(node_origin, *TRUSTED, "--read-timeout", "1")
    slow = http.get(proxy.url + "/slow?ms=3000", headers=JSON)
    assert slow.status == 504
    assert set(slow.json()) >= {"error", "message"}
    slow_page = http.get(proxy.url + "/slow?ms=3000", headers=HTML)
    assert slow_page.status == 504 and slow_page.headers["Content-Type"].startswith("text/html")
    # Faster than the timeout is fine, and the proxy is still healthy.
    assert http.get(proxy.url + "/slow?ms=100").status == 200
    assert http.get(proxy.url + "/healthz").status == 200
    assert http.get(proxy.url + "/_edgeproxy/health").status == 200
    assert proxy.alive()
