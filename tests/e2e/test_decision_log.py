"""`serve --decision-log`: every personalized request is logged with what it takes to reproduce it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    from edgeproxy.engine import context_from_description
    from edgeproxy.files.snapshot_file import load_snapshot

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


# Visitors whose uid comes from each source, with every request field a decision reads. The first two send the
# uid header while their cookie holds another uid: the header decides, and the log must replay it that way.
SOURCED_VISITORS = [
    ("header", {"X-CS-Personalize-User-Uid": "hdr-uid-1", "Cookie": "cs-personalize-user-uid=cookie-uid-1",
                "X-Forwarded-For": "81.2.69.160", "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}),
    ("header", {"X-CS-Personalize-User-Uid": " hdr-uid-2 ",
                "Cookie": "cs-personalize-user-uid=cookie-uid-2; cs-lytics-audiences=|vip_shoppers|; "
                          "cs-lytics-flows=|f1:active|; other=1",
                "X-Live-Attributes": '{"tier": "gold", "lifetime_value": 5000}', "Referer": "https://www.google.com/",
                "X-Forwarded-For": "216.160.83.56"}),
    ("header", {"X-CS-Personalize-User-Uid": "hdr-uid-3"}),
    ("cookie", {"Cookie": "cs-personalize-user-uid=cookie-uid-4; cs-lytics-audiences=|vip_shoppers|",
                "X-Live-Attributes": '{"__lytics_audiences": "|other|"}'}),
    ("minted", {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148"}),
    ("minted", {"Cookie": "cs-personalize-user-uid=", "X-Forwarded-For": "81.2.69.160"}),
]  # fmt: skip


def _wait_for_lines(path: Path, count: int, deadline_s: float = 5.0) -> list[dict[str, object]]:
    """The log's lines once `count` are there, polling without sending any traffic (the proxy stays idle)."""
    deadline = time.monotonic() + deadline_s
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{len(lines)} of {count} decision-log lines reached {path} within {deadline_s} s")


def test_header_uid_over_a_cookie_uid_replays_from_the_log_without_mismatch(
    launch: Launcher, http: Http, tmp_path: Path
) -> None:
    """Issue 15: a uid from `X-CS-Personalize-User-Uid` while the cookie holds another is logged as decided (uid and
    source), and `edgeproxy replay --from-log` reproduces every decision, including stored attributes and tags."""
    from .conftest import ROOT, RULES

    log_file = tmp_path / "decisions.jsonl"
    origin = launch.node_origin()
    proxy = launch.proxy(
        origin, "--trusted-proxies", "127.0.0.1", "--decision-log", str(log_file),
        "--now", "2026-11-28T12:00:00Z", "--state", f"sqlite:///{tmp_path / 'state.sqlite3'}",
    )  # fmt: skip
    project = json.loads((ROOT / "rules" / "personalize" / "projects" / "projects.json").read_text())[0]["uid"]
    stored = http.request(
        "PATCH", proxy.url + "/_personalize/user-attributes",
        headers={"X-Project-Uid": project, "X-CS-Personalize-User-Uid": "hdr-uid-3",
                 "Content-Type": "application/json"},
        data=json.dumps({"tier": "gold", "lifetime_value": 9000}),
    )  # fmt: skip
    assert stored.status == 200, stored.body
    served = []
    for _, headers in SOURCED_VISITORS:
        for path in ("/echo?utm_campaign=bf", "/"):
            reply = http.get(proxy.url + path, headers=headers)
            assert reply.status == 200
            if path.startswith("/echo"):
                served.append(reply.json()["headers"]["x-cs-personalize-user-uid"])
    assert served[:3] == ["hdr-uid-1", "hdr-uid-2", "hdr-uid-3"] and served[3] == "cookie-uid-4"
    lines = _wait_for_lines(log_file, 2 * len(SOURCED_VISITORS))  # flushed while the proxy idles
    echo_lines = [line for line in lines if str(line["path"]).startswith("/echo")]
    assert [line["userUidSource"] for line in echo_lines] == [source for source, _ in SOURCED_VISITORS]
    assert [line["userUid"] for line in echo_lines][:4] == served[:4]
    assert echo_lines[2]["request"]["storedAttributes"] == {"tier": "gold", "lifetime_value": 9000}  # type: ignore[index]
    for line in echo_lines[4:]:
        assert "cs-personalize-user-uid" not in json.dumps(line["request"])  # a minted uid: only `userUid`

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "replay", str(log_file), "--rules", RULES, "--from-log", "--json"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recorded = json.loads(done.stdout)["recorded"]
    assert recorded["checked"] == len(lines) and recorded["mismatched"] == 0, recorded


def test_a_logged_line_reaches_the_file_while_the_proxy_is_idle(launch: Launcher, http: Http, tmp_path: Path) -> None:
    """One request, then no traffic at all: its line is in the file within a second or so (polled, 3 s deadline)."""
    log_file = tmp_path / "decisions.jsonl"
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--decision-log", str(log_file))
    assert http.get(proxy.url + "/echo", headers={"Cookie": "cs-personalize-user-uid=idle-1"}).status == 200
    (line,) = _wait_for_lines(log_file, 1, deadline_s=3.0)
    assert line["userUid"] == "idle-1" and line["userUidSource"] == "cookie"
    assert proxy.alive()
