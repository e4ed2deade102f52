"""Geo lookup of a client IP in a MaxMind database (.mmdb): the I/O side of the geo presets; and the warning when
request descriptions carry an IP that no database will look up."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import IO, Any

import maxminddb

from edgeproxy.engine.context import Geo
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.memo import condition_groups, experience_conditions
from edgeproxy.engine.model import iter_rules


class MaxMindGeo:
    """COUNTRY (ISO alpha-2), REGION (first subdivision's ISO code), CITY (English name) from a City db."""

    def __init__(self, path: str | Path, cache_size: int = 65_536) -> None:
        self._cache: dict[str, Geo | None] = {}
        self._cache_size = cache_size
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ValueError(
                f"{path}: cannot open MaxMind database: {exc}; pass a GeoIP2/GeoLite2 City .mmdb file"
            ) from None
        self.path = str(path)

    def lookup(self, ip: str) -> Geo | None:
        try:
            return self._cache[ip]
        except KeyError:
            pass
        geo = self._lookup(ip)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # bounded; hot addresses come straight back
        self._cache[ip] = geo
        return geo

    def _lookup(self, ip: str) -> Geo | None:
        try:
            record: Any = self._reader.get(ip)
        except ValueError:  # not an IP address
            return None
        if not isinstance(record, dict):
            return None
        country = (record.get("country") or record.get("registered_country") or {}).get("iso_code")
        subdivisions = record.get("subdivisions") or []
        region = subdivisions[0].get("iso_code") if subdivisions else None
        city = ((record.get("city") or {}).get("names") or {}).get("en")
        return Geo(country=country, region=region, city=city)

    def close(self) -> None:
        self._reader.close()


GEO_PRESETS = frozenset({"COUNTRY", "REGION", "CITY"})
IP_WITHOUT_GEOIP = (
    "edgeproxy: warning: request descriptions carry 'ip' but no --geoip was given: COUNTRY/REGION/CITY come only "
    "from 'geo' fields; pass --geoip tests/data/GeoIP2-City-Test.mmdb for the example"
)


def reads_geo(snapshot: CompiledSnapshot) -> bool:
    """Whether any live experience's rules read COUNTRY, REGION or CITY."""
    return any(
        rule.attribute_kind == "preset" and rule.attribute in GEO_PRESETS
        for ce in snapshot.experiences
        for condition in experience_conditions(ce)
        for group in condition_groups(condition, snapshot)
        for rule in iter_rules(group)
    )


def ip_left_unused(description: Any) -> bool:
    """A description whose `ip` would be looked up with --geoip: an ip and a geo that lacks a field."""
    if not isinstance(description, dict) or not description.get("ip"):
        return False
    geo = description.get("geo")
    return not (isinstance(geo, dict) and all(geo.get(name) for name in ("country", "region", "city")))


class IpWarning:
    """Warns once on stderr when descriptions carry an `ip` that no --geoip database will look up."""

    def __init__(self, snapshot: CompiledSnapshot, geoip: str | None, stream: IO[str] | None = None) -> None:
        self.pending = not geoip and reads_geo(snapshot)
        self.stream = stream

    def line(self, line: str) -> None:
        if self.pending and '"ip"' in line:
            with contextlib.suppress(ValueError):
                self.description(json.loads(line))

    def description(self, description: Any) -> None:
        if self.pending and ip_left_unused(description):
            self.pending = False
            print(IP_WITHOUT_GEOIP, file=self.stream or sys.stderr, flush=True)
