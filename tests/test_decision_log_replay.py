"""The decision log's request descriptions decide as the logged request did, whatever the uid's source."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy.engine import context_from_description
from edgeproxy.engine.context import VisitorContext, build_context, parse_cookie_header, resolve_user_uid
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.replay.readers import SourceStats, read_json_lines
from edgeproxy.runtime.decision_log import DecisionLog, description_of, uid_source

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_795_867_200.0  # 2026-11-28T12:00:00Z


def _proxied(headers: dict[str, str]) -> tuple[VisitorContext, str]:
    """A context as the proxy builds it, and where its uid came from (minting "minted-uid")."""
    proxy_headers = CIMultiDictProxy(CIMultiDict(headers))
    cookies = parse_cookie_header(headers.get("Cookie", ""))
    uid, _ = resolve_user_uid(proxy_headers, cookies, None, lambda: "minted-uid")
    ctx = build_context(
        headers=proxy_headers, cookies=cookies, user_uid=uid, now=NOW, page_url="https://shop.example/?utm_campaign=bf",
        live={}, stored={"tier": "gold"}, ip=None, trust_geo_headers=False, geo_lookup=None, classifier=None,
    )  # fmt: skip
    return ctx, uid_source(ctx)


@pytest.mark.parametrize(
    ("headers", "source", "uid"),
    [
        ({"X-CS-Personalize-User-Uid": "from-header", "Cookie": "cs-personalize-user-uid=from-cookie"}, "header",
         "from-header"),
        ({"X-CS-Personalize-User-Uid": "  ", "Cookie": "cs-personalize-user-uid=from-cookie"}, "cookie", "from-cookie"),
        ({"Cookie": "cs-personalize-user-uid=; cs-lytics-audiences=|vip_shoppers|"}, "minted", "minted-uid"),
        ({}, "minted", "minted-uid"),
    ],
)  # fmt: skip
def test_description_resolves_to_the_uid_that_decided(headers: dict[str, str], source: str, uid: str) -> None:
    ctx, found = _proxied(headers)
    assert found == source
    described = context_from_description(description_of(ctx, "GET", None), clock=lambda: 0.0, new_uid=lambda: "new")
    assert described.context.user_uid == uid and not described.user_uid_is_new


def _old_line(uid: str, cookie_uid: str) -> bytes:
    """A line as logged before the uid's source was: the header that decided is missing."""
    snapshot = load_snapshot(ROOT / "rules")
    request = {"url": "https://shop.example/", "headers": {"Cookie": f"cs-personalize-user-uid={cookie_uid}"},
               "userUid": uid, "now": "2026-11-28T12:00:00Z", "geo": {"country": "GB"}}  # fmt: skip
    decided = context_from_description({**request, "headers": {"X-CS-Personalize-User-Uid": uid}},
                                       clock=lambda: 0.0, new_uid=lambda: "x")  # fmt: skip
    decision = snapshot.decide(decided.context, None).to_dict()
    record = {"ts": "2026-11-28T12:00:00Z", "request": request, "decision": decision, "snapshot": snapshot.version}
    return (json.dumps(record) + "\n").encode()


def test_a_line_logged_before_the_source_was_replays_the_uid_that_decided() -> None:
    stats = SourceStats(source="old.jsonl")
    (record,) = read_json_lines(io.BytesIO(_old_line("hdr-uid", "cookie-uid")), "old.jsonl", stats)
    described = context_from_description(record.description, clock=lambda: 0.0, new_uid=lambda: "x")
    assert described.context.user_uid == "hdr-uid"
    assert record.recorded is not None and record.recorded.user_uid == "hdr-uid"


def test_the_log_records_ts_on_the_process_clock_and_flushes_outside_a_loop(tmp_path: Path) -> None:
    ctx, _ = _proxied({"X-CS-Personalize-User-Uid": "u1"})
    snapshot = load_snapshot(ROOT / "rules")
    log = DecisionLog(str(tmp_path / "d.jsonl"), clock=lambda: NOW)
    log._last_flush -= 10  # written outside an event loop: flushed by age
    log.write(ctx=ctx, manifest=snapshot.decide(ctx, None), snapshot=snapshot.version, method="GET", path="/",
              tags=None, status=200, cache=None, started=0.0)  # fmt: skip
    (line,) = [json.loads(text) for text in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert line["ts"] == "2026-11-28T12:00:00.000000Z" and line["userUidSource"] == "header"
    log.close()
    log.close()  # idempotent
