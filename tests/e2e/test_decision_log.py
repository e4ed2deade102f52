"""`serve --decision-log`: every personalized request is logged with what it takes to reproduce it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import Http, Launcher

pytestmark = pytest.mark.e2e

VISITORS = [
    {"X-Forwarded-For": "81.2.69.160", "Cookie": "cs-personalize-user-uid=log-1; session=secret",
     "User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"},
    {"X-Forwarded-For": "216.160.83.56", "Cookie": "cs-personalize-user-uid=log-2; cs-lytics-audiences=|vip_shoppers|",
     "Referer": "https://www.google.com/", "X-Live-Attributes": '{"tier": "gold", "lifetime_value": 5000}'},
    {"Cookie": "cs-personalize-user-uid=log-3"},
]  # fmt: skip


def test_logged_requests_replay_to_the_served_decisions(launch: Launcher, http: Http, tmp_path: Path) -> None:
    from edgeproxy.engine import context_from_description, load_snapshot

    log_file = tmp_path / "decisions.jsonl"
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--trusted-proxies", "127.0.0.1", "--decision-log", str(log_file))
    served = []
    for headers in VISITORS:
        reply = http.get(proxy.url + "/echo?utm_campaign=bf", headers=headers)
        served.append(reply.json()["headers"]["x-cs-personalize-variants"])
    http.get(proxy.url + "/static/site.css")  # not personalized: not logged
    proxy.stop()  # a clean stop flushes the log
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["decision"]["variantParam"] for line in lines] == served
    snapshot = load_snapshot(Path(__file__).resolve().parents[2] / "rules")
    for line in lines:
        assert line["snapshot"] == snapshot.version and line["status"] == 200
        assert "session=secret" not in json.dumps(line)  # unrelated cookies are not logged
        described = context_from_description(line["request"], clock=time.time, new_uid=lambda: "x")
        assert snapshot.decide(described.context, described.tags).to_dict() == line["decision"]
