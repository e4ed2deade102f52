"""Impressions recorded by the proxy: origin-confirmed (header stripped) and server-side."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from .conftest import Http, Launcher

pytestmark = pytest.mark.e2e
VISITOR = {"Cookie": "cs-personalize-user-uid=imp-1", "X-Forwarded-For": "81.2.69.160"}


def rows(db: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT user_uid, experience_short_uid, variant_short_uid, source FROM events WHERE type='IMPRESSION' "
            "ORDER BY source, experience_short_uid"
        ).fetchall()


@pytest.mark.parametrize("mode", ["origin", "proxy", "off"])
def test_impressions_by_mode(launch: Launcher, http: Http, tmp_path: Path, mode: str) -> None:
    db = tmp_path / "state.db"
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--trusted-proxies", "127.0.0.1", "--state", f"sqlite:///{db}",
                         "--impressions", mode)  # fmt: skip
    page = http.get(proxy.url + "/", headers=VISITOR)
    assert page.status == 200
    assert "x-cs-applied-variants" not in {k.lower() for k in page.headers}  # stripped before the browser
    applied = page.body.decode().split('name="cs-variant-aliases" content="')[1].split('"')[0].split(",")
    http.get(proxy.url + "/", headers=VISITOR)  # a second view records nothing new
    cookie = next(c for c in page.set_cookies if c.startswith("cs-personalize-manifest="))
    proxy.stop()  # a clean stop flushes pending impressions
    recorded = rows(db)
    origin_rows = [(e, v) for u, e, v, s in recorded if s == "origin" and u == "imp-1"]
    proxy_rows = [(e, v) for u, e, v, s in recorded if s == "proxy" and u == "imp-1"]
    if mode == "off":
        assert recorded == []
        return
    assert sorted(origin_rows) == sorted(tuple(a.removeprefix("cs_personalize_").split("_")) for a in applied if a)
    import json

    manifest = json.loads(cookie.split("=", 1)[1].split("; ")[0])
    served = sorted((k, v) for k, v in manifest["activeVariants"].items() if v is not None)
    assert sorted(proxy_rows) == (served if mode == "proxy" else [])
