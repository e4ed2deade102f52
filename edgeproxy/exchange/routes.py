"""Which paths are personalized, and with which experience tags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate

from edgeproxy.runtime.config import ProxyConfig


@dataclass(frozen=True, slots=True)
class RouteDecision:
    personalize: bool
    tags: tuple[str, ...] | None
    cache: bool = True


_PASS = RouteDecision(personalize=False, tags=None)
_ALL = RouteDecision(personalize=True, tags=None)


class RouteTable:
    """Routes from the config, globs compiled once. First matching `[[routes]]` entry wins, then skip rules."""

    def __init__(self, config: ProxyConfig) -> None:
        self._routes = tuple(
            (re.compile(translate(r.path)), RouteDecision(personalize=r.personalize, tags=r.tags, cache=r.cache))
            for r in config.routes
        )
        self._skip = tuple(re.compile(translate(glob)) for glob in config.skip_paths)
        self._extensions = frozenset(ext.lower() if ext.startswith(".") else f".{ext.lower()}"
                                     for ext in config.static_extensions)  # fmt: skip
        # Paths repeat: each is matched once (bounded, cleared when full; paths come from clients).
        self._decided: dict[str, RouteDecision] = {}

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
                return _PASS
        last = path.rsplit("/", 1)[-1]
        dot = last.rfind(".")
        if dot > 0 and last[dot:].lower() in self._extensions:
            return _PASS
        return _ALL
