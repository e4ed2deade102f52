"""Header rules of a reverse proxy: hop-by-hop removal (RFC 9110 §7.6.1), the headers the proxy owns upstream."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip

# Headers the proxy owns on the way to the origin; a visitor must not be able to set them (contract §7).
UPSTREAM_OWNED = frozenset(
    {"x-cs-variant-uid", "x-cs-personalize-variants", "x-cs-personalize-user-uid", "x-edgeproxy-snapshot",
     "x-edgeproxy-explain", "x-edgeproxy-preview"}
)  # fmt: skip


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1)."""
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return listed


def removal_set(*names: str) -> frozenset[str]:
    """Hop-by-hop headers plus `names`: build once, pass to `end_to_end` on every request."""
    return HOP_BY_HOP | frozenset(name.lower() for name in names)


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], removed: frozenset[str] = HOP_BY_HOP
) -> CIMultiDict[str]:
    """A copy without the `removed` names (lower-case; hop-by-hop by default) and those listed in Connection."""
    if "Connection" in headers:
        removed = removed | connection_listed(headers)
    out = headers.copy()  # in C; then the few removed names that are there (`in` ignores case)
    for name in [name for name in removed if name in out]:
        out.popall(name)
    return out


# Request headers the origin never gets as the client sent them (set by the proxy, or answered by it):
# 100-continue is answered here; an h2c upgrade is ignored (RFC 9110 §7.8), its settings header with it.
UPSTREAM_REMOVED = removal_set(*UPSTREAM_OWNED, "host", "expect", "http2-settings")
