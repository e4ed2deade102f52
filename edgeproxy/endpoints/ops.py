"""Ops endpoints under the reserved prefix: health (liveness), ready, status, metrics; explain, dashboard, sync,
purge and the Contentstack webhook (token-guarded).

Statuses: 404 for a path that names no endpoint, 405 (with `Allow`) for a method the endpoint does not answer,
403 for a guarded endpoint whose token is not configured (the feature is off), 401 (with
`WWW-Authenticate: Bearer`) for a missing or wrong token.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

from aiohttp import web
from yarl import URL

from edgeproxy.endpoints.dashboard import dashboard_handler
from edgeproxy.endpoints.guard import endpoint_name, refusal, token_for
from edgeproxy.endpoints.previews import preview_links_handler
from edgeproxy.engine.context import ClientJsonError, context_from_description, load_client_json, valid_user_uid
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.explain import explain
from edgeproxy.http.access_log import LOGGED_PATH_KEY
from edgeproxy.http.errors import error_response
from edgeproxy.http.executor import decision_for, peer_address
from edgeproxy.http.gate import normalized_path
from edgeproxy.runtime.state import ProxyState
from edgeproxy.runtime.users import delete_user, export_user
from edgeproxy.store.base import StoreError

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
        "ageSeconds": round(state.clock() - loaded.loaded_at, 3),
        "experiences": len(project.experiences),
        "omittedExperiences": len(project.omitted),
        "draftExperiences": sum(1 for e in project.drafts if e.draft),  # what a --draft preview shows
        "draftProblems": list(project.draft_problems),  # DRAFT versions left out of previews, and why
        "audiences": len(project.audiences),
        "attributes": len(project.attributes),
        "events": len(project.events),
        "lastError": state.holder.last_error,
    }


# name -> (methods, whose token guards it: None = public, "ops", "webhook" = webhook_token else ops_token,
# "purge" = purge_token else ops_token). Anything else under the prefix is 404.
ENDPOINTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "health": (("GET", "HEAD"), None),
    "ready": (("GET", "HEAD"), None),
    "status": (("GET", "HEAD"), None),
    "metrics": (("GET", "HEAD"), None),
    "explain": (("GET", "HEAD", "POST"), "ops"),
    "dashboard": (("GET", "HEAD"), "ops"),
    "dashboard/data.json": (("GET", "HEAD"), "ops"),
    "sync": (("POST",), "webhook"),
    "purge": (("POST",), "purge"),
    "webhooks/contentstack": (("POST",), "purge"),
    "preview-links": (("POST",), "ops"),
}


async def ops_handler(request: web.BaseRequest, state: ProxyState) -> web.StreamResponse:
    accept = request.headers.get("Accept")
    name = endpoint_name(request.path, state.config.ops_prefix)
    if name.startswith(USERS):
        return await _users(request, state, name[len(USERS) :], accept)
    endpoint = ENDPOINTS.get(name)
    if endpoint is None:
        known = ", ".join(ENDPOINTS)
        return error_response(404, "not_found", f"No ops endpoint {name!r}; the endpoints are {known}.", accept)
    methods, guard = endpoint
    if request.method not in methods:
        response = error_response(405, "method_not_allowed", f"{name} answers {', '.join(methods)} only.", accept)
        response.headers["Allow"] = ", ".join(methods)
        return response
    if guard is not None:
        token = token_for(state.config, guard)
        refused = refusal(request, name, token, guard, query_token=name.startswith("dashboard"))
        if refused is not None:
            return refused
    if name == "metrics":
        return web.Response(body=state.metrics.exposition(), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8", "Cache-Control": "no-store"})  # fmt: skip
    if name == "health":
        return _json({"status": "ok"})
    if name == "ready":
        ready = state.holder.current is not None
        return _json({"ready": ready, "snapshot": snapshot_status(state)}, status=200 if ready else 503)
    if name == "status":
        return _json({
            "snapshot": snapshot_status(state),
            "sync": state.poller.status.to_dict() if state.poller else None,
            "cache": {**state.metrics.cache_counts(), **await state.cache.stats()} if state.cache else None,
            "fleet": None if state.fleet is None else {"channel": state.fleet.url, "connected": state.fleet.connected,
                                                       "swaps": state.fleet.swaps, "lastError": state.fleet.last_error},
            "forwarding": None if state.forwarder is None else state.forwarder.status(),
            "events": None if state.events is None else state.events.status(),
            "origin": state.config.origin,
            "uptimeSeconds": round(state.clock() - state.metrics.started, 3),
            "requests": state.metrics.request_counts(),
        })  # fmt: skip
    if name == "sync":
        return await _sync(request, state)
    if name == "purge":
        return await _purge(request, state)
    if name == "webhooks/contentstack":
        return await _contentstack_webhook(request, state)
    if name.startswith("dashboard"):
        return await dashboard_handler(request, state)
    if name == "preview-links":
        return await preview_links_handler(request, state)
    return await _explain(request, state)


USERS = "users/"  # {ops_prefix}users/{uid}: a data subject request (SPEC §11)


def _uid_as_sent(path: str, prefix: str, folded: str) -> str:
    """The uid of `{prefix}users/{uid}` with its case as sent: the endpoint name is case-folded, a user uid is
    not (`Ann` and `ann` are two users). The same candidates and stripping as `endpoint_name`."""
    for candidate in (normalized_path(path), path):
        if candidate.lower().startswith(prefix.lower()):
            name = candidate[len(prefix) :].strip("/")
            if name.lower().startswith(USERS) and name[len(USERS) :].lower() == folded:
                return name[len(USERS) :]
    return folded


async def _users(request: web.BaseRequest, state: ProxyState, uid: str, accept: str | None) -> web.StreamResponse:
    """GET: everything stored for the user, as one JSON document; DELETE: all of it removed (ops token)."""
    request[LOGGED_PATH_KEY] = f"{state.config.ops_prefix}users/[redacted]"  # the uid is personal data
    uid = _uid_as_sent(request.path, state.config.ops_prefix, uid)
    if request.method not in ("GET", "HEAD", "DELETE"):
        response = error_response(405, "method_not_allowed", "users/{uid} answers GET and DELETE only.", accept)
        response.headers["Allow"] = "GET, HEAD, DELETE"
        return response
    refused = refusal(request, "users", token_for(state.config, "ops"), "ops")
    if refused is not None:
        return refused
    if not valid_user_uid(uid):
        return error_response(400, "invalid_user_uid", "The path names no valid user uid: users/{uid} with 1-256 "
                              "characters of RFC 6265 cookie-octet (percent-encode the rest).", accept)  # fmt: skip
    outbox = state.forwarder.outbox if state.forwarder is not None else None
    events = state.events if state.events is not None and state.events.sink is not None else None
    try:
        if request.method == "DELETE":
            if state.behaviour is not None:  # nothing of theirs is kept in memory or written behind
                state.behaviour.forget(uid)
            deleted = await delete_user(state.store, uid, "ops API", state.planner.tombstones, outbox, events)
            return _json({"userUid": uid, "deleted": deleted})
        return _json(await export_user(state.store, uid, outbox, events))
    except StoreError as exc:
        state.metrics.store_errors += 1
        return error_response(503, "store_unavailable", f"The state store did not answer: {exc}", accept)


async def _sync(request: web.BaseRequest, state: ProxyState) -> web.Response:
    """Webhook (Contentstack webhooks, Automate, CI): refresh the snapshot now and say what happened."""
    supervisor = os.environ.get("EDGEPROXY_SUPERVISOR_PID")
    if supervisor:
        # One of several workers: the supervisor syncs for all of them; they pick the result up within a second.
        os.kill(int(supervisor), signal.SIGHUP)
        await request.content.read(MAX_EXPLAIN_BODY)
        return _json({"result": "requested", "message": "the supervisor syncs now; workers reload within 1 s"}, 202)
    if state.poller is None:
        return _json({"error": "no_source", "message": "this instance has no snapshot source to refresh"}, 409)
    await request.content.read(MAX_EXPLAIN_BODY)  # the webhook payload itself is not needed
    outcome = await state.poller.refresh("webhook")
    return _json(outcome, status=200 if outcome["result"] != "rejected" else 502)


async def _purge_body(request: web.BaseRequest, state: ProxyState) -> tuple[Any, web.Response | None]:
    if state.cache is None:
        return None, _json({"error": "cache_off", "message": "the response cache is off (cache = false)"}, 409)
    body = await request.content.read(MAX_EXPLAIN_BODY + 1)
    if len(body) > MAX_EXPLAIN_BODY:
        return None, _json({"error": "too_large", "message": f"body over {MAX_EXPLAIN_BODY} bytes"}, 413)
    try:
        return load_client_json(body or b"{}"), None
    except (ClientJsonError, UnicodeDecodeError) as exc:
        return None, _json({"error": "invalid_json", "message": f"body is not JSON: {exc}"}, 400)


def _strings(data: dict[str, Any], *names: str) -> list[str]:
    found: list[str] = []
    for name in names:
        value = data.get(name)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, str))
    return found


def _path_of(url: str) -> str:
    """A purge URL may be absolute or a path; entries are indexed by path + query."""
    if url.startswith(("http://", "https://")):
        parsed = URL(url)
        return parsed.raw_path_qs
    return url


async def _purge(request: web.BaseRequest, state: ProxyState) -> web.Response:
    """POST {"url"|"urls", "prefix"|"prefixes", "tag"|"tags", "soft"?}: drop every variant of the matching
    entries, or with "soft": true mark them stale (served STALE while one request refreshes each)."""
    data, problem = await _purge_body(request, state)
    if problem is not None:
        return problem
    if not isinstance(data, dict):
        return _json({"error": "invalid_purge", "message": 'body must be {"urls"|"prefixes"|"tags": [...]}'}, 400)
    soft = data.get("soft", False)
    if not isinstance(soft, bool):
        return _json({"error": "invalid_purge", "message": f'"soft" must be true or false (got {soft!r})'}, 400)
    paths = [_path_of(u) for u in _strings(data, "url", "urls")]
    prefixes = [_path_of(p) for p in _strings(data, "prefix", "prefixes")]
    tags = _strings(data, "tag", "tags")
    if not (paths or prefixes or tags):
        return _json({"error": "invalid_purge", "message": "name at least one url, prefix or tag"}, 400)
    assert state.cache is not None
    purged = await state.cache.purge(paths=paths, prefixes=prefixes, tags=tags,
                                     soft_at=state.clock() if soft else None)  # fmt: skip
    state.metrics.cache_events["soft_purged" if soft else "purged"] += purged
    return _json({"purged": purged, "soft": soft, "urls": paths, "prefixes": prefixes, "tags": tags})


async def _contentstack_webhook(request: web.BaseRequest, state: ProxyState) -> web.Response:
    """A Contentstack publish/unpublish webhook: purge the pages tagged with the entry (or asset) uid — the
    origin tags pages with `Surrogate-Key: <entry uid> <content type uid>`; a content type change purges the
    content type's tag (every page of that type). A publish purges as `purge_on_publish` says (hard or soft);
    an unpublish or a delete always hard: what was taken down is never served again."""
    data, problem = await _purge_body(request, state)
    if problem is not None:
        return problem
    payload = data.get("data") if isinstance(data, dict) else None
    if not isinstance(payload, dict):
        return _json({"error": "invalid_webhook", "message": "expected a Contentstack webhook body with 'data'"}, 400)
    tags = []
    module = data.get("module") if isinstance(data, dict) else None
    sections = ("content_type",) if module == "content_type" else ("entry", "asset")
    for section in sections:
        item = payload.get(section)
        if isinstance(item, dict) and isinstance(item.get("uid"), str):
            tags.append(item["uid"])
    if not tags:
        return _json({"error": "invalid_webhook", "message": "no entry, asset or content_type uid in 'data'"}, 400)
    assert state.cache is not None
    event = data.get("event")
    soft = state.config.purge_on_publish == "soft" and event not in ("unpublish", "delete")
    purged = await state.cache.purge(paths=[], prefixes=[], tags=tags, soft_at=state.clock() if soft else None)
    state.metrics.cache_events["soft_purged" if soft else "purged"] += purged
    return _json({"purged": purged, "soft": soft, "tags": tags, "event": event, "module": data.get("module")})


async def _explain(request: web.BaseRequest, state: ProxyState) -> web.Response:
    loaded = state.holder.current
    if loaded is None:
        return _json({"error": "not_ready", "message": "no snapshot loaded yet"}, status=503)
    snapshot = loaded.snapshot
    if request.method == "POST":
        # A request description (docs/contract.md §9) in the body: explain that visitor.
        body = await request.content.read(MAX_EXPLAIN_BODY + 1)
        if len(body) > MAX_EXPLAIN_BODY:
            return _json({"error": "too_large", "message": f"body over {MAX_EXPLAIN_BODY} bytes"}, status=413)
        try:
            description = load_client_json(body)  # bounded: depth, numbers (the gate's rules for client JSON)
            described = context_from_description(
                description, clock=state.clock, new_uid=lambda: str(uuid.uuid4()),
                classifier=state.planner.classifier, geo_lookup=state.planner.geo_lookup,
            )  # fmt: skip
        except (ClientJsonError, UnicodeDecodeError) as exc:
            return _json({"error": "invalid_json", "message": f"body is not JSON: {exc}"}, status=400)
        except RequestDescriptionError as exc:
            return _json({"error": "invalid_request", "field": exc.field, "message": str(exc)}, status=400)
        context, tags, forcing = described.context, described.tags, described.forcing
    else:
        # GET: explain the calling visitor (cookies, UA, IP) for ?path= (default /) and optional ?tags=a,b.
        path = request.query.get("path", "/")
        planner = state.planner
        where = planner.client(peer_address(request), request.scheme, request.host, request.headers)
        # The same view of the visitor, and the same decision, as the page itself gets.
        tags = tuple(t for t in request.query.get("tags", "").split(",") if t) or planner.routes.decide(path).tags
        decision = await decision_for(request, state, loaded, where, page_url=f"{where.proto}://{where.host}{path}",
                                      tags=tags)  # fmt: skip
        context, forcing = decision.ctx, None
    if forcing is None:
        manifest = loaded.decider.decide(context, tags)
    else:  # a description's preview (SPEC §10): forced variants, drafts, its time
        manifest = snapshot.decide_forced(context, tags, forcing)
    return _json({"manifest": manifest.to_dict(), "explanation": explain(snapshot, context, tags, forcing)})
