"""Who is asking, and for which URL: X-Forwarded-* believed only from configured proxies (aiohttp-remotes' rule).

The one place the client address, scheme and host of a request are decided, for every door (pages, the hit lane,
the Edge API, ops explain).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from edgeproxy.http.gate import Refusal


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


@dataclass(slots=True)  # one per request: not frozen, whose __init__ costs a setattr call per field
class ClientView:
    """Who is asking and for which URL, believing X-Forwarded-* only from trusted proxies."""

    peer: str | None
    trusted: bool
    forwarded_for: str | None  # the incoming X-Forwarded-For, read only from a trusted peer
    client_ip: str | None
    proto: str
    host: str
    refusal: Refusal | None = None  # X-Forwarded-* from a trusted peer that are ambiguous: refuse the request


AMBIGUOUS_FORWARDING = Refusal(
    400, "ambiguous_forwarding",
    "X-Forwarded-For/-Proto/-Host from the trusted proxy are repeated, or not a valid address, scheme or host.",
)  # fmt: skip


def view_of_client(
    trusted: TrustedProxies, peer: str | None, scheme: str, host: str, headers: CIMultiDictProxy[str]
) -> ClientView:
    """`host`: the request's Host header."""
    if not trusted.trusts(peer):  # the common case: nothing forwarded is believed
        return ClientView(peer, False, None, peer, scheme, host)
    getall = headers.getall
    xff = getall("X-Forwarded-For", [])
    found = trusted.forwarded(peer, xff, getall("X-Forwarded-Proto", []), getall("X-Forwarded-Host", []))
    if found is None:  # ambiguous or invalid: refused (`forwarding_refused`), believed in no part
        return ClientView(peer, True, None, peer, scheme, host, AMBIGUOUS_FORWARDING)
    client_ip, proto, forwarded_host = found
    return ClientView(peer, True, xff[0] if xff else None, client_ip, proto or scheme, forwarded_host or host)
