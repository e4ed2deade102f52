"""The emulated Personalize Edge API (contract §5): what `@contentstack/personalize-edge-sdk` calls.

    GET   {prefix}manifest[?tags[]=t]              decide with the same engine and visitor context as pages
    POST  {prefix}events                           impressions and custom events -> the event store
    PATCH {prefix}user-attributes                  upsert stored attributes
    POST  {prefix}user-attributes/actions/merge    copy source's attributes to target, source wins

Browsers call it cross-origin, so every answer carries CORS headers and preflights are answered. Bad input gets
a 4xx with `{"error", "message"}`; a store failure is a 503 (the write is reported, never silently dropped).
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web import RequestPayloadError

from edgeproxy.engine.context import (
    LIVE_ATTRIBUTES_HEADER,
    NOT_A_UID,
    PAGE_URL_HEADER,
    USER_UID_HEADER,
    ClientJsonError,
    load_client_json,
    parse_live_attributes_header,
    valid_user_uid,
)
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.forward.items import OWN_USER_AGENT, ForwardItem, attributes_item, events_items, merge_item
from edgeproxy.http.executor import decision_for, peer_address
from edgeproxy.runtime.state import ProxyState
from edgeproxy.store.base import EventRecord, EventsBufferFull, StoreError, StoreLimitError
from edgeproxy.visitor.behaviour import STATE_KEY
from edgeproxy.visitor.forwarded import ClientView
from edgeproxy.visitor.preview import PREVIEW_COOKIE, Preview, PreviewAsked, verify

log = logging.getLogger("edgeproxy.edge_api")

PROJECT_NOT_FOUND = "personalize.MANIFEST.PROJECT_NOT_FOUND"  # the SDK matches this code (sdk: edge-api.errors)
ALLOWED_HEADERS = (
    "X-Project-Uid, X-CS-Personalize-User-Uid, X-Page-Url, X-Live-Attributes, X-Lytics-Id-Field, "
    "X-Lytics-Id-Value, X-User-Agent, X-Forwarded-For, User-Agent, Content-Type"
)
MAX_ID_LENGTH = 256


class EdgeApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _cors(request: web.BaseRequest, state: ProxyState) -> dict[str, str]:
    origins = state.config.cors_origins
    origin = request.headers.get("Origin")
    headers = {"Access-Control-Expose-Headers": USER_UID_HEADER_NAME}
    if "*" in origins:
        headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in origins:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
    return headers


USER_UID_HEADER_NAME = "X-CS-Personalize-User-Uid"


def _json(
    request: web.BaseRequest, state: ProxyState, data: Any, status: int = 200, extra: dict[str, str] | None = None
) -> web.Response:
    headers = {"Cache-Control": "no-store", **_cors(request, state), **(extra or {})}
    return web.Response(status=status, text=json.dumps(data, separators=(",", ":")), content_type="application/json",
                        headers=headers)  # fmt: skip


async def edge_api_handler(request: web.BaseRequest, state: ProxyState) -> web.StreamResponse:
    prefix = state.config.edge_api_prefix
    route = request.path[len(prefix) :].strip("/") if request.path.lower().startswith(prefix.lower()) else ""
    if request.method == "OPTIONS":
        return preflight(_cors(request, state), ALLOWED_HEADERS)
    handlers = {
        ("GET", "manifest"): _manifest,
        ("POST", "events"): _events,
        ("PATCH", "user-attributes"): _patch_attributes,
        ("POST", "user-attributes/actions/merge"): _merge,
    }
    handler = handlers.get((request.method, route))
    try:
        if handler is None:
            if any(route == known for _, known in handlers):
                allowed = ", ".join(m for m, known in handlers if known == route)
                raise EdgeApiError(405, "personalize.METHOD_NOT_ALLOWED", f"{request.method} /{route}: use {allowed}")
            raise EdgeApiError(404, "personalize.NOT_FOUND", f"no Edge API endpoint /{route}; see docs/contract.md §5")
        project_uid = _project(request, state)
        return await handler(request, state, project_uid)
    except EdgeApiError as exc:
        return _json(request, state, {"error": exc.code, "message": exc.message}, status=exc.status)
    except EventsBufferFull:  # the event store is behind and the Redis buffer at its cap: refused (the store logs)
        return _json(request, state, {"error": "personalize.EVENTS_BUFFER_FULL", "message": "events not accepted: "
                                      "the event buffer is full because the event store is behind; retry later"},
                     status=503, extra={"Retry-After": "5"})  # fmt: skip
    except StoreError as exc:
        state.metrics.store_errors += 1
        log.error("%s %s: store unavailable: %s", request.method, request.path, exc)
        return _json(request, state, {"error": "personalize.STORE_UNAVAILABLE",
                                      "message": "state store unavailable; retry later"}, status=503)  # fmt: skip


def preflight(cors: dict[str, str], allowed_headers: str) -> web.Response:
    """The answer to a CORS preflight of the Edge API's paths (shared with the fake Edge API)."""
    return web.Response(status=204, headers={
        **cors,
        "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
        "Access-Control-Allow-Headers": allowed_headers,
        "Access-Control-Max-Age": "600",
    })  # fmt: skip


