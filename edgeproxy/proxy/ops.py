"""Ops endpoints under the reserved prefix: health (liveness), ready, status, explain (token-guarded)."""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Any

from aiohttp import web

from edgeproxy.engine.context import context_from_description
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.explain import explain
from edgeproxy.proxy.app import STATE, ProxyState, client_view
from edgeproxy.proxy.errors import error_response
from edgeproxy.proxy.personalize import identify, visitor_from_request

MAX_EXPLAIN_BODY = 256 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=2), content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def snapshot_status(state: ProxyState) -> dict[str, Any]:
    loaded = state.holder.current
    if loaded is None:
        return {"loaded": False, "lastError": state.holder.last_error}
    project = loaded.snapshot.project
    return {
        "loaded": True,
        "version": loaded.snapshot.version,
        "source": loaded.source,
        "projectUid": project.uid,
        "loadedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.loaded_at)),
        "ageSeconds": round(time.time() - loaded.loaded_at, 3),
        "experiences": len(project.experiences),
        "omittedExperiences": len(project.omitted),
        "audiences": len(project.audiences),
        "attributes": len(project.attributes),
        "events": len(project.events),
        "lastError": state.holder.last_error,
    }


def _authorized(request: web.Request, token: str) -> bool:
    given = request.headers.get("X-Edgeproxy-Token", "")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


async def ops_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    accept = request.headers.get("Accept")
    name = request.path[len(state.config.ops_prefix) :].strip("/").lower()
    if name == "health":
        return _json({"status": "ok"})
    if name == "ready":
        ready = state.holder.current is not None
        return _json({"ready": ready, "snapshot": snapshot_status(state)}, status=200 if ready else 503)
    if name == "status":
        c = state.counters
        return _json({
            "snapshot": snapshot_status(state),
            "sync": state.poller.status.to_dict() if state.poller else None,
            "origin": state.config.origin,
            "uptimeSeconds": round(time.time() - c.started, 3),
            "requests": {"total": c.requests, "personalized": c.personalized, "passedThrough": c.passed_through,
                         "websockets": c.websockets, "originErrors": c.origin_errors,
                         "storeErrors": c.store_errors, "edgeApi": c.edge_api},
        })  # fmt: skip
    if name == "sync":
        return await _sync(request, state)
    if name == "explain":
        # Off unless a token is configured; a wrong token looks the same as "off" (no oracle).
        if not _authorized(request, state.config.ops_token):
            return error_response(404, "not_found", "No such endpoint.", accept)
        return await _explain(request, state)
    return error_response(404, "not_found", f"No ops endpoint {name!r}; try health, ready, status.", accept)


async def _sync(request: web.Request, state: ProxyState) -> web.Response:
    """Webhook (Contentstack webhooks, Automate, CI): refresh the snapshot now and say what happened."""
    token = state.config.webhook_token or state.config.ops_token
    if request.method != "POST" or not _authorized(request, token):
        return error_response(404, "not_found", "No such endpoint.", request.headers.get("Accept"))
    if state.poller is None:
        return _json({"error": "no_source", "message": "this instance has no snapshot source to refresh"}, 409)
    await request.content.read(MAX_EXPLAIN_BODY)  # the webhook payload itself is not needed
    outcome = await state.poller.refresh("webhook")
    return _json(outcome, status=200 if outcome["result"] != "rejected" else 502)


async def _explain(request: web.Request, state: ProxyState) -> web.Response:
    loaded = state.holder.current
    if loaded is None:
        return _json({"error": "not_ready", "message": "no snapshot loaded yet"}, status=503)
    snapshot = loaded.snapshot
    if request.method == "POST":
        # A request description (SPEC §9) in the body: explain that visitor.
        body = await request.content.read(MAX_EXPLAIN_BODY + 1)
        if len(body) > MAX_EXPLAIN_BODY:
            return _json({"error": "too_large", "message": f"body over {MAX_EXPLAIN_BODY} bytes"}, status=413)
        try:
            description = json.loads(body)
            described = context_from_description(
                description, clock=time.time, new_uid=lambda: str(uuid.uuid4()),
                classifier=state.classifier, geo_lookup=state.geo_lookup,
            )  # fmt: skip
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _json({"error": "invalid_json", "message": f"body is not JSON: {exc}"}, status=400)
        except RequestDescriptionError as exc:
            return _json({"error": "invalid_request", "field": exc.field, "message": str(exc)}, status=400)
        context, tags = described.context, described.tags
    else:
        # GET: explain the calling visitor (cookies, UA, IP) for ?path= (default /) and optional ?tags=a,b.
        path = request.query.get("path", "/")
        route = state.routes.decide(path)
        where = client_view(request, state)
        identity = identify(request.headers)
        stored = None
        if not identity.is_new and snapshot.reads_custom_attributes:
            stored = await state.stored_attributes(snapshot.project.uid, identity.user_uid)
        # The same view of the visitor as the page itself gets (trusted X-Forwarded-*, stored attributes).
        visitor = visitor_from_request(
            request.headers, page_url=f"{where.proto}://{where.host}{path}", client_ip=where.client_ip,
            secure=where.proto == "https", trust_geo_headers=where.trusted, geo_lookup=state.geo_lookup,
            classifier=state.classifier, identity=identity, stored=stored,
        )  # fmt: skip
        context = visitor.context
        tags = tuple(t for t in request.query.get("tags", "").split(",") if t) or route.tags
    manifest = snapshot.decide(context, tags)
    return _json({"manifest": manifest.to_dict(), "explanation": explain(snapshot, context, tags)})
