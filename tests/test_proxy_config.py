"""Proxy settings precedence and errors; routes; trusted-proxy address resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.exchange.routes import RouteTable
from edgeproxy.http.headers import end_to_end
from edgeproxy.runtime.config import ConfigError, load_config
from edgeproxy.visitor.forwarded import TrustedProxies

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
    assert trusted.forwarded("127.0.0.1", ["81.2.69.160, 10.1.2.3"], [], []) == ("81.2.69.160", None, None)
    assert trusted.forwarded("127.0.0.1", ["6.6.6.6, 81.2.69.160"], [], []) == ("81.2.69.160", None, None)
    assert trusted.forwarded("127.0.0.1", ["[2001:db8::1]:4711"], [], []) == ("2001:db8::1", None, None)
    assert not trusted.trusts("8.8.8.8")  # an untrusted peer's header is never read (view_of_client)
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
    from edgeproxy.runtime.config import FIELDS, FILE_ONLY

    readme = (repo_root / "README.md").read_text()
    for name in FIELDS:
        assert f"| `{name}` |" in readme, f"README settings table lacks {name}"
        if name not in FILE_ONLY:  # tables of the config file have no variable
            assert f"EDGEPROXY_{name.upper()}" in readme


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({**BASE, "listen": "127.0.0.1:99999"}, "command line --listen: setting 'listen': '127.0.0.1:99999' has a"),
        ({**BASE, "listen": "127.0.0.1:0"}, "has a port that is not 1-65535"),
        ({**BASE, "origin": "http://127.0.0.1:99999"}, "setting 'origin': 'http://127.0.0.1:99999' has a port"),
        ({**BASE, "origin": "http://127.0.0.1:0"}, "setting 'origin': 'http://127.0.0.1:0' has a port"),
        ({**BASE, "origin": "http://127.0.0.1:x"}, "setting 'origin': 'http://127.0.0.1:x' has a port"),
        ({**BASE, "origin": "http://"}, "setting 'origin': 'http://' has no host"),
        ({**BASE, "origin": "https:///path"}, "has no host"),
        ({**BASE, "state": "mysql://x"}, "setting 'state': 'mysql://x': unknown scheme 'mysql://'; use sqlite:///"),
        ({**BASE, "state": "sqlite://host/x.db"}, "names no file"),
        ({**BASE, "cache_store": "memcached://x"}, "setting 'cache_store': 'memcached://x' is not 'memory' or a redis"),
        ({**BASE, "fleet_redis": "http://x"}, "setting 'fleet_redis': 'http://x' is not a redis://host:port/db URL"),
        ({**BASE, "read_timeout": "-1"}, r"line --read-timeout: setting 'read_timeout' must be > 0 s\w+ \(got -1\)"),
        ({**BASE, "connect_timeout": "0"}, "setting 'connect_timeout' must be > 0 seconds"),
        ({**BASE, "pool_size": "0"}, "setting 'pool_size' must be > 0"),
        ({**BASE, "log_level": "verbose"}, "setting 'log_level': 'verbose' is not debug, info, warning or error"),
    ],
)  # fmt: skip
def test_ports_origins_and_stores_are_checked_naming_setting_and_source(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {}, flags)


def test_errors_name_the_source_of_the_value(tmp_path: Path) -> None:
    file = tmp_path / "x.toml"
    file.write_text('origin = "http://127.0.0.1:3000"\nrules = "r"\nread_timeout = -1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(file), {}, {})
    assert str(caught.value) == f"config file {file}: setting 'read_timeout' must be > 0 seconds (got -1)"
    file.write_text('origin = "http://127.0.0.1:3000"\nrules = "r"\ntrusted_proxies = ["not-an-ip"]\n')
    with pytest.raises(ConfigError, match=rf"^config file {file}: setting 'trusted_proxies': 'not-an-ip' is not"):
        load_config(str(file), {}, {})
    with pytest.raises(ConfigError, match=r"^environment variable EDGEPROXY_TRUSTED_PROXIES: setting 'trusted_prox"):
        load_config(None, {"EDGEPROXY_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, BASE)
    file.write_text('origin = "http://127.0.0.1:3000"\nrules = "r"\nread_timeout = 5\n')
    assert load_config(str(file), {}, {}).read_timeout == 5  # a valid file is fine
    with pytest.raises(ConfigError, match=r"^command line --read-timeout: setting 'read_timeout'"):
        load_config(str(file), {}, {"read_timeout": "-2"})


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    file = folder / "edgeproxy.toml"
    file.write_text(
        'origin = "http://127.0.0.1:3000"\nrules = "rules"\ngeoip = "geo/City.mmdb"\ndecision_log = "decisions.jsonl"\n'
        'snapshot_dir = "snap"\nstate = "sqlite:///state/edgeproxy.db"\n'
    )
    config = load_config(str(file), {}, {})
    assert config.rules == str(folder / "rules")
    assert config.geoip == str(folder / "geo" / "City.mmdb")
    assert config.decision_log == str(folder / "decisions.jsonl")
    assert config.snapshot_dir == str(folder / "snap")
    assert config.state == f"sqlite:///{folder / 'state' / 'edgeproxy.db'}"
    # Absolute paths and URLs are kept; a bare state path is a path too.
    head = 'origin = "http://127.0.0.1:3000"\n'
    file.write_text(head + f'rules = "{tmp_path}/abs"\nstate = "redis://127.0.0.1:6379/0"\n')
    config = load_config(str(file), {}, {})
    assert (config.rules, config.state) == (f"{tmp_path}/abs", "redis://127.0.0.1:6379/0")
    file.write_text('origin = "http://127.0.0.1:3000"\nrules = "r"\nstate = "state.db"\n')
    assert load_config(str(file), {}, {}).state == str(folder / "state.db")
    # From the environment or the command line, relative paths stay relative to the current directory.
    config = load_config(str(file), {"EDGEPROXY_GEOIP": "g.mmdb"}, {"rules": "rules", "state": "sqlite:///s.db"})
    assert (config.rules, config.geoip, config.state) == ("rules", "g.mmdb", "sqlite:///s.db")
    # Defaults (not written in the file) stay relative to the current directory too.
    assert load_config(str(file), {}, {}).snapshot_dir == "edgeproxy-snapshot"


def test_open_store_refuses_unknown_schemes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeproxy.store import open_store

    monkeypatch.chdir(tmp_path)
    for url in ("mysql://x", "postgres://u:secret@h/db", "sqlite://host/x.db"):
        with pytest.raises(ValueError, match=r"use sqlite:///relative/path\.db") as caught:
            open_store(url)
        assert "secret" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
