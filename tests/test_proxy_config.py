"""Proxy settings precedence and errors; routes; trusted-proxy address resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.proxy.config import ConfigError, load_config
from edgeproxy.proxy.headers import TrustedProxies, end_to_end
from edgeproxy.proxy.routes import RouteTable

BASE = {"origin": "http://127.0.0.1:3000", "rules": "rules"}


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path) -> None:
    file = tmp_path / "edgeproxy.toml"
    file.write_text('origin = "http://file:1"\nrules = "rules"\ncda_variant_limit = 5\nread_timeout = 9\n')
    env = {"EDGEPROXY_CDA_VARIANT_LIMIT": "2", "EDGEPROXY_READ_TIMEOUT": "7.5", "UNRELATED": "x"}
    config = load_config(str(file), env, {"cda_variant_limit": "1"})
    assert config.origin == "http://file:1"
    assert config.cda_variant_limit == 1
    assert config.read_timeout == 7.5


def test_booleans_and_lists_parse_from_environment() -> None:
    env = {"EDGEPROXY_PRESERVE_HOST": "yes", "EDGEPROXY_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"}
    config = load_config(None, env, BASE)
    assert config.preserve_host is True
    assert config.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rules": "rules"}, "setting 'origin' is required"),
        ({**BASE, "origin": "ftp://x"}, "must start with http:// or https://"),
        ({**BASE, "listen": "8080"}, "is not HOST:PORT"),
        ({**BASE, "trusted_proxies": "not-an-ip"}, "is not an address or CIDR"),
        ({**BASE, "cda_variant_limit": "three"}, "setting 'cda_variant_limit'"),
        ({**BASE, "ops_prefix": "/ops"}, "must start and end with '/'"),
    ],
)
def test_invalid_settings_name_the_setting(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {}, flags)


def test_unknown_file_setting_and_bad_toml_are_reported_with_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('origin = "http://x:1"\nrules = "r"\norigon = "typo"\n')
    with pytest.raises(ConfigError, match=r"config file .*c.toml: unknown setting 'origon'"):
        load_config(str(file), {}, {})
    file.write_text("origin = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(file), {}, {})


def test_routes_from_file_first_match_wins_then_skips_and_static_extensions(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        'origin = "http://x:1"\nrules = "r"\nskip_paths = ["/api/*"]\n'
        '[[routes]]\npath = "/"\ntags = ["section:homepage"]\n'
        '[[routes]]\npath = "/static/special.js"\n'
        '[[routes]]\npath = "/admin/*"\npersonalize = false\n'
    )
    table = RouteTable(load_config(str(file), {}, {}))
    assert table.decide("/").tags == ("section:homepage",)
    assert table.decide("/products/x").personalize and table.decide("/products/x").tags is None
    assert not table.decide("/admin/users").personalize
    assert not table.decide("/api/v1").personalize
    assert not table.decide("/static/site.CSS").personalize
    assert table.decide("/static/special.js").personalize  # an explicit route beats the extension rule
    # Decisions are memoised per path (bounded): the same answers when asked again, after thousands of others.
    for n in range(10_000):
        assert table.decide(f"/admin/{n}").personalize is False and table.decide(f"/p/{n}").personalize
    assert table.decide("/").tags == ("section:homepage",) and not table.decide("/api/v1").personalize
    assert len(table._decided) <= 4096


def test_client_address_walks_forwarded_for_through_trusted_hops_only() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert trusted.client_address("127.0.0.1", "81.2.69.160, 10.1.2.3") == "81.2.69.160"
    assert trusted.client_address("127.0.0.1", "6.6.6.6, 81.2.69.160") == "81.2.69.160"
    assert trusted.client_address("127.0.0.1", "[2001:db8::1]:4711") == "2001:db8::1"
    assert trusted.client_address("8.8.8.8", "81.2.69.160") == "8.8.8.8"  # untrusted peer: header ignored
    assert not TrustedProxies([]).trusts("127.0.0.1")


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict(
        [("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "5"), ("TE", "trailers"),
         ("Transfer-Encoding", "chunked"), ("Accept", "text/html"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    )  # fmt: skip
    kept = end_to_end(headers)
    assert list(kept.items()) == [("Accept", "text/html"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


def test_readme_documents_every_setting(repo_root: Path) -> None:
    from edgeproxy.proxy.config import FIELDS

    readme = (repo_root / "README.md").read_text()
    for name in FIELDS:
        assert f"| `{name}` |" in readme, f"README settings table lacks {name}"
        if name != "routes":
            assert f"EDGEPROXY_{name.upper()}" in readme
