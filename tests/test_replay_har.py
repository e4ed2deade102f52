"""HAR input: page loads only (assets, non-GET, XHR and edgeproxy's own endpoints skipped), identity from cookies,
first visits from the uid edgeproxy minted, served decisions from the manifest cookie."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from replay_traffic import GB_UA, shop_rules
from rulesets import decide_one

from edgeproxy.files.snapshot_file import load_snapshot

GEOIP = str(Path(__file__).parent / "data" / "GeoIP2-City-Test.mmdb")
STARTED = "2026-11-22T10:00:00.123Z"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy.cli", "replay", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def entry(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    cookies: list[dict[str, str]] | None = None,
    set_cookies: list[str] | None = None,
    status: int = 200,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    request_headers = [{"name": ":authority", "value": "shop.example"}, {"name": "User-Agent", "value": GB_UA}]
    request_headers += [{"name": k, "value": v} for k, v in (headers or {}).items()]
    item: dict[str, Any] = {
        "startedDateTime": STARTED,
        "time": 12.5,
        "serverIPAddress": "216.160.83.56",  # the server's address: must NOT be taken as the client's
        "request": {"method": method, "url": url, "httpVersion": "HTTP/2", "headers": request_headers,
                    "cookies": cookies or [], "queryString": [], "headersSize": -1, "bodySize": 0},
        "response": {"status": status, "statusText": "OK", "httpVersion": "HTTP/2",
                     "headers": [{"name": "Set-Cookie", "value": c} for c in (set_cookies or [])],
                     "cookies": [], "content": {"size": 5, "mimeType": "text/html", "text": "<p>hi"},
                     "redirectURL": "", "headersSize": -1, "bodySize": 5},
        "cache": {}, "timings": {"send": 0, "wait": 10, "receive": 2.5},
    }  # fmt: skip
    item.update(extra or {})
    return item


def served(rules: Path, description: dict[str, Any]) -> list[str]:
    """The Set-Cookie headers edgeproxy would have sent for this request (SPEC §6)."""
    from edgeproxy.geo import MaxMindGeo

    decision = decide_one(load_snapshot(rules), description, geo_lookup=MaxMindGeo(GEOIP).lookup)
    body = json.dumps({"experiences": decision["experiences"], "activeVariants": decision["activeVariants"]},
                      separators=(",", ":"))  # fmt: skip
    return [
        f"cs-personalize-user-uid={decision['userUid']}; Max-Age=31536000; Path=/; SameSite=Lax",
        f"cs-personalize-manifest={body}; Path=/; SameSite=Lax",
    ]


def har(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "pages": [], "entries": entries}}


def build(tmp_path: Path, rules: Path) -> Path:
    london = {"X-Forwarded-For": "81.2.69.160"}
    entries = [
        # 1: a first visit: no uid; edgeproxy minted "minted-1" (the decision is for that uid).
        entry("https://shop.example/", headers=london,
              set_cookies=served(rules, {"userUid": "minted-1", "ip": "81.2.69.160", "now": STARTED})),
        entry("https://shop.example/static/site.css"),  # static asset
        entry("https://shop.example/app.js?v=3"),  # static asset
        entry("https://shop.example/img/logo.PNG"),  # static asset
        entry("https://shop.example/cart", method="POST"),  # not GET
        entry("https://shop.example/_personalize/manifest"),  # the Edge API
        entry("https://shop.example/api/data", headers={"Sec-Fetch-Dest": "empty"}),  # XHR / fetch
        entry("https://shop.example/x", extra={"_resourceType": "script"}),  # Chrome's resource type
        entry("https://shop.example/blocked", status=0),  # never reached a server
        entry("data:text/plain,hi"),
        # 11: a returning visitor, uid in the Cookie header, a US IP in X-Forwarded-For.
        entry("https://shop.example/products/a",
              headers={"Cookie": "cs-personalize-user-uid=u2; other=1", "Sec-Fetch-Dest": "document",
                       "X-Forwarded-For": "216.160.83.56"},
              set_cookies=served(rules, {"userUid": "u2", "ip": "216.160.83.56", "now": STARTED})),
        # 12: uid only in the HAR cookies array (some exporters leave the Cookie header out), London.
        entry("https://shop.example/p", headers=london, cookies=[{"name": "cs-personalize-user-uid", "value": "u3"}],
              set_cookies=served(rules, {"userUid": "u3", "ip": "81.2.69.160", "now": STARTED})),
        # 13: no uid and nothing recorded: a new visitor.
        entry("https://shop.example/about"),
    ]  # fmt: skip
    path = tmp_path / "site.har"
    path.write_text(json.dumps(har(entries), indent=2))
    return path


def test_har_replays_page_loads_only_and_reports_what_it_skipped(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    path = build(tmp_path, rules)
    data = json.loads(cli(str(path), "--rules", str(rules), "--geoip", GEOIP, "--json").stdout)
    source = data["traffic"][0]
    assert source["format"] == "har" and source["records"] == 4
    assert source["skipped"] == {
        "static asset": 3, "not GET": 1, "edgeproxy endpoint": 1, "not a document": 2, "no response": 1,
        "not http(s)": 1,
    }  # fmt: skip
    segments = next(e for e in data["experiences"] if e["shortUid"] == "0")
    # London (entries 1 and 12) is GB via X-Forwarded-For; serverIPAddress (a US server) is ignored.
    assert segments["variants"][0]["requests"] == 2
    assert data["users"] == 4
    every = json.loads(cli(str(path), "--rules", str(rules), "--all-requests", "--json").stdout)
    assert every["traffic"][0]["records"] == 12  # all but the data: URL


def test_har_reproduces_the_decisions_recorded_in_its_manifest_cookies(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    path = build(tmp_path, rules)
    result = cli(str(path), "--rules", str(rules), "--geoip", GEOIP, "--from-log")
    assert result.returncode == 0, result.stdout
    assert "recorded decisions: 3 of 3 reproduced exactly" in result.stdout
    # Without the geo database the London visitors are not recognized: the served decisions differ.
    differ = cli(str(path), "--rules", str(rules), "--from-log")
    assert differ.returncode == 1 and "2 of 3 recorded decisions differ" in differ.stdout


def test_gzipped_har_and_forced_format(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    path = build(tmp_path, rules)
    packed = tmp_path / "site.har.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    data = json.loads(cli(str(packed), "--rules", str(rules), "--json").stdout)
    assert data["traffic"][0]["format"] == "har" and data["traffic"][0]["records"] == 4
    # A HAR with another extension is still detected; --format forces it.
    renamed = tmp_path / "capture.json"
    renamed.write_bytes(path.read_bytes())
    assert json.loads(cli(str(renamed), "--rules", str(rules), "--json").stdout)["traffic"][0]["format"] == "har"
    one_line = tmp_path / "one-line.txt"
    one_line.write_text(json.dumps(har([entry("https://shop.example/")])))
    forced = json.loads(cli(str(one_line), "--rules", str(rules), "--format", "har", "--json").stdout)
    assert forced["traffic"][0]["records"] == 1


def test_assets_are_recognized_by_content_type_too(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    image = entry("https://shop.example/render?id=4")
    image["response"]["content"]["mimeType"] = "image/webp"
    style = entry("https://shop.example/theme")
    style["response"]["content"]["mimeType"] = "text/css; charset=utf-8"
    page = entry("https://shop.example/echo")
    page["response"]["content"]["mimeType"] = "application/json"  # a page the proxy personalized, as JSON
    path = tmp_path / "mixed.har"
    path.write_text(json.dumps(har([image, style, page])))
    data = json.loads(cli(str(path), "--rules", str(rules), "--json").stdout)
    assert data["traffic"][0]["records"] == 1 and data["traffic"][0]["skipped"] == {"static asset": 2}


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty

    rules = shop_rules(tmp_path)
    path = build(tmp_path, rules)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgeproxy.cli", "replay", str(path), "--rules", str(rules), "--json"],
            stdout=subprocess.PIPE, stderr=slave, timeout=120,
        )  # fmt: skip
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"100.0%" in seen and b"site.har" in seen  # drawn on the terminal, finished
    json.loads(proc.stdout)  # stdout stays clean JSON
    piped = cli(str(path), "--rules", str(rules), "--json")
    assert piped.stderr == ""


def test_the_proxys_routes_apply_with_config(tmp_path: Path) -> None:
    """With the proxy's config file, HAR entries get the route's tags and unpersonalized routes are skipped."""
    rules = shop_rules(tmp_path)
    config = tmp_path / "edgeproxy.toml"
    config.write_text(
        'origin = "http://127.0.0.1:3000"\nskip_paths = ["/health"]\n'
        '[[routes]]\npath = "/admin/*"\npersonalize = false\n'
        '[[routes]]\npath = "/checkout*"\ntags = ["section:none"]\n'
    )
    entries = [entry("https://shop.example/admin/x"), entry("https://shop.example/health"),
               entry("https://shop.example/checkout"), entry("https://shop.example/")]  # fmt: skip
    path = tmp_path / "routes.har"
    path.write_text(json.dumps(har(entries)))
    result = cli(str(path), "--rules", str(rules), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["traffic"][0]["records"] == 2
    assert data["traffic"][0]["skipped"] == {"not personalized (routes)": 2}
    # The checkout page decided no experience (its tag selects none), the home page all three.
    assert [e["requests"] for e in data["experiences"]] == [1, 1, 1]
    bad = cli(str(path), "--rules", str(rules), "--config", str(tmp_path / "missing.toml"))
    assert bad.returncode == 2 and "missing.toml" in bad.stderr