def _project(request: web.BaseRequest, state: ProxyState) -> str:
    project_uid = request.headers.get("X-Project-Uid", "").strip()
    if not project_uid:
        raise EdgeApiError(400, "personalize.MISSING_PROJECT_UID", "header X-Project-Uid is required")
    loaded = state.holder.current
    if loaded is None:
        raise EdgeApiError(503, "personalize.NOT_READY", "no rule snapshot loaded yet; retry shortly")
    if project_uid != loaded.snapshot.project.uid:
        raise EdgeApiError(404, PROJECT_NOT_FOUND, f"project {project_uid[:64]!r} not found")
    return project_uid


INVALID_USER_UID = EdgeApiError(
    400, "personalize.INVALID_USER_UID", f"user uid must be 1-{MAX_ID_LENGTH} characters of RFC 6265 cookie-octet"
)


def _require_consent(request: web.BaseRequest, state: ProxyState) -> None:
    """In consent mode, a write for a visitor without consent is refused (SPEC §11): nothing is stored for them."""
    name = state.config.consent_cookie
    if name and not state.planner.identity_of(request.headers).user_uid:
        raise EdgeApiError(403, "personalize.CONSENT_REQUIRED", f"this visitor has not consented (no {name} "
                           "cookie with the consent value): nothing is stored for them")  # fmt: skip


def request_user_uid(request: web.BaseRequest, required: bool) -> str | None:
    """The uid an SDK call names explicitly. Unlike on a page (where an invalid uid counts as absent and a new
    one is minted, contract §11), an invalid one here is a 400: the caller asked about that user, and answering for
    a fresh one would silently split the visitor's data. It is never echoed."""
    uid = request.headers.get(USER_UID_HEADER, "").strip()
    if not uid or uid in NOT_A_UID:  # "null": what the browser SDK sends when it was given no uid (consent mode)
        if required:
            raise EdgeApiError(400, "personalize.MISSING_USER_UID", "header X-CS-Personalize-User-Uid is required")
        return None
    if not valid_user_uid(uid):
        raise INVALID_USER_UID
    return uid


