"""Proxy settings: defaults, a TOML config file, EDGEPROXY_* environment variables, then command-line flags.

Later sources override earlier ones field by field. Every field is documented in `FIELDS`, which also drives
`edgeproxy serve --help` and the README table, so the three never disagree.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeproxy.clock import parse_instant
from edgeproxy.visitor.behaviour import DAY, BehaviourConfig, behaviour_config

DEFAULT_STATIC_EXTENSIONS = (
    ".css", ".js", ".mjs", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico", ".bmp",
    ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp4", ".webm", ".mp3", ".ogg", ".wav", ".pdf", ".zip", ".gz",
    ".wasm",
)  # fmt: skip


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and its source."""


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Per-path settings: first matching glob wins (`/` matches only the root; `/shop/*` a subtree)."""

    path: str
    personalize: bool = True
    tags: tuple[str, ...] | None = None
    cache: bool = True
    name: str = ""  # the route's label in the per-route cache metrics; empty = the path glob


# Query parameters left out of the cache key by default: click identifiers and campaign tags that ad platforms,
# email tools and analytics append to inbound links. Pages are rendered the same with or without them (the
# analytics script reads them from the browser's location), the click identifiers are unique per click (one
# entry per ad click otherwise), and a decision that reads them is in the key already as the variant set.
DEFAULT_CACHE_IGNORED_QUERY_PARAMS = (
    "utm_*", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "fbclid", "msclkid", "ttclid", "twclid", "li_fat_id",
    "yclid", "igshid", "mc_cid", "mc_eid", "_hsenc", "_hsmi", "mkt_tok", "_ga", "_gl",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    origin: str = ""
    rules: str = ""
    listen: str = "127.0.0.1:8080"
    workers: int = 1
    geoip: str = ""
    preserve_host: bool = False
    trusted_proxies: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_size: int = 256
    cda_variant_limit: int = 3
    variant_query_param: str = ""
    no_store_personalized_html: bool = True
    static_extensions: tuple[str, ...] = DEFAULT_STATIC_EXTENSIONS
    skip_paths: tuple[str, ...] = ()
    routes: tuple[RouteRule, ...] = ()
    behaviour: BehaviourConfig | None = None
    ops_prefix: str = "/_edgeproxy/"
    ops_token: str = ""
    edge_api_prefix: str = "/_personalize/"
    cors_origins: tuple[str, ...] = ("*",)
    state: str = "sqlite:///edgeproxy-state.sqlite3"
    events: str = ""
    events_buffer_max: int = 1_000_000
    max_body_bytes: int = 65_536
    max_events_per_request: int = 100
    max_attributes_per_user: int = 100
    max_attribute_value_bytes: int = 1024
    attribute_ttl_days: float = 90.0
    retention_days: float = 0.0
    max_users: int = 1_000_000
    admin_url: str = ""
    region: str = ""
    project_uid: str = ""
    authtoken: str = ""
    oauth_token: str = ""
    sync_interval: float = 30.0
    sync_timeout: float = 15.0
    snapshot_dir: str = "edgeproxy-snapshot"
    webhook_token: str = ""
    watch: bool = False
    fleet_redis: str = ""
    cache: bool = True
    cache_store: str = "memory"
    cache_max_bytes: int = 256 * 1024 * 1024
    cache_max_object_bytes: int = 8 * 1024 * 1024
    cache_remembered_hits: int = 250_000
    cache_default_ttl: float = 0.0
    cache_key_headers: tuple[str, ...] = ()
    cache_ignored_query_params: tuple[str, ...] = DEFAULT_CACHE_IGNORED_QUERY_PARAMS
    cache_sort_query: bool = False
    cache_soft_purge_grace: float = 60.0
    purge_on_publish: str = "hard"
    purge_token: str = ""
    preview_secret: str = ""
    cookie_domain: str = ""
    consent_cookie: str = ""
    consent_value: str = ""
    max_header_size: int = 16_384
    access_log: bool = False
    decision_log: str = ""
    impressions: str = "origin"
    forward_edge_api: str = ""
    forward_outbox_max: int = 1_000_000
    forward_timeout: float = 10.0
    applied_variants_header: str = "x-cs-applied-variants"
    log_level: str = "info"
    now: str = ""
    _sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def behaviour_expiring(self) -> BehaviourConfig | None:
        """The `[behaviour]` section as the proxy and replay compute it: a visitor's behaviour expires
        `attribute_ttl_days` after their last page view, as the stored row does (SPEC §13)."""
        if self.behaviour is None:
            return None
        return replace(self.behaviour, expires=self.attribute_ttl_days * DAY)


# name -> help. The type comes from the dataclass default.
FIELDS: dict[str, str] = {
    "origin": "origin base URL to forward to, e.g. http://127.0.0.1:3000 (required)",
    "rules": "rules: a Personalize export folder or a compiled .msgpack snapshot (required)",
    "listen": "HOST:PORT to listen on (default 127.0.0.1:8080)",
    "workers": "processes sharing the port with SO_REUSEPORT (default 1); SIGUSR2 restarts them one by one",
    "geoip": "MaxMind City .mmdb for COUNTRY/REGION/CITY of the client IP",
    "preserve_host": "send the visitor's Host to the origin instead of the origin's own host (default false)",
    "trusted_proxies": "comma-separated addresses/CIDRs whose X-Forwarded-*/Forwarded and CDN geo headers are "
    "trusted (default none)",
    "connect_timeout": "seconds to connect to the origin before a 502 (default 5)",
    "read_timeout": "seconds to wait for origin data before a 504 (default 60)",
    "pool_size": "max pooled keep-alive connections to the origin (default 256)",
    "cda_variant_limit": "aliases kept in x-cs-variant-uid (the CDA applies 3 by default; 0 = all)",
    "variant_query_param": "also add the variant param to the upstream URL under this name, Launch-style "
    "(e.g. personalize_variants; default off)",
    "no_store_personalized_html": "send Cache-Control: no-store on personalized HTML (default true)",
    "static_extensions": "comma-separated path extensions never personalized (default: common asset types)",
    "skip_paths": "comma-separated path globs never personalized, e.g. /static/*,/api/health",
    "routes": "per-route settings (config file only): [[routes]] path = glob, tags = [...], personalize = bool, "
    "cache = bool, name = its label in the per-route cache metrics (default: the glob)",
    "behaviour": "behavioural attributes (config file only): a [behaviour] table mapping visits, pageviews, "
    "days_since_first_visit, days_since_last_visit, first_referrer, utm_source and [[behaviour.paths]] counters to "
    "custom attribute keys (default off)",
    "ops_prefix": "reserved path prefix for ops endpoints, never forwarded (default /_edgeproxy/)",
    "ops_token": "token for protected ops endpoints (explain); empty = those endpoints are off",
    "edge_api_prefix": "path prefix of the emulated Personalize Edge API (default /_personalize/): point "
    "Personalize.setEdgeApiUrl at https://your-site/_personalize",
    "cors_origins": "comma-separated origins allowed to call the Edge API from browsers (default *)",
    "state": "user attributes and events: sqlite:///path.db (default sqlite:///edgeproxy-state.sqlite3) or "
    "redis://host:port/db for several instances",
    "events": "where events live durably when not in `state`: a postgresql://user@host:port/database URL, the "
    "event store for fleets (edgeproxy report --events and the dashboard read it); empty = in `state` (default)",
    "events_buffer_max": "with Redis state and `events`: most events buffered in each project's Redis stream on "
    "their way to the event store; past it new events are refused (POST /events answers 503), never dropped "
    "silently (default 1000000: about 70-100 MB of Redis memory)",
    "max_body_bytes": "largest Edge API request body (default 65536)",
    "max_events_per_request": "most events in one POST /events (default 100)",
    "max_attributes_per_user": "most stored attributes per user (default 100)",
    "max_attribute_value_bytes": "largest stored attribute value, JSON-encoded (default 1024)",
    "attribute_ttl_days": "stored attributes expire this many days after the user's last write (default 90)",
    "retention_days": "delete events (impressions, conversions) older than this many days, in the background; "
    "0 = keep them (default 0)",
    "max_users": "SQLite: most users with stored attributes; the least recently written go first (default 1000000)",
    "admin_url": "Personalize Management API base URL to sync rules from (instead of --rules), e.g. "
    "https://personalize-api.contentstack.com",
    "region": "Management API region instead of --admin-url: na, eu, au, azure-na, azure-eu, gcp-na, gcp-eu",
    "project_uid": "Personalize project uid to sync (with --admin-url/--region)",
    "authtoken": "Management API authtoken (prefer EDGEPROXY_AUTHTOKEN over the flag)",
    "oauth_token": "Management API OAuth bearer token (prefer EDGEPROXY_OAUTH_TOKEN)",
    "sync_interval": "seconds between Admin polls, jittered ±10% per instance, backing off on failure (default 30)",
    "sync_timeout": "seconds one Management API call may take before the sync is rejected (default 15)",
    "snapshot_dir": "where sync keeps the export tree and the last good snapshot (default edgeproxy-snapshot)",
    "webhook_token": "token for POST /_edgeproxy/sync (webhooks, Automate) to sync now; empty = use ops_token",
    "watch": "with --rules DIR: reload when a file changes (development)",
    "fleet_redis": "redis://... shared by a fleet: follow snapshots published there (edgeproxy publish, or any "
    "instance syncing from Admin, which publishes what it syncs)",
    "cache": "shared response cache keyed on the variant set, RFC 9111 rules (default true)",
    "cache_store": "memory (default) or redis://host:port/db to share the cache between instances",
    "cache_max_bytes": "memory cache size bound in bytes, LRU (default 268435456)",
    "cache_max_object_bytes": "responses larger than this pass uncached (default 8388608)",
    "cache_remembered_hits": "request heads whose fresh hit the data plane remembers, to answer their repeats "
    "without deciding again (about 1 KB each; default 250000; 0 = none)",
    "cache_default_ttl": "seconds to cache responses the origin gives no freshness for (default 0: not cached)",
    "cache_key_headers": "comma-separated request headers added to the cache key, e.g. accept-language",
    "cache_ignored_query_params": "comma-separated query parameters left out of the cache key (a trailing * matches "
    "a prefix, e.g. utm_*); the origin still gets the URL as sent (default: utm_*, gclid, fbclid, msclkid and other "
    "click identifiers and campaign tags; empty = every parameter counts)",
    "cache_sort_query": "sort the query parameters by name in the cache key, so ?a=1&b=2 and ?b=2&a=1 share "
    "entries; the origin still gets the URL as sent (default false)",
    "cache_soft_purge_grace": "seconds after a soft purge during which a purged entry is still served (STALE) "
    "while one request refreshes it, never past what its freshness and stale-while-revalidate allowed (default 60)",
    "purge_on_publish": "how the Contentstack publish webhook purges the entry's pages: hard (drop them; default) "
    "or soft (mark them stale and refresh them in the background); unpublish and delete always purge hard",
    "purge_token": "token for POST /_edgeproxy/purge and the Contentstack publish webhook; empty = ops_token",
    "preview_secret": "secret that signs preview links (edgeproxy preview-link; prefer EDGEPROXY_PREVIEW_SECRET over "
    "the flag); empty = previews off",
    "cookie_domain": "Domain= of the uid and manifest cookies, to share one identity across subdomains, e.g. "
    "example.com (added only for hosts within it; default none: host-only cookies)",
    "consent_cookie": "consent mode: the cookie that says a visitor consented; without it no identifier or "
    "manifest cookie is set, nothing is stored for them and A/B tests are null (default off)",
    "consent_value": "with consent_cookie: the value that means consent (default: any non-empty value)",
    "max_header_size": "largest accepted request header line / field in bytes (default 16384)",
    "access_log": "log one JSON line per request: remote, method, path, status, bytes, ms, and for personalized "
    "pages the uid, variant param, snapshot and cache result (default false)",
    "impressions": "which impressions the proxy records: origin (default: aliases the origin reports in "
    "applied_variants_header), proxy (also every personalized HTML page served), off",
    "forward_edge_api": "also send every accepted write (SDK events, attribute patches and merges, the proxy's "
    "impressions) to Contentstack's Edge API: a region (na, eu, au, azure-na, azure-eu, gcp-na, gcp-eu) or the "
    "host's URL; queued durably where `state` is (default off)",
    "forward_outbox_max": "most writes waiting to be forwarded (queued plus dead letters); past it writes are still "
    "accepted locally but not forwarded, counted and shown in status (default 1000000)",
    "forward_timeout": "seconds one forwarded request may take before it is retried (default 10)",
    "applied_variants_header": "response header in which the origin lists the aliases it applied (recorded as "
    "origin-confirmed impressions, stripped before the browser; default x-cs-applied-variants)",
    "decision_log": "append one JSON line per personalized request (request description + decision + status), "
    "replayable with `edgeproxy replay --from-log` (default off)",
    "log_level": "debug, info, warning or error (default info)",
    "now": "start the proxy's clock at this ISO-8601 instant, e.g. 2026-11-28T12:00:00Z; it then runs on. For demos "
    "and tests of time-bound rules (default: the system clock)",
}


FILE_ONLY = frozenset({"routes", "behaviour"})  # tables of the config file: no flag, no environment variable

# Settings whose values are never shown, not even in an error about them.
SECRET_SETTINGS = frozenset({"ops_token", "authtoken", "oauth_token", "webhook_token", "purge_token", "preview_secret"})


def _coerce(name: str, value: Any, source: str) -> Any:
    default = getattr(ProxyConfig(), name)
    try:
        if name == "routes":
            return _routes(value, source)
        if name == "behaviour":
            if not isinstance(value, dict):
                raise ValueError("expected a [behaviour] table (config file only)")
            return behaviour_config(value)
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            try:
                return int(value)
            except ValueError:
                raise ValueError("expected a whole number") from None
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError("expected a number")
            try:
                return float(value)
            except ValueError:
                raise ValueError("expected a number") from None
        if isinstance(default, tuple):
            items = value if isinstance(value, list | tuple) else str(value).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except (TypeError, ValueError) as exc:
        got = f"{type(value).__name__}, not shown" if name in SECRET_SETTINGS else repr(value)
        raise ConfigError(f"{_where(source, name)}: setting {name!r}: {exc} (got {got})") from None


def _where(source: str, name: str) -> str:
    """The place a user looks for a setting's value: the variable or the flag, not just "environment"."""
    if source == "environment":
        return f"environment variable EDGEPROXY_{name.upper()}"
    if source == "command line":
        return f"command line --{name.replace('_', '-')}"
    return source


