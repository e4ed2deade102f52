"""`/_edgeproxy/metrics`: Prometheus text format, parsed by the Prometheus parser, with the proxy's counters."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Http, Service

pytestmark = pytest.mark.e2e


def test_metrics_parse_and_count_pages_decisions_variants_and_cache(proxy: Service, http: Http) -> None:
    for n in range(5):
        assert http.get(proxy.url + "/echo", headers={"Cookie": f"cs-personalize-user-uid=metrics-{n}"}).status == 200
    http.get(proxy.url + "/static/site.css")
    http.get(proxy.url + "/_personalize/manifest", headers={"X-Project-Uid": "6565d3b1a3f0c7b2e1d4a9f0"})
    reply = http.get(proxy.url + "/_edgeproxy/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    requests = {(s.labels["kind"], s.labels["code"]): s.value for s in families["edgeproxy_requests"].samples
                if s.name == "edgeproxy_requests_total"}  # fmt: skip
    assert requests[("page", "200")] >= 5
    assert requests[("passthrough", "200")] >= 1
    assert requests[("edge_api", "200")] >= 1
    decisions = [s for s in families["edgeproxy_decision_duration_seconds"].samples if s.name.endswith("_count")]
    assert decisions and decisions[0].value >= 6
    variants = [s for s in families["edgeproxy_variants_served"].samples if s.name.endswith("_total")]
    assert variants and all(s.labels["experience"] and s.labels["variant"] for s in variants)
    assert "edgeproxy_request_duration_seconds" in families
    assert "edgeproxy_cache_results" in families
    info = families["edgeproxy_snapshot_info"].samples
    assert info[0].labels["version"].startswith("sha256:")
