"""Geo lookup of a client IP in a MaxMind database (.mmdb): the I/O side of the geo presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import maxminddb

from edgeproxy.engine.context import Geo


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
