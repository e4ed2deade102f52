"""Header rules of a reverse proxy: hop-by-hop removal (RFC 9110 §7.6.1) and X-Forwarded-* / Forwarded trust."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip

# Headers the proxy owns on the way to the origin; a visitor must not be able to set them (contract §7).
UPSTREAM_OWNED = frozenset(
    {"x-cs-variant-uid", "x-cs-personalize-variants", "x-cs-personalize-user-uid", "x-edgeproxy-snapshot",
     "x-edgeproxy-explain"}
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
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in removed:
            out.add(name, value)
    return out


class TrustedProxies:
    """Which peers may tell us the client address, scheme, host and geo (like aiohttp-remotes' XForwarded)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(net, strict=False) for net in networks)
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str | None) -> bool:
        if not address or not self._networks:
            return False
        found = self._memo.get(address)
        if found is None:
            try:
                ip = ipaddress.ip_address(address)
                found = any(ip in net for net in self._networks)
            except ValueError:
                found = False
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[address] = found
        return found

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """Walk X-Forwarded-For from the right while hops are trusted; the first untrusted hop is the client."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return _strip_port(hop)
        return _strip_port(hops[0]) if hops else peer

    def forwarded(
        self, peer: str | None, forwarded_for: list[str], protos: list[str], hosts: list[str]
    ) -> tuple[str | None, str | None, str | None] | None:
        """What a trusted peer's X-Forwarded-For/-Proto/-Host say about the client: (address, proto, host), the
        proto and host taken from the same hop that recorded the address (as aiohttp-remotes does): walking
        X-Forwarded-For from the right while hops are trusted, the first untrusted hop is the client, and the
        proxy that wrote it appended the proto and host at the same distance from the right. None when it is
        ambiguous or invalid: a header repeated on several lines, a walked hop that is not an IP address, a proto
        other than http/https, a host that is not `host[:port]`. (None, None, None) parts are not believed."""
        if len(forwarded_for) > 1 or len(protos) > 1 or len(hosts) > 1:
            return None  # repeated lines: which one did our trusted peer write?
        client = peer
        depth = 1  # the peer itself recorded its client when there is no X-Forwarded-For
        if forwarded_for:
            hops = [hop.strip() for hop in forwarded_for[0].split(",")]
            count = len(hops)
            for index in range(count - 1, -1, -1):
                address = _address(hops[index])
                if address is None:
                    return None
                client = address
                depth = count - index
                if not self.trusts(address):
                    break
        proto = host = None
        if protos:
            items = protos[0].split(",")
            if len(items) >= depth:
                proto = items[-depth].strip().lower()
                if proto not in ("http", "https"):
                    return None
        if hosts:
            items = hosts[0].split(",")
            if len(items) >= depth:
                host = items[-depth].strip()
                if not host or _HOST(host) is None:
                    return None
        return client, proto, host


_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{1,5})?").fullmatch


def _address(hop: str) -> str | None:
    """An X-Forwarded-For element as an IP address (a port, IPv6 brackets dropped), or None when it is not one."""
    text = _strip_port(hop)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [v6]:port
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:  # v4:port
        return hop.split(":", 1)[0]
    return hop