def _routes(value: Any, source: str) -> tuple[RouteRule, ...]:
    if not isinstance(value, list):
        raise ValueError("expected an array of tables: [[routes]] path = '/', tags = ['section:homepage']")
    routes = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise ValueError(f"routes[{index}] needs a string 'path'")
        tags = item.get("tags")
        if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
            raise ValueError(f"routes[{index}].tags must be an array of strings")
        personalize = item.get("personalize", True)
        cache = item.get("cache", True)
        if not isinstance(personalize, bool) or not isinstance(cache, bool):
            raise ValueError(f"routes[{index}].personalize and .cache must be true or false")
        name = item.get("name", "")
        if not isinstance(name, str):
            raise ValueError(f"routes[{index}].name must be a string (its label in the cache metrics)")
        unknown = set(item) - {"path", "tags", "personalize", "cache", "name"}
        if unknown:
            raise ValueError(f"routes[{index}] has unknown keys {sorted(unknown)}")
        rule = RouteRule(path=item["path"], personalize=personalize, tags=tuple(tags) if tags else None, cache=cache,
                         name=name)  # fmt: skip
        routes.append(rule)
    return tuple(routes)


def _apply(config: ProxyConfig, values: Mapping[str, Any], source: str) -> ProxyConfig:
    known = {f.name for f in fields(ProxyConfig) if not f.name.startswith("_")}
    changes: dict[str, Any] = {}
    for raw_name, value in values.items():
        name = raw_name.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{source}: unknown setting {raw_name!r}; known: {', '.join(sorted(known))}")
        changes[name] = _coerce(name, value, source)
    sources = dict(config._sources)
    sources.update({name: source for name in changes})
    return replace(config, **changes, _sources=sources)


