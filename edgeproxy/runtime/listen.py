"""The listening address: bound before anything else, so that a busy port fails a start at once.

Used by `serve` (each process binds its own sockets) and by the `--workers` supervisor (which holds the port
while its workers start).
"""

from __future__ import annotations

import socket
from typing import Any


class ListenError(OSError):
    """The listening address cannot be bound (port busy, no such address, no permission)."""


def bind_sockets(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Bind (without listening) every address `host` resolves to, as asyncio's create_server would; ListenError
    when one cannot be bound. Binding first lets a busy port fail the start before any sync or store work, and a
    bound socket that does not listen yet gets no connections (with SO_REUSEPORT the kernel only hands
    connections to listening sockets), so a worker that fails to load never takes a share of them."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sockets
