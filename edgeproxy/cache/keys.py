"""What a cache key is made of besides the variant set: the URL as the cache sees it (tracking parameters left
out, parameters optionally sorted) and, for a URL whose responses carry `Vary`, the key of one variant.

The origin always gets the URL as it was sent; only the key is normalised. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import unquote_plus

# Between a URL's key and the request header values of one of its Vary variants: never in a key (request
# targets and header values cannot hold a line feed).
VARY_SEPARATOR = "\n"


class CacheQuery:
    """The request target as the cache key holds it: query parameters named in `ignored` (a trailing `*` is a
    prefix) left out, empty parameters dropped, the rest sorted by name when `sort` (stably: repeated names keep
    their order, which some applications read as a list). Names are compared decoded (`utm%5Fsource` is
    `utm_source`); the parameters kept are kept byte for byte."""

    __slots__ = ("_exact", "_prefixes", "_seen", "_sort", "active")

    MEMO = 4096  # targets remembered (they repeat); cleared when full, as ids unique per click pass through

    def __init__(self, ignored: Iterable[str] = (), *, sort: bool = False) -> None:
        patterns = tuple(ignored)
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
        self._sort = sort
        self.active = bool(patterns) or sort
        self._seen: dict[str, str] = {}

    def target(self, path_qs: str) -> str:
        """`path_qs` (origin-form: path and query) as the cache key holds it."""
        if not self.active or "?" not in path_qs:
            return path_qs
        found = self._seen.get(path_qs)
        if found is None:
            if len(self._seen) >= self.MEMO:
                self._seen.clear()
            found = self._seen[path_qs] = self._normalised(path_qs)
        return found

    def _normalised(self, path_qs: str) -> str:
        path, _, query = path_qs.partition("?")
        kept: list[tuple[str, str]] = []
        for part in query.split("&"):
            if not part:
                continue
            name = part.partition("=")[0]
            if "%" in name or "+" in name:
                name = unquote_plus(name)
            if name in self._exact or (self._prefixes and name.startswith(self._prefixes)):
                continue
            kept.append((name, part))
        if self._sort:
            kept.sort(key=lambda item: item[0])
        if not kept:
            return path
        return f"{path}?{'&'.join(part for _, part in kept)}"


def variant_key(key: str, vary: Iterable[tuple[str, str]]) -> str:
    """The key of the variant of `key`'s URL stored for these (header name, value) pairs (RFC 9111 §4.1)."""
    return key + VARY_SEPARATOR + VARY_SEPARATOR.join(f"{name}:{value}" for name, value in vary)


def request_variant_key(key: str, names: tuple[str, ...], value: Callable[[str], str | None]) -> str | None:
    """The variant key this request selects, from its `value` of each header named; None when one of them cannot
    be told from this request (the proxy rewrites it: only the upstream request can say)."""
    pairs = []
    for name in names:
        found = value(name)
        if found is None:
            return None
        pairs.append((name, found))
    return variant_key(key, pairs)


def base_key(stored_key: str) -> str:
    """The URL's key of a stored key (itself, unless it is a Vary variant's)."""
    return stored_key.partition(VARY_SEPARATOR)[0]


def variant_set_of(key: str) -> str:
    """The variant set a key was made for (see ResponseCache.key: `GET|<variant param>|...`)."""
    return key.split("|", 2)[1]
