"""Which ops endpoint a path names, and whether a request may use a token-guarded one.

Shared by the ops endpoints and the dashboard (which is one of them, served from its own module), so that both
name a path and refuse a request the same way.
"""

from __future__ import annotations

from aiohttp import web

from edgeproxy.http.errors import error_response
from edgeproxy.http.gate import normalized_path, same_token
from edgeproxy.runtime.config import ProxyConfig

# guard -> the settings whose token it asks for, as said to a user when the feature is off
_TOKEN_SETTINGS = {"ops": "ops_token", "webhook": "webhook_token or ops_token", "purge": "purge_token or ops_token"}


def endpoint_name(path: str, prefix: str) -> str:
    """The endpoint a path under the ops prefix names, after the same decoding, dot-segment removal and
    case-folding as the dispatch that sent it here (`/a/../_edgeproxy/Status` is `status`)."""
    prefix = prefix.lower()
    bare = prefix.rstrip("/")
    for candidate in (normalized_path(path).lower(), path.lower()):
        if candidate.startswith(prefix):
            return candidate[len(prefix) :].strip("/")
        if candidate.rstrip("/") == bare:
            return ""
    return path.lower().strip("/")  # matched on its raw (still encoded) spelling: no endpoint of ours


def token_for(config: ProxyConfig, guard: str) -> str:
    """The token a guard asks for: "ops", "webhook" (webhook_token, else ops_token), "purge" (purge_token,
    else ops_token). Empty when none is configured: the guarded feature is off."""
    if guard == "webhook":
        return config.webhook_token or config.ops_token
    if guard == "purge":
        return config.purge_token or config.ops_token
    return config.ops_token


def _authorized(request: web.BaseRequest, token: str) -> bool:
    given = request.headers.get("X-Edgeproxy-Token", "")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return same_token(given, token)


def refusal(
    request: web.BaseRequest, name: str, token: str, guard: str, *, query_token: bool = False
) -> web.Response | None:
    """None when the request may use a guarded endpoint; else 403 (the endpoint is off: no token configured)
    or 401 with `WWW-Authenticate: Bearer` (a missing or wrong token). `query_token`: `?token=` counts too
    (the dashboard, so that a browser can open it)."""
    accept = request.headers.get("Accept")
    if not token:
        setting = _TOKEN_SETTINGS.get(guard, "ops_token")
        return error_response(403, "forbidden", f"{name} is off: set {setting} to use it.", accept)
    if _authorized(request, token):
        return None
    given = request.query.get("token", "") if query_token else ""
    if given and same_token(given, token):
        return None
    response = error_response(401, "unauthorized", f"{name} needs Authorization: Bearer <token>.", accept)
    response.headers["WWW-Authenticate"] = 'Bearer realm="edgeproxy"'
    return response