async def _body(request: web.BaseRequest, state: ProxyState) -> Any:
    return parse_json_body(await read_body(request, state.config.max_body_bytes))


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, decoded from its Content-Encoding, at most `limit` bytes (EdgeApiError otherwise). Shared
    with the fake Edge API (sync/fake_edge_api.py), which reads what edgeproxy forwards the same way."""
    if request.content_length is not None and request.content_length > limit:
        raise EdgeApiError(413, "personalize.BODY_TOO_LARGE", f"body over {limit} bytes")
    try:
        raw = await request.content.read(limit + 1)
    except RequestPayloadError:
        raise EdgeApiError(400, "personalize.INVALID_BODY", "the request body is not framed correctly") from None
    if len(raw) > limit:
        raise EdgeApiError(413, "personalize.BODY_TOO_LARGE", f"body over {limit} bytes")
    return _decoded(raw, request.headers.get("Content-Encoding"), limit)


def parse_json_body(raw: bytes) -> Any:
    try:
        # The SDK sends JSON without a JSON content type (fetch defaults to text/plain): parse regardless.
        return load_client_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise EdgeApiError(400, "personalize.INVALID_JSON", "body is not JSON: not UTF-8") from None
    except ClientJsonError as exc:
        raise EdgeApiError(400, "personalize.INVALID_JSON", f"body is not JSON: {exc}") from None


def _decoded(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body under its Content-Encoding: the server relays bodies undecoded (app.build_server), so the Edge
    API inflates gzip/deflate itself, to at most `limit` bytes (a gzip bomb is a 413, not a full inflate);
    a body that is not what its label says is a 400, an unknown coding a 415."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip() and c.strip().lower() != "identity"]
    for coding in reversed(codings):  # applied in the order listed, so undone from the last
        if coding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(wbits=31)
        elif coding == "deflate":
            inflater = zlib.decompressobj()
        else:
            raise EdgeApiError(415, "personalize.UNSUPPORTED_ENCODING", "Content-Encoding must be gzip or deflate")
        try:
            out = inflater.decompress(raw, limit + 1)
            if len(out) <= limit:
                out += inflater.flush()
        except zlib.error:
            raise EdgeApiError(400, "personalize.INVALID_BODY", f"the body is not valid {coding}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise EdgeApiError(413, "personalize.BODY_TOO_LARGE", f"body over {limit} bytes once decoded")
        if not inflater.eof:
            raise EdgeApiError(400, "personalize.INVALID_BODY", f"the body is not valid {coding}")
        raw = out
    return raw


async def _manifest(request: web.BaseRequest, state: ProxyState, project_uid: str) -> web.Response:
    loaded = state.holder.current
    assert loaded is not None
    try:
        live = parse_live_attributes_header(request.headers.get(LIVE_ATTRIBUTES_HEADER))
    except RequestDescriptionError as exc:
        raise EdgeApiError(400, "personalize.INVALID_LIVE_ATTRIBUTES", str(exc)) from None
    request_user_uid(request, required=False)  # an explicit uid must be valid; an invalid cookie counts as absent
    planner = state.planner
    where = planner.client(peer_address(request), request.scheme, request.host, request.headers)
    if where.refusal is not None:
        raise EdgeApiError(400, "personalize.INVALID_FORWARDED_HEADERS", where.refusal.message)
    tags = request.query.getall("tags[]", []) + request.query.getall("tags", [])
    page_url, asked = _preview(request, state, where)
    decision = await decision_for(request, state, loaded, where, page_url=page_url, tags=tuple(tags) or None,
                                  live=live, preview=asked.grant if asked is not None else None)  # fmt: skip
    manifest = decision.manifest
    # The snapshot version lets a client (and the swap test) tie a manifest to exactly one snapshot.
    extra = {"X-Edgeproxy-Snapshot": loaded.snapshot.version}
    if manifest.user_uid:  # no uid for a visitor without consent (SPEC §11): none is minted, none is echoed
        extra[USER_UID_HEADER_NAME] = manifest.user_uid
    if asked is not None:
        extra.update(asked.response_headers)
    if decision.preview is None:  # SPEC §10: a preview is counted nowhere
        state.count_decision(decision)
    return _json(request, state, manifest.edge_body(), extra=extra)


def _preview(request: web.BaseRequest, state: ProxyState, where: ClientView) -> tuple[str, PreviewAsked | None]:
    """The page URL the decision reads (`X-Page-Url`, without a preview token) and what the SDK's request asks of
    preview: a token in that URL (the page was opened with a preview link) or the preview cookie (SPEC §10)."""
    page_url = request.headers.get(PAGE_URL_HEADER, "")
    if not state.config.preview_secret:
        return page_url, None
    planner = state.planner
    before_fragment, hash_mark, fragment = page_url.partition("#")  # a fragment never carries a token
    base, _, query = before_fragment.partition("?")
    query, asked = planner.preview_of(query, planner.identities.of(request.headers), where)
    if asked is None:
        return page_url, None
    if asked.refused is not None:
        log.info("preview token refused at the Edge API (%s); decided as a normal visit", asked.refused)
    return f"{base}{'?' if query else ''}{query}{hash_mark}{fragment}", asked


def _short_text(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise EdgeApiError(400, "personalize.INVALID_EVENT", f"{where}.{key}: expected a non-empty string")
    return value


async def _events(request: web.BaseRequest, state: ProxyState, project_uid: str) -> web.Response:
    _require_consent(request, state)
    user_uid = request_user_uid(request, required=True)
    assert user_uid is not None
    body = await _body(request, state)
    records = event_records(body, project_uid, user_uid, state.clock(), state.config.max_events_per_request)
    if not _in_preview(request, state):  # SPEC §10: events of a preview session are checked, never stored
        await state.store.append_events(records)
        await _forward(request, state, lambda agent, now: events_items(records, now, agent))
    return _json(request, state, {"accepted": len(records)})


_SDK_AGENT = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,199}")


async def _forward(
    request: web.BaseRequest, state: ProxyState, items: Callable[[str, float], list[ForwardItem]]
) -> None:
    """With `forward_edge_api`, queue the accepted write for Contentstack before its 2xx (SPEC §12), as the client
    sent it: `items(X-User-Agent, now)`. An outbox that cannot be written is a StoreError (503)."""
    forwarder = state.forwarder
    if forwarder is not None:
        agent = request.headers.get("X-User-Agent", "")
        await forwarder.enqueue(items(agent if _SDK_AGENT.fullmatch(agent) else OWN_USER_AGENT, forwarder.clock()))


def event_records(body: Any, project_uid: str, user_uid: str, now: float, max_events: int) -> list[EventRecord]:
    """`POST /events`'s body as event records, or EdgeApiError saying what is wrong (contract §5)."""
    if not isinstance(body, list):
        raise EdgeApiError(400, "personalize.INVALID_EVENT", "body must be a JSON array of events")
    if len(body) > max_events:
        raise EdgeApiError(413, "personalize.TOO_MANY_EVENTS", f"{len(body)} events; at most {max_events} per request")
    records = []
    for index, item in enumerate(body):
        where = f"body[{index}]"
        if not isinstance(item, dict):
            raise EdgeApiError(400, "personalize.INVALID_EVENT", f"{where}: expected an object")
        kind = item.get("type")
        if kind == "IMPRESSION":
            records.append(EventRecord(
                ts=now, project_uid=project_uid, user_uid=user_uid, type="IMPRESSION",
                experience_short_uid=_short_text(item, "experienceShortUid", where),
                variant_short_uid=_short_text(item, "variantShortUid", where),
            ))  # fmt: skip
        elif kind == "EVENT":
            records.append(EventRecord(
                ts=now, project_uid=project_uid, user_uid=user_uid, type="EVENT",
                event_key=_short_text(item, "eventKey", where),
            ))  # fmt: skip
        else:
            raise EdgeApiError(400, "personalize.INVALID_EVENT", f"{where}.type: expected IMPRESSION or EVENT")
    return records


