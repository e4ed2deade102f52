"""Raw HTTP/1.1 over a socket, for tests that must see exactly what is on the wire (framing, pipelining)."""

from __future__ import annotations

import socket

Exchange = tuple[str, dict[str, list[str]], bytes]  # status line, headers by lower-case name, body


def raw_exchange(port: int, data: bytes, responses: int) -> list[Exchange]:
    """Send raw request bytes on one connection; read `responses` Content-Length-framed responses."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_responses(sock, responses, bodies=not data.startswith(b"HEAD"))


def read_responses(sock: socket.socket, responses: int, *, bodies: bool = True) -> list[Exchange]:
    """Read `responses` Content-Length-framed responses (`bodies` False: answers to HEAD, headers only)."""
    out: list[Exchange] = []
    buffer = b""
    while len(out) < responses:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get("content-length", ["0"])[0]) if bodies else 0
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed in the body of response {len(out) + 1}"
            buffer += chunk
        out.append((status, headers, buffer[:length]))
        buffer = buffer[length:]
    return out
