"""Hit ratio on real traffic, end to end: `edgeproxy serve` processes in front of the Node example origin, with the
in-memory cache (one instance) and with a shared real redis-server (two instances: what one stores or purges,
the other sees). Tracking parameters left out of the key, Vary variants side by side, soft purges (the purge
endpoint and the Contentstack webhook with `purge_on_publish = "soft"`), and cache results per route.

`/cacheable?cc=…&vary=…&tag=…` answers JSON naming the request target it received and the Accept-Language it was
rendered for; `/_origin/hits` counts what reached the origin. Each test uses its own `m=` marker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.processes import redis_server

from .conftest import TRUSTED, Http, Launcher, Reply, Service, VisitorCatalog
from .test_cache import cacheable, hits, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "hit-ratio-purge-token"
HOST = {"Host": "shop.example"}  # instances behind one load balancer see one Host (the key holds it)
ROUTES = '[[routes]]\npath = "/cacheable"\nname = "cacheable-json"\n'


@dataclass(frozen=True)
class Instances:
    """Where requests go (`a`) and where the next ones go (`b`): the same process for the memory store, two
    processes sharing one Redis for the shared store."""

    store: str
    a: Service
    b: Service


@pytest.fixture(scope="module")
def hit_ratio_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("e2e-hit-ratio"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def shop(hit_ratio_launcher: Launcher) -> Service:
    return hit_ratio_launcher.node_origin()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-hit-ratio")) as url:
        yield url


@pytest.fixture(scope="module", params=["memory", "redis"])
def instances(
    request: pytest.FixtureRequest, hit_ratio_launcher: Launcher, shop: Service, shared_redis: str
) -> Instances:
    config = hit_ratio_launcher.tmp / "hit-ratio.toml"
    config.write_text(ROUTES)
    flags = (*TRUSTED, "--config", str(config), "--purge-token", TOKEN, "--purge-on-publish", "soft")
    if request.param == "memory":
        proxy = hit_ratio_launcher.proxy(shop, *flags)
        return Instances("memory", proxy, proxy)
    flags = (*flags, "--cache-store", shared_redis)
    return Instances("redis", hit_ratio_launcher.proxy(shop, *flags), hit_ratio_launcher.proxy(shop, *flags))


def get(http: Http, proxy: Service, target: str, headers: dict[str, str]) -> Reply:
    return http.get(proxy.url + target, headers={**headers, **HOST})


def post_json(http: Http, proxy: Service, path: str, body: Any) -> Reply:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    return http.request("POST", proxy.url + path, headers=headers, data=json.dumps(body))


def background_done(http: Http, proxy: Service) -> int:
    results: dict[str, int] = http.get(proxy.url + "/_edgeproxy/status").json()["cache"]["results"]
    return results.get("background_revalidated", 0) + results.get("background_refreshed", 0)


def refreshed_since(http: Http, proxy: Service, before: int) -> None:
    """Wait for `proxy` to finish a background refresh after `before` (its count then)."""
    wait_until(lambda: background_done(http, proxy) > before, what="the background refresh")


def test_tracking_parameters_share_one_entry_and_reach_the_origin_as_sent(
    instances: Instances, shop: Service, visitors: VisitorCatalog, http: Http
) -> None:
    headers = visitors.vip.headers()
    base = cacheable("public,s-maxage=300", f"norm-{instances.store}")
    sent = f"{base}&utm_source=newsletter&gclid=EAIaIQobChMI&utm_medium=email"
    before = hits(http, shop)
    first = get(http, instances.a, sent, headers)
    assert first.headers["X-Cache"] == "MISS" and first.json()["url"] == sent  # the origin got it as sent
    for target in (base, f"{base}&fbclid=IwAR0x", f"{base}&msclkid=5&utm_campaign=spring"):
        again = get(http, instances.b, target, headers)
        assert (again.headers["X-Cache"], again.body) == ("HIT", first.body), target
    assert get(http, instances.a, f"{base}&page=2&gclid=x", headers).headers["X-Cache"] == "MISS"
    assert hits(http, shop) - before == 2
    # A purge names the URL as the key holds it.
    purged = post_json(http, instances.b, "/_edgeproxy/purge", {"urls": [f"{base}&utm_source=other"]})
    assert purged.status == 200 and purged.json()["purged"] == 1
    assert get(http, instances.a, base, headers).headers["X-Cache"] == "MISS"


def test_vary_variants_are_kept_side_by_side(
    instances: Instances, shop: Service, visitors: VisitorCatalog, http: Http
) -> None:
    target = cacheable("public,s-maxage=300", f"vary-{instances.store}", vary="Accept-Language")
    headers = visitors.vip.headers()
    before = hits(http, shop)
    seen = []
    for proxy, language in ((instances.a, "en"), (instances.b, "de"), (instances.b, "en"), (instances.a, "de"),
                            (instances.a, "fr"), (instances.b, "en")):  # fmt: skip
        reply = get(http, proxy, target, {**headers, "Accept-Language": language})
        assert reply.status == 200 and reply.json()["language"] == language
        assert reply.headers.get("Vary") == "Accept-Language"
        seen.append(reply.headers["X-Cache"])
    assert seen == ["MISS", "MISS", "HIT", "HIT", "MISS", "HIT"]
    assert hits(http, shop) - before == 3


def test_a_soft_purge_serves_stale_while_one_request_refreshes(
    instances: Instances, shop: Service, visitors: VisitorCatalog, http: Http
) -> None:
    headers = visitors.vip.headers()
    target = cacheable("public,s-maxage=300", f"soft-{instances.store}", tag=f"soft-tag-{instances.store}")
    first = get(http, instances.a, target, headers)
    assert get(http, instances.b, target, headers).headers["X-Cache"] == "HIT"
    before = hits(http, shop)
    reply = post_json(http, instances.a, "/_edgeproxy/purge", {"tags": [f"soft-tag-{instances.store}"], "soft": True})
    assert reply.status == 200 and reply.json()["purged"] == 1 and reply.json()["soft"] is True
    refreshed_before = background_done(http, instances.b)
    stale = get(http, instances.b, target, headers)
    assert (stale.headers["X-Cache"], stale.body) == ("STALE", first.body)
    refreshed_since(http, instances.b, refreshed_before)
    after = get(http, instances.a, target, headers)
    assert after.headers["X-Cache"] == "HIT" and int(after.headers["Age"]) <= 1  # renewed (a 304: same ETag)
    assert hits(http, shop) - before == 1  # one request for the purged entry
    # A hard purge still drops it.
    assert post_json(http, instances.b, "/_edgeproxy/purge", {"urls": [target]}).json()["soft"] is False
    assert get(http, instances.a, target, headers).headers["X-Cache"] == "MISS"


def test_the_publish_webhook_purges_softly_and_an_unpublish_hard(
    instances: Instances, visitors: VisitorCatalog, http: Http
) -> None:
    headers = visitors.vip.headers()
    uid = f"blt-soft-{instances.store}"
    target = cacheable("public,s-maxage=300", f"webhook-{instances.store}", tag=uid)
    get(http, instances.a, target, headers)
    for event, expected in (("publish", "STALE"), ("unpublish", "MISS")):
        assert get(http, instances.b, target, headers).headers["X-Cache"] == "HIT"
        body = {"module": "entry", "event": event, "data": {"entry": {"uid": uid}}}
        reply = post_json(http, instances.a, "/_edgeproxy/webhooks/contentstack", body)
        assert reply.status == 200 and reply.json()["purged"] == 1 and reply.json()["soft"] == (event == "publish")
        refreshed = background_done(http, instances.b)
        assert get(http, instances.b, target, headers).headers["X-Cache"] == expected, event
        if expected == "STALE":
            refreshed_since(http, instances.b, refreshed)


def route_results(http: Http, proxy: Service) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(http.get(proxy.url + "/_edgeproxy/metrics").body.decode()):
        for sample in family.samples:
            if sample.name == "edgeproxy_cache_route_results_total":
                found[(sample.labels["route"], sample.labels["result"])] = sample.value
    return found


def test_cache_results_are_counted_per_route(instances: Instances, visitors: VisitorCatalog, http: Http) -> None:
    proxy = instances.a
    headers = visitors.vip.headers()
    before = route_results(http, proxy)
    assert ("cacheable-json", "HIT") in before and ("default", "MISS") in before  # there from the start
    target = cacheable("public,s-maxage=300", f"routes-{instances.store}")
    for _ in range(3):
        get(http, proxy, target, headers)
    get(http, proxy, f"/slow?ms=1&m=routes-{instances.store}", headers)  # no freshness, no default TTL: MISS
    after = route_results(http, proxy)
    delta = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert delta == {("cacheable-json", "MISS"): 1, ("cacheable-json", "HIT"): 2, ("default", "MISS"): 1}
    by_route = http.get(proxy.url + "/_edgeproxy/status").json()["cache"]["routes"]  # the same counts, as JSON
    assert by_route["cacheable-json"]["hit"] == after[("cacheable-json", "HIT")]
    text = http.get(proxy.url + "/_edgeproxy/metrics").body.decode()
    assert ('edgeproxy_cache_variant_sets_per_url_count{route="cacheable-json"}' in text) == (
        instances.store == "memory"
    )
