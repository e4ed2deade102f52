"""Which paths are personalized, and with which experience tags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from urllib.parse import unquote

from edgeproxy.runtime.config import ProxyConfig


@dataclass(frozen=True, slots=True)
class RouteDecision:
    personalize: bool
    tags: tuple[str, ...] | None
    cache: bool = True
    name: str = "default"  # the label of its cache metrics: a configured route's name, else what matched


# Requests no [[routes]] entry matches, by why: a bounded set of metric labels, like the routes' own names.
DEFAULT_ROUTE = "default"
SKIPPED_ROUTE = "skip_paths"
STATIC_ROUTE = "static"
_ALL = RouteDecision(personalize=True, tags=None, name=DEFAULT_ROUTE)
_SKIPPED = RouteDecision(personalize=False, tags=None, name=SKIPPED_ROUTE)
_STATIC = RouteDecision(personalize=False, tags=None, name=STATIC_ROUTE)


class RouteTable:
    """Routes from the config, globs compiled once. First matching `[[routes]]` entry wins, then skip rules."""

    def __init__(self, config: ProxyConfig) -> None:
        self._routes = tuple(
            (re.compile(translate(r.path)),
             RouteDecision(personalize=r.personalize, tags=r.tags, cache=r.cache, name=r.name or r.path))
            for r in config.routes
        )  # fmt: skip
        self._skip = tuple(re.compile(translate(glob)) for glob in config.skip_paths)
        self._extensions = frozenset(ext.lower() if ext.startswith(".") else f".{ext.lower()}"
                                     for ext in config.static_extensions)  # fmt: skip
        # Paths repeat: each is matched once (bounded, cleared when full; paths come from clients).
        self._decided: dict[str, RouteDecision] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Every route name a request can be counted under (configured first), each once."""
        configured = tuple(decision.name for _, decision in self._routes)
        return tuple(dict.fromkeys((*configured, DEFAULT_ROUTE, SKIPPED_ROUTE, STATIC_ROUTE)))

    def name_of_target(self, path_qs: str) -> str:
        """The route name of a request target as sent (path + query, percent-encoded), without remembering it."""
        return self._match(unquote(path_qs.partition("?")[0])).name

    def decide(self, path: str) -> RouteDecision:
        decision = self._decided.get(path)
        if decision is None:
            if len(self._decided) >= 4096:
                self._decided.clear()
            decision = self._decided[path] = self._match(path)
        return decision

    def _match(self, path: str) -> RouteDecision:
        for pattern, decision in self._routes:
            if pattern.match(path):
                return decision
        for pattern in self._skip:
            if pattern.match(path):
                return _SKIPPED
        last = path.rsplit("/", 1)[-1]
        dot = last.rfind(".")
        if dot > 0 and last[dot:].lower() in self._extensions:
            return _STATIC
        return _ALL
