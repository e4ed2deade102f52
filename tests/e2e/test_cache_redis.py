"""Two `edgeproxy serve` processes sharing one response cache in a real redis-server (`--cache-store redis://`).

Instances behind one load balancer see the same Host, so every request here names `shop.example`: the cache key
holds the host, and what one instance stored is what the other one finds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.processes import redis_server

from .conftest import TRUSTED, Http, Launcher, Reply, Service, VisitorCatalog
from .test_cache import concurrently

pytestmark = pytest.mark.e2e

TOKEN = "shared-purge-token"
HOST = {"Host": "shop.example"}


def hits(http: Http, origin: Service, path: str = "/cacheable") -> int:
    counts: dict[str, int] = http.get(origin.url + "/_origin/hits").json()
    return counts.get(path, 0)


def post_json(http: Http, url: str, body: Any) -> Reply:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    return http.request("POST", url, headers=headers, data=json.dumps(body))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-cache")) as url:
        yield url


@pytest.fixture(scope="module")
def pair_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("e2e-cache-redis"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def origin(pair_launcher: Launcher) -> Service:
    return pair_launcher.node_origin()


@pytest.fixture(scope="module")
def pair(pair_launcher: Launcher, origin: Service, redis_url: str) -> tuple[Service, Service]:
    flags = (*TRUSTED, "--cache-store", redis_url, "--purge-token", TOKEN)
    return pair_launcher.proxy(origin, *flags), pair_launcher.proxy(origin, *flags)


def get(http: Http, proxy: Service, target: str, visitor_headers: dict[str, str], *, settle: bool = True) -> Reply:
    """A request; with `settle`, a MISS returns once its entry is in Redis (the proxy stores it after the response
    has gone out, so another instance asked at once could otherwise be faster than the store)."""
    stored = stored_count(http, proxy) if settle else 0
    reply = http.get(proxy.url + target, headers={**visitor_headers, **HOST})
    if settle and reply.headers.get("X-Cache") == "MISS":
        for _ in range(500):
            if stored_count(http, proxy) > stored:
                break
            time.sleep(0.01)
    return reply


def stored_count(http: Http, proxy: Service) -> int:
    counts: int = http.get(proxy.url + "/_edgeproxy/status").json()["cache"]["results"].get("stored", 0)
    return counts


def test_a_response_cached_through_one_instance_is_a_hit_through_the_other(
    pair: tuple[Service, Service], origin: Service, visitors: VisitorCatalog, http: Http
) -> None:
    a, b = pair
    vip, iphone = visitors.vip.headers(), visitors.us_iphone_bf.headers()
    target = "/cacheable?cc=public,s-maxage=300&m=shared"
    before = hits(http, origin)
    first = get(http, a, target, vip)
    assert first.headers["X-Cache"] == "MISS"
    other = get(http, b, target, vip)
    assert (other.headers["X-Cache"], other.body) == ("HIT", first.body)
    assert "Age" in other.headers and other.headers["ETag"] == first.headers["ETag"]
    assert other.json()["variants"] == first.json()["variants"]
    assert get(http, a, target, vip).headers["X-Cache"] == "HIT"
    assert hits(http, origin) - before == 1
    # Another variant set is another entry, on both instances.
    theirs = get(http, b, target, iphone)
    assert theirs.headers["X-Cache"] == "MISS" and theirs.json()["variants"] != first.json()["variants"]
    assert get(http, a, target, iphone).headers["X-Cache"] == "HIT"
    assert hits(http, origin) - before == 2
    status = http.get(a.url + "/_edgeproxy/status").json()["cache"]["store"]
    assert status["backend"] == "redis"
    assert {"path": target, "keys": 2} in status["variantKeysPerPath"]


@pytest.mark.parametrize("how", ["url", "prefix", "tag"])
def test_a_purge_on_one_instance_purges_both(
    pair: tuple[Service, Service], visitors: VisitorCatalog, http: Http, how: str
) -> None:
    a, b = pair
    headers = visitors.vip.headers()
    target = f"/cacheable?cc=public,s-maxage=300&m=purge-{how}&tag=tag-{how}"
    kept = f"/cacheable?cc=public,s-maxage=300&m=kept-{how}"
    purge = {"url": {"urls": [target]}, "prefix": {"prefixes": [target.split("&tag=")[0]]},
             "tag": {"tags": [f"tag-{how}"]}}[how]  # fmt: skip
    for url in (target, kept):
        get(http, a, url, headers)
        assert get(http, b, url, headers).headers["X-Cache"] == "HIT"
    reply = post_json(http, b.url + "/_edgeproxy/purge", purge)
    assert reply.status == 200 and reply.json()["purged"] == 1
    assert get(http, a, target, headers).headers["X-Cache"] == "MISS"  # gone for the instance that stored it
    assert get(http, b, target, headers).headers["X-Cache"] == "HIT"  # ...and filled again, for both
    assert get(http, a, kept, headers).headers["X-Cache"] == "HIT"


def test_a_publish_webhook_on_one_instance_purges_the_entry_pages_on_both(
    pair: tuple[Service, Service], visitors: VisitorCatalog, http: Http
) -> None:
    a, b = pair
    headers = visitors.vip.headers()
    entry_uid = "blt-redis-entry"
    target = f"/cacheable?cc=public,s-maxage=300&m=webhook&tag={entry_uid}"
    get(http, b, target, headers)
    assert get(http, a, target, headers).headers["X-Cache"] == "HIT"
    webhook = {"module": "entry", "event": "publish", "data": {"entry": {"uid": entry_uid}}}
    reply = post_json(http, a.url + "/_edgeproxy/webhooks/contentstack", webhook)
    assert reply.status == 200 and reply.json()["purged"] == 1
    assert get(http, b, target, headers).headers["X-Cache"] == "MISS"


def test_concurrent_misses_on_one_instance_make_one_origin_request(
    pair: tuple[Service, Service], origin: Service, visitors: VisitorCatalog, http: Http
) -> None:
    a, _ = pair
    before = hits(http, origin)
    headers = {**visitors.vip.headers(), **HOST}
    replies = concurrently(a.url + "/cacheable?cc=public,s-maxage=300&m=coalesce", headers, 100)
    assert {status for status, _, _ in replies} == {200} and len({body for _, _, body in replies}) == 1
    assert hits(http, origin) - before == 1


def test_status_stops_counting_variant_keys_purged_by_tag(
    pair: tuple[Service, Service], visitors: VisitorCatalog, http: Http
) -> None:
    a, b = pair
    target = "/cacheable?cc=public,s-maxage=300&m=status-after-purge&tag=status-tag"
    for visitor in (visitors.vip, visitors.us_iphone_bf):
        get(http, a, target, visitor.headers())
    listed = http.get(a.url + "/_edgeproxy/status").json()["cache"]["store"]["variantKeysPerPath"]
    assert {"path": target, "keys": 2} in listed
    assert post_json(http, b.url + "/_edgeproxy/purge", {"tags": ["status-tag"]}).json()["purged"] == 2
    listed = http.get(a.url + "/_edgeproxy/status").json()["cache"]["store"]["variantKeysPerPath"]
    assert [item for item in listed if item["path"] == target] == []


def test_both_instances_keep_serving_when_redis_goes_away(
    launch: Launcher, visitors: VisitorCatalog, http: Http, tmp_path: Path
) -> None:
    origin = launch.node_origin()
    with redis_server(tmp_path) as url:
        a = launch.proxy(origin, *TRUSTED, "--cache-store", url)
        target = "/cacheable?cc=public,s-maxage=300&m=outage"
        get(http, a, target, visitors.vip.headers())
        assert get(http, a, target, visitors.vip.headers()).headers["X-Cache"] == "HIT"
    # redis-server is stopped: the cache is gone, the site is not.
    for _ in range(2):
        reply = get(http, a, target, visitors.vip.headers(), settle=False)  # nothing can be stored
        assert reply.status == 200 and reply.headers["X-Cache"] == "MISS"
    assert http.get(a.url + "/_edgeproxy/status").json()["cache"]["results"]["store_errors"] >= 2
