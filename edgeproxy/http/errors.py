"""Short, clear error responses: HTML for browsers, JSON for API clients (by `Accept`)."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from edgeproxy.http.gate import Refusal

_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           408: "Request timeout", 413: "Payload too large", 414: "URI too long", 415: "Unsupported media type",
           417: "Expectation failed", 431: "Request header fields too large", 502: "Bad gateway",
           503: "Service unavailable", 504: "Gateway timeout"}  # fmt: skip


def wants_json(accept: str | None) -> bool:
    if not accept:
        return False
    accept = accept.lower()
    return "json" in accept and "text/html" not in accept


def error_response(status: int, code: str, message: str, accept: str | None) -> web.Response:
    title = _TITLES.get(status, "Error")
    if wants_json(accept):
        return web.Response(
            status=status,
            text=json.dumps({"error": code, "message": message}),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
    body = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {html.escape(title)}</title>"
        "<style>body{font:16px system-ui,sans-serif;margin:4rem auto;max-width:36rem;color:#222}"
        f"code{{color:#555}}</style></head><body><h1>{status} {html.escape(title)}</h1><p>{html.escape(message)}</p>"
        f"<p><code>{html.escape(code)}</code> · edgeproxy</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers={"Cache-Control": "no-store"})


def refusal_response(refusal: Refusal, accept: str | None) -> web.Response:
    """The request gate's refusal (gate.py) as a short page or JSON."""
    return error_response(refusal.status, refusal.code, refusal.message, accept)
