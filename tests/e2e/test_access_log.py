"""`--access-log`: one JSON line per request on stdout, with the decision for personalized pages."""

from __future__ import annotations

import json

import pytest

from .conftest import Http, Launcher

pytestmark = pytest.mark.e2e


def test_access_log_lines_are_json_with_the_decision(launch: Launcher, http: Http) -> None:
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--access-log")
    page = http.get(proxy.url + "/echo", headers={"Cookie": "cs-personalize-user-uid=log-me"})
    http.get(proxy.url + "/static/site.css")
    http.get(proxy.url + "/_edgeproxy/dashboard?token=s3cret")
    http.get(proxy.url + "/static/site.css?a=1&cs_preview=pr3view.sig")  # a preview link is a bearer secret too
    proxy.stop()
    lines = [json.loads(line) for line in proxy.log_path.read_text().splitlines() if line.startswith("{")]
    by_path = {line["path"]: line for line in lines}
    echo = by_path["/echo"]
    assert echo["status"] == 200 and echo["kind"] == "page" and echo["userUid"] == "log-me"
    assert echo["variants"] == page.json()["headers"]["x-cs-personalize-variants"]
    assert echo["snapshot"].startswith("sha256:") and echo["ms"] >= 0
    static = by_path["/static/site.css"]
    assert static["status"] == 200 and "kind" not in static
    assert "/_edgeproxy/dashboard?token=[redacted]" in by_path  # secrets in URLs never reach the log
    assert "/static/site.css?a=1&cs_preview=[redacted]" in by_path
    assert "s3cret" not in proxy.log_path.read_text() and "pr3view" not in proxy.log_path.read_text()