# Settings that name files or folders. A relative one written in a config file is taken relative to that file's
# folder (so the file works from any current directory); from the environment or a flag, relative to the current
# directory, as a shell user expects.
PATH_SETTINGS = ("rules", "geoip", "decision_log", "snapshot_dir", "state")


def _relative_to(base: Path, name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if name == "state":
        if value.startswith("sqlite:///"):
            path = value[len("sqlite:///") :]
            return value if not path or Path(path).is_absolute() else "sqlite:///" + str(base / path)
        if "://" in value or value == ":memory:":
            return value
    return value if Path(value).is_absolute() else str(base / value)


def read_settings(
    file: str | None, environ: Mapping[str, str], flags: Mapping[str, Any], *, base_dir: Path | None = None
) -> ProxyConfig:
    """Defaults < `file` < EDGEPROXY_* in `environ` < `flags`, each value coerced but the whole not validated: for
    commands that read a few settings of the proxy's config (preview-link: preview_secret, now) without its
    required ones. Relative paths in `file` (see PATH_SETTINGS) are resolved against `base_dir`, by default the
    file's folder."""
    config = ProxyConfig()
    if file:
        path = Path(file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {file}: cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: not valid TOML: {exc}") from None
        base = base_dir if base_dir is not None else path.parent
        data = {
            key: _relative_to(base, key.replace("-", "_"), value) if key.replace("-", "_") in PATH_SETTINGS else value
            for key, value in data.items()
        }
        config = _apply(config, data, f"config file {file}")
    env_values = {
        key[len("EDGEPROXY_") :].lower(): value
        for key, value in environ.items()
        if key.startswith("EDGEPROXY_") and key[len("EDGEPROXY_") :].lower() in FIELDS.keys() - FILE_ONLY
    }
    config = _apply(config, env_values, "environment")
    return _apply(config, {k: v for k, v in flags.items() if v is not None}, "command line")


def load_config(
    file: str | None, environ: Mapping[str, str], flags: Mapping[str, Any], *, base_dir: Path | None = None
) -> ProxyConfig:
    """Defaults < `file` < EDGEPROXY_* in `environ` < `flags`, validated (see `read_settings`)."""
    return validate(read_settings(file, environ, flags, base_dir=base_dir))


def consent_mode(config: ProxyConfig) -> tuple[str, str] | None:
    """(consent_cookie, consent_value) when consent mode is on (SPEC §11), else None."""
    return (config.consent_cookie, config.consent_value) if config.consent_cookie else None


def source_of(config: ProxyConfig, name: str) -> str:
    """Where a setting's value came from, as a user would look for it."""
    source = config._sources.get(name)
    return _where(source, name) if source else "default"


def _bad(config: ProxyConfig, name: str, problem: str) -> ConfigError:
    """'<source>: setting <name> <problem>' (a problem starting with ':' follows the name directly)."""
    joiner = "" if problem.startswith(":") else " "
    return ConfigError(f"{source_of(config, name)}: setting {name!r}{joiner}{problem}")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _port_problem(port: int | None) -> str | None:
    if port is None or not 1 <= port <= 65535:
        return "the port must be 1-65535"
    return None


def _check_origin(config: ProxyConfig) -> None:
    origin = config.origin
    if not origin.startswith(("http://", "https://")):
        raise _bad(config, "origin", f": {origin!r} must start with http:// or https://, e.g. http://127.0.0.1:3000")
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        raise _bad(config, "origin", f": {origin!r} has a port that is not 1-65535") from None
    if not parts.hostname:
        raise _bad(config, "origin", f": {origin!r} has no host, e.g. http://127.0.0.1:3000")
    if port is not None and _port_problem(port):
        raise _bad(config, "origin", f": {origin!r} has a port that is not 1-65535")


def _check_url(config: ProxyConfig, name: str, schemes: tuple[str, ...], forms: str) -> None:
    value: str = getattr(config, name)
    if not value.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        raise _bad(config, name, f": {value!r} is not {forms}")
    try:
        port = urlsplit(value).port
    except ValueError:
        port = 0
    if port is not None and _port_problem(port):
        raise _bad(config, name, f": {value!r} has a port that is not 1-65535")


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"\.?(?:{_LABEL}\.)*{_LABEL}")
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")


def validate(config: ProxyConfig) -> ProxyConfig:
    """Check every setting; a ConfigError names the setting and where its value came from."""
    from edgeproxy.store.base import state_url_problem

    if not config.origin:
        raise ConfigError("setting 'origin' is required: --origin URL, EDGEPROXY_ORIGIN or origin = '...' in the file")
    _check_origin(config)
    if config.admin_url or config.region:
        if config.rules:
            raise ConfigError(
                f"give either 'rules' ({source_of(config, 'rules')}) or 'admin_url'/'region' (sync), not both"
            )
        if not config.project_uid:
            raise ConfigError("setting 'project_uid' is required to sync from Admin")
        if not config.authtoken and not config.oauth_token:
            raise ConfigError("sync needs credentials: EDGEPROXY_AUTHTOKEN or EDGEPROXY_OAUTH_TOKEN (or the flags)")
        if config.admin_url:
            _check_url(config, "admin_url", ("http", "https"), "an http:// or https:// URL")
    elif not config.rules:
        raise ConfigError(
            "setting 'rules' is required: --rules PATH, EDGEPROXY_RULES or rules = '...' in the file "
            "(or sync from Admin with --admin-url/--region and --project-uid)"
        )
    host, sep, port = config.listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise _bad(config, "listen", f": {config.listen!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    if _port_problem(int(port)):
        raise _bad(config, "listen", f": {config.listen!r} has a port that is not 1-65535")
    for net in config.trusted_proxies:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _bad(config, "trusted_proxies", f": {net!r} is not an address or CIDR") from None
    for name in ("ops_prefix", "edge_api_prefix"):
        prefix = getattr(config, name)
        if not prefix.startswith("/") or not prefix.endswith("/") or prefix == "/":
            raise _bad(config, name, f": {prefix!r} must start and end with '/' and not be '/'")
    if config.ops_prefix.lower().startswith(
        config.edge_api_prefix.lower()
    ) or config.edge_api_prefix.lower().startswith(config.ops_prefix.lower()):
        raise ConfigError("settings 'ops_prefix' and 'edge_api_prefix' must not overlap")
    for name in ("max_body_bytes", "max_events_per_request", "max_attributes_per_user", "max_attribute_value_bytes",
                 "max_users", "pool_size", "max_header_size", "cache_max_bytes",
                 "cache_max_object_bytes", "forward_outbox_max", "events_buffer_max"):  # fmt: skip
        if getattr(config, name) <= 0:
            raise _bad(config, name, f"must be > 0 (got {_shown(getattr(config, name))})")
    if config.cache_remembered_hits < 0:
        raise _bad(config, "cache_remembered_hits", f"must be >= 0 (got {_shown(config.cache_remembered_hits)})")
    for name in ("connect_timeout", "read_timeout", "sync_interval", "sync_timeout", "attribute_ttl_days",
                 "forward_timeout"):  # fmt: skip
        if not getattr(config, name) > 0:  # also NaN
            unit = "days" if name.endswith("days") else "seconds"
            raise _bad(config, name, f"must be > 0 {unit} (got {_shown(getattr(config, name))})")
    if not config.retention_days >= 0:
        raise _bad(config, "retention_days", f"must be >= 0 days (0 = keep; got {_shown(config.retention_days)})")
    if not config.cache_default_ttl >= 0:
        raise _bad(config, "cache_default_ttl", f"must be >= 0 seconds (got {_shown(config.cache_default_ttl)})")
    if not config.cache_soft_purge_grace >= 0:
        raise _bad(config, "cache_soft_purge_grace",
                   f"must be >= 0 seconds (got {_shown(config.cache_soft_purge_grace)})")  # fmt: skip
    if config.purge_on_publish not in ("hard", "soft"):
        raise _bad(config, "purge_on_publish", f": {config.purge_on_publish!r} is not hard or soft")
    for param in config.cache_ignored_query_params:
        problem = query_pattern_problem(param)
        if problem:
            raise _bad(config, "cache_ignored_query_params", f": {param!r} {problem}")
    if config.impressions not in ("origin", "proxy", "off"):
        raise _bad(config, "impressions", f": {config.impressions!r} is not origin, proxy or off")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise _bad(config, "log_level", f": {config.log_level!r} is not debug, info, warning or error")
    if config.workers < 1:
        raise _bad(config, "workers", f"must be >= 1 (got {config.workers})")
    if config.cda_variant_limit < 0:
        raise _bad(config, "cda_variant_limit", f"must be >= 0 (0 = all; got {config.cda_variant_limit})")
    problem = state_url_problem(config.state)
    if problem:
        raise _bad(config, "state", f": {problem}")
    if config.events:
        from edgeproxy.store.events_url import events_url_problem

        events_problem = events_url_problem(config.events)
        if events_problem:
            raise _bad(config, "events", f": {events_problem}")
        if not config.state.startswith(("redis://", "rediss://", "unix://")):
            why = (": an event store is for a fleet on Redis state (state = redis://...): events reach it through a "
                   "Redis stream that every instance drains. With SQLite state they stay in the SQLite file "
                   f"({source_of(config, 'state')}); leave `events` empty, or use Redis state")  # fmt: skip
            raise _bad(config, "events", why)
    if config.cache_store != "memory":
        _check_url(config, "cache_store", ("redis", "rediss", "unix"), "'memory' or a redis://host:port/db URL")
    if config.fleet_redis:
        _check_url(config, "fleet_redis", ("redis", "rediss", "unix"), "a redis://host:port/db URL")
    if config.cookie_domain and not _DOMAIN.fullmatch(config.cookie_domain):
        raise _bad(config, "cookie_domain", f": {config.cookie_domain!r} is not a domain name such as example.com")
    if config.consent_cookie and not _COOKIE_NAME.fullmatch(config.consent_cookie):
        raise _bad(config, "consent_cookie", f": {config.consent_cookie!r} is not a cookie name (RFC 6265 token)")
    if config.consent_value and not _COOKIE_VALUE.fullmatch(config.consent_value):
        raise _bad(config, "consent_value", f": {config.consent_value!r} is not a cookie value (RFC 6265)")
    if config.consent_value and not config.consent_cookie:
        raise _bad(config, "consent_value", "needs consent_cookie: name the cookie whose value it is")
    if config.forward_edge_api:
        from edgeproxy.forward.items import edge_api_base

        try:
            edge_api_base(config.forward_edge_api)
        except ValueError as exc:
            raise _bad(config, "forward_edge_api", f": {exc}") from None
    if config.now:
        try:
            parse_instant(config.now)
        except ValueError as exc:
            raise _bad(config, "now", f": {exc}") from None
    return config


def query_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot name query parameters (a name, or a prefix ending in one `*`), or None."""
    if "*" in pattern[:-1]:
        return "may have '*' only at its end (a prefix, e.g. utm_*)"
    bad = sorted(set(pattern) & set("&=?#% "))
    if bad:
        held = "".join(bad)
        return f"is not a parameter name (it holds {held!r}); name parameters as they are decoded, e.g. utm_source"
    return None


def listen_address(config: ProxyConfig) -> tuple[str, int]:
    host, _, port = config.listen.rpartition(":")
    return host.strip("[]"), int(port)
