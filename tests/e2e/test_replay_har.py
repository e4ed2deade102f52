"""A HAR recorded by a real headless Chromium visiting the example shop through edgeproxy, replayed with
`edgeproxy replay`, reproduces every decision the proxy served.

The proxy runs with the MaxMind test database and trusts the loopback "CDN": each browser context sends a fixed
`X-Forwarded-For`, which the HAR records, so the replay sees the same client IP (a HAR has no client address of
its own; `serverIPAddress` is the server). Served decisions are read from the HAR twice, independently: the
`cs-personalize-manifest` cookie the proxy set, and the variant param the origin echoes (the page footer's
`#variant-param`, or `/echo`'s JSON of the headers it received).

Needs node, Debian's chromium and playwright-core from `npm ci --prefix tests/sdk` (the SDK suite's pinned
package.json); each missing one FAILS the test with the fix.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.engine.memo import MemoDecider
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.geo import MaxMindGeo
from edgeproxy.replay.decider import ContextFactory
from edgeproxy.replay.readers import HarFilter, read_traffic

from .conftest import (
    GEOIP,
    IP_LONDON,
    IP_US,
    ROOT,
    RULES,
    TRUSTED,
    UA_GOOGLEBOT,
    UA_IPHONE,
    UA_PIXEL,
    UA_WINDOWS_CHROME,
    Launcher,
    Service,
    require_tool,
)

pytestmark = pytest.mark.e2e

RECORDER = Path(__file__).resolve().parent / "record_har.cjs"
NODE_MODULES = ROOT / "tests" / "sdk" / "node_modules"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

VISITORS: list[dict[str, Any]] = [
    {   # a first visit: no cookies; the proxy mints the uid, the browser keeps it for the next pages
        "name": "london-desktop", "userAgent": UA_WINDOWS_CHROME, "xForwardedFor": IP_LONDON,
        "paths": ["/", "/products/storm-shell-jacket", "/echo?utm_campaign=bf", "/cart"],
    },
    {   # a returning visitor with a uid and Lytics cookies, on a phone in the US, from a newsletter link
        "name": "us-iphone", "userAgent": UA_IPHONE, "xForwardedFor": IP_US,
        "cookies": [{"name": "cs-personalize-user-uid", "value": "e2e-har-iphone-7"},
                    {"name": "cs-lytics-audiences", "value": "|high_value_shoppers|"}],
        "paths": ["/?ref=newsletter", "/checkout", "/products/alpine-down-jacket"],
    },
    {   # Android phone in London, in a Lytics flow
        "name": "gb-pixel", "userAgent": UA_PIXEL, "xForwardedFor": IP_LONDON,
        "cookies": [{"name": "cs-personalize-user-uid", "value": "e2e-har-pixel-3"},
                    {"name": "cs-lytics-flows", "value": "|post-purchase-nurture:engaged|"}],
        "paths": ["/", "/echo"],
    },
    {   # a crawler with no forwarded address: no geo
        "name": "googlebot", "userAgent": UA_GOOGLEBOT,
        "paths": ["/", "/products/trail-runner-shoes"],
    },
]  # fmt: skip
PAGE_COUNT = sum(len(v["paths"]) for v in VISITORS)


def _chromium() -> str:
    return require_tool("chromium", *CHROMIUM_CANDIDATES)


def _record(proxy: Service, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    node = require_tool("node")
    chromium = _chromium()
    if not (NODE_MODULES / "playwright-core" / "package.json").exists():
        pytest.fail(
            "playwright-core is missing: run `npm ci --prefix tests/sdk` (the pinned package.json of the SDK "
            "suite); .ci/run does this",
            pytrace=False,
        )
    har = tmp_path / "chromium.har"
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    env = {
        **os.environ,
        "NODE_PATH": str(NODE_MODULES),
        "BASE_URL": proxy.url,
        "HAR": str(har),
        "CHROMIUM": chromium,
        "PROFILE_ROOT": str(profiles),
        "VISITORS": json.dumps(VISITORS),
    }
    result = subprocess.run([node, str(RECORDER)], env=env, capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    outcome = json.loads(lines[-1]) if lines else {"ok": False, "error": result.stderr}
    assert result.returncode == 0 and outcome["ok"], f"recording failed: {outcome}\n{result.stderr}\n{proxy.log_tail()}"
    assert [v["status"] for v in outcome["visited"]] == [200] * PAGE_COUNT, outcome
    return har, outcome["visited"]


def _served(entry: dict[str, Any], visit: dict[str, Any]) -> dict[str, Any]:
    """What the proxy served for one HAR entry: the manifest and uid cookies (from the HAR), and the variant param
    the origin received (echoed in the body the browser got)."""
    assert entry["request"]["url"] == visit["url"]
    response = entry["response"]
    cookies: dict[str, str] = {}
    for header in response["headers"]:
        if header["name"].lower() == "set-cookie":
            for line in header["value"].split("\n"):
                name, _, rest = line.partition("=")
                cookies[name.strip()] = rest.split(";", 1)[0]
    text = visit["body"]
    if entry["request"]["url"].split("?")[0].endswith("/echo"):
        param = json.loads(text)["headers"].get("x-cs-personalize-variants", "")
    else:
        found = re.search(r'<span id="variant-param">(.*?)</span>', text)
        assert found is not None, f"no #variant-param in {entry['request']['url']}"
        param = html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()
    return {
        "manifest": json.loads(cookies["cs-personalize-manifest"]),
        "userUid": cookies["cs-personalize-user-uid"],
        "variantParam": param,
    }


def test_chromium_har_replays_to_the_served_decisions(launch: Launcher, node_origin: Service, tmp_path: Path) -> None:
    proxy = launch.proxy(node_origin, *TRUSTED)
    har, visits = _record(proxy, tmp_path)
    entries = json.loads(har.read_text())["log"]["entries"]
    pages = [e for e in entries if e["request"]["method"] == "GET" and e["response"]["status"] == 200
             and not re.search(r"\.(css|svg|js|png|ico)(\?|$)", e["request"]["url"])]  # fmt: skip
    assert len(pages) == PAGE_COUNT, [e["request"]["url"] for e in entries]
    served = [_served(e, v) for e, v in zip(pages, visits, strict=True)]
    # The HAR has the assets too (stylesheet, logo), which replay skips.
    assert any(e["request"]["url"].endswith("/static/site.css") for e in entries)
    # The proxy made different decisions for these visitors, so the check below is not vacuous.
    assert len({s["variantParam"] for s in served}) >= 4, served

    # 1. The command a user runs: every recorded decision reproduced, exit 0.
    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "replay", str(har), "--rules", RULES, "--geoip", GEOIP,
         "--from-log", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    report = json.loads(result.stdout)
    source = report["traffic"][0]
    assert source["format"] == "har" and source["records"] == PAGE_COUNT
    assert source["skipped"].get("static asset", 0) >= 2
    assert report["recorded"]["checked"] == PAGE_COUNT
    assert report["recorded"]["mismatched"] == 0, report["recorded"]["mismatches"]
    assert report["users"] == len(VISITORS)

    # 2. Entry by entry, against what the origin received (independent of the manifest cookie).
    snapshot = load_snapshot(RULES)
    factory = ContextFactory(snapshot, MaxMindGeo(GEOIP).lookup, clock=lambda: 0.0)
    decider = MemoDecider(snapshot)
    replayed = []
    for record in read_traffic([str(har)], force=None, har_filter=HarFilter()):
        described = factory(record)
        replayed.append(decider.decide(described.context, described.tags))
    assert len(replayed) == PAGE_COUNT
    for entry, want, got in zip(pages, served, replayed, strict=True):
        where = entry["request"]["url"]
        assert got.variant_param == want["variantParam"], where
        assert got.edge_body() == want["manifest"], where
        assert got.user_uid == want["userUid"], where


def test_decision_log_of_a_real_proxy_replays_exactly_and_a_tampered_one_fails(
    launch: Launcher, node_origin: Service, tmp_path: Path
) -> None:
    """`serve --decision-log` then `edgeproxy replay --from-log`: the contract between the two, end to end."""
    from .conftest import Http

    log_file = tmp_path / "decisions.jsonl"
    proxy = launch.proxy(node_origin, *TRUSTED, "--decision-log", str(log_file))
    http = Http()
    requests = [
        ("/", {"User-Agent": UA_WINDOWS_CHROME, "X-Forwarded-For": IP_LONDON}),
        ("/?utm_campaign=bf", {"User-Agent": UA_IPHONE, "X-Forwarded-For": IP_US,
                               "Cookie": "cs-personalize-user-uid=log-7; cs-lytics-audiences=|high_value_shoppers|"}),
        ("/products/storm-shell-jacket", {"User-Agent": UA_PIXEL, "Referer": "https://duckduckgo.com/",
                                          "X-Live-Attributes": '{"tier": "gold", "lifetime_value": 5000}'}),
        ("/echo", {"User-Agent": UA_GOOGLEBOT}),
    ]  # fmt: skip
    for path, headers in requests:
        assert http.get(proxy.url + path, headers=headers).status == 200
    proxy.stop()  # flushes the log
    lines = log_file.read_text().splitlines()
    assert len(lines) == len(requests)

    def replay(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeproxy.cli", "replay", str(path), "--rules", RULES, "--geoip", GEOIP,
             "--from-log", "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    ok = replay(log_file)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr
    report = json.loads(ok.stdout)
    assert report["recorded"]["checked"] == len(requests) and report["recorded"]["mismatched"] == 0
    assert report["traffic"][0]["format"] == "log"

    records = [json.loads(line) for line in lines]
    decision = records[1]["decision"]
    first = decision["experiences"][0]
    flipped = "0" if first["activeVariantShortUid"] != "0" else "1"
    first["activeVariantShortUid"] = flipped
    decision["activeVariants"][first["shortUid"]] = flipped
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = replay(tampered)
    assert bad.returncode == 1
    mismatches = json.loads(bad.stdout)["recorded"]["mismatches"]
    assert [m["position"] for m in mismatches] == [2]
    assert mismatches[0]["differences"][0]["field"] == "experiences"
