"""`X-Edgeproxy-Explain`: a token-protected why-this-variant header on proxied pages."""

from __future__ import annotations

import pytest

from .conftest import Http, Launcher

pytestmark = pytest.mark.e2e


def test_explain_header_only_with_the_token(launch: Launcher, http: Http) -> None:
    origin = launch.node_origin()
    proxy = launch.proxy(origin, "--ops-token", "T0ken", "--trusted-proxies", "127.0.0.1")
    visitor = {"Cookie": "cs-personalize-user-uid=dbg", "X-Forwarded-For": "81.2.69.160"}
    plain = http.get(proxy.url + "/echo", headers=visitor)
    assert "X-Edgeproxy-Explain" not in plain.headers
    wrong = http.get(proxy.url + "/echo", headers={**visitor, "X-Edgeproxy-Explain": "nope"})
    assert "X-Edgeproxy-Explain" not in wrong.headers
    asked = http.get(proxy.url + "/echo", headers={**visitor, "X-Edgeproxy-Explain": "T0ken"})
    header = asked.headers["X-Edgeproxy-Explain"]
    assert "user=dbg" in header and "snapshot=sha256:" in header
    assert "0=1 (first matching variant in order: 1)" in header  # UK shoppers hero for a London visitor
    assert "X-Edgeproxy-Explain" not in asked.json()["headers"] and "x-edgeproxy-explain" not in asked.json()["headers"]