def attributes_of(body: Any) -> dict[str, Any]:
    """`PATCH /user-attributes`'s body, or EdgeApiError."""
    if not isinstance(body, dict):
        raise EdgeApiError(400, "personalize.INVALID_ATTRIBUTES", "body must be a JSON object of key -> value")
    return body


def merge_uids(body: Any) -> tuple[str, str]:
    """`POST /user-attributes/actions/merge`'s (source, target) uids, or EdgeApiError."""
    if not isinstance(body, dict):
        raise EdgeApiError(400, "personalize.INVALID_MERGE", 'body must be {"sourceUserUid", "targetUserUid"}')
    uids = []
    for key in ("sourceUserUid", "targetUserUid"):
        value = body.get(key)
        if not isinstance(value, str) or not valid_user_uid(value.strip()):
            raise EdgeApiError(400, "personalize.INVALID_MERGE", f"{key}: expected a user uid (docs/contract.md §11)")
        uids.append(value.strip())
    return uids[0], uids[1]


def _in_preview(request: web.BaseRequest, state: ProxyState) -> bool:
    """Whether the request carries a valid preview cookie."""
    if not state.config.preview_secret:
        return False
    token = state.planner.identities.of(request.headers).cookies.get(PREVIEW_COOKIE)
    return token is not None and isinstance(verify(token, state.config.preview_secret, state.clock()), Preview)


async def _patch_attributes(request: web.BaseRequest, state: ProxyState, project_uid: str) -> web.Response:
    _require_consent(request, state)
    user_uid = request_user_uid(request, required=True)
    assert user_uid is not None
    sent = attributes_of(await _body(request, state))
    owned = state.config.behaviour.owned_keys if state.config.behaviour is not None else frozenset({STATE_KEY})
    body = {key: value for key, value in sent.items() if key not in owned}
    if body:
        try:
            await state.store.patch_attributes(project_uid, user_uid, body)
        except StoreLimitError as exc:
            raise EdgeApiError(400, "personalize.INVALID_ATTRIBUTES", str(exc)) from None
        await _forward(request, state, lambda agent, now: [attributes_item(project_uid, user_uid, body, now, agent)])
    answer: dict[str, Any] = {"userUid": user_uid, "updated": sorted(body)}
    refused = sorted(set(sent) - set(body))
    if refused:  # SPEC §13: the behaviour section's keys are computed by the proxy, not written by clients
        answer["refused"] = refused
        answer["message"] = "these keys are behavioural attributes edgeproxy computes ([behaviour]); not written"
    return _json(request, state, answer)


async def _merge(request: web.BaseRequest, state: ProxyState, project_uid: str) -> web.Response:
    _require_consent(request, state)
    source, target = merge_uids(await _body(request, state))
    if source != target:
        try:
            await state.store.merge_attributes(project_uid, source, target)
        except StoreLimitError as exc:
            raise EdgeApiError(400, "personalize.INVALID_MERGE", str(exc)) from None
        await _forward(request, state, lambda agent, now: [merge_item(project_uid, source, target, now, agent)])
    return _json(request, state, {"sourceUserUid": source, "targetUserUid": target})
