"""A faithful local stand-in for Contentstack's Personalize Edge API, recording what it receives, with faults.

It is what edgeproxy forwards writes to in tests and when trying `forward_edge_api`: the write paths of
docs/contract.md §5, exactly as the official SDK sends them, under no prefix (as on the real Edge API host):

    POST  /events                          headers X-Project-Uid + X-CS-Personalize-User-Uid; body an array of
                                           {"type":"IMPRESSION","experienceShortUid","variantShortUid"} and
                                           {"type":"EVENT","eventKey"}
    PATCH /user-attributes                 headers X-Project-Uid + X-CS-Personalize-User-Uid; body a flat object
    POST  /user-attributes/actions/merge   header X-Project-Uid; body {"sourceUserUid", "targetUserUid"}
    GET   /manifest                        an empty manifest (it decides nothing), with X-CS-Personalize-User-Uid

Validation like the real API: a missing X-Project-Uid, a missing or invalid user uid, a body that is not JSON or
not the shape above is a 400 `{"error", "message"}`; a body over 1 MiB a 413, a Content-Encoding a 415; with
`--project-uid` given, another project is a 404 `personalize.MANIFEST.PROJECT_NOT_FOUND` (any project otherwise).
CORS preflights are answered. A rejected request is not recorded.

Every accepted request is recorded (seq, method, path, the headers it cares about, the parsed body); every
request to an API path gets the next arrival sequence number, so received and faulted requests interleave:
    GET /_fake/received[?since=N]   accepted requests with seq > N (default all)
    DELETE /_fake/received          forget them
    GET /_fake/faulted[?since=N]    requests answered by a fault (never in received)   DELETE clears them

Faults, set with `POST /_fake/faults` (JSON) and cleared with `DELETE /_fake/faults`:
    {"mode": "error", "status": 500}               answer with that status (default 500)
    {"mode": "timeout"}                            accept and never answer (until the client gives up)
    {"mode": "slow", "delay": 2.5}                 answer after a delay; listed in faulted on arrival and, once
                                                   answered, in received (also when the client gave up before:
                                                   the server did accept it, as a real one would)
    {"mode": "rate_limited", "retry_after": 3}     429 with `Retry-After: 3`
    {"mode": "refuse"}                             close the connection without an answer: the closest a running
                                                   server gets to a refused connection (a truly refused one is
                                                   tested by stopping the fake, or by a port nothing listens on)
    {"mode": "reject_body", "match": "buy-now"}    400 for a body whose text contains that string (one kind of
                                                   body rejected permanently, e.g. an eventKey); other bodies pass
  with optional "paths": ["/events", ...] (prefix match; default every API path) and "count": N (the next N
  matching requests, then cleared). Faults are checked in the order set; the first that matches answers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from edgeproxy.endpoints.edge_api import (
    EdgeApiError,
    attributes_of,
    event_records,
    merge_uids,
    parse_json_body,
    preflight,
    read_body,
    request_user_uid,
)
from edgeproxy.sync.fake_server import Faults, serve_until_interrupted

FAULT_MODES = frozenset({"error", "timeout", "slow", "rate_limited", "refuse", "reject_body"})
PROJECT_NOT_FOUND = "personalize.MANIFEST.PROJECT_NOT_FOUND"
USER_UID = "X-CS-Personalize-User-Uid"
MAX_BODY_BYTES = 1024 * 1024
MAX_EVENTS = 1000  # per request: more than the SDK sends, a bound all the same
# The headers a forwarded request is judged by; recorded when present, under these names.
RECORDED_HEADERS = (
    "X-Project-Uid",
    USER_UID,
    "X-Page-Url",
    "X-Live-Attributes",
    "X-Forwarded-For",
    "User-Agent",
    "X-User-Agent",
    "Content-Type",
)
ALLOWED_HEADERS = ", ".join((*RECORDED_HEADERS, "X-Lytics-Id-Field", "X-Lytics-Id-Value", "Referer"))
ROUTES = {
    ("GET", "/manifest"),
    ("POST", "/events"),
    ("PATCH", "/user-attributes"),
    ("POST", "/user-attributes/actions/merge"),
}


class FakeEdgeApi:
    def __init__(self, project_uids: Iterable[str] = ()) -> None:
        self.project_uids = frozenset(project_uids)
        self.faults = Faults(FAULT_MODES, check=_fault_problem)
        self.received: list[dict[str, Any]] = []
        self.faulted: list[dict[str, Any]] = []
        self.seq = 0
        self._closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
        self.faults.routes(app)
        app.router.add_get("/_fake/received", self.list_received)
        app.router.add_delete("/_fake/received", self.clear_received)
        app.router.add_get("/_fake/faulted", self.list_faulted)
        app.router.add_delete("/_fake/faulted", self.clear_faulted)
        app.router.add_route("*", "/{tail:.*}", self.api)
        app.on_shutdown.append(self._release)  # hung (timeout, slow) requests end instead of holding shutdown
        return app

    async def _release(self, app: web.Application) -> None:
        self._closing.set()

    async def list_received(self, request: web.Request) -> web.Response:
        return web.json_response(_since(self.received, request))

    async def clear_received(self, request: web.Request) -> web.Response:
        self.received.clear()
        return web.json_response([])

    async def list_faulted(self, request: web.Request) -> web.Response:
        return web.json_response(_since(self.faulted, request))

    async def clear_faulted(self, request: web.Request) -> web.Response:
        self.faulted.clear()
        return web.json_response([])

    async def api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"].strip("/")
        if request.method == "OPTIONS":
            return preflight(_cors(request), ALLOWED_HEADERS)
        try:
            if (request.method, path) not in ROUTES:
                if any(path == known for _, known in ROUTES):
                    raise EdgeApiError(405, "personalize.METHOD_NOT_ALLOWED", f"{request.method} {path}")
                raise EdgeApiError(404, "personalize.NOT_FOUND", f"no Edge API endpoint {path}")
            raw = await read_body(request, MAX_BODY_BYTES)
        except EdgeApiError as exc:
            return _error(request, exc)
        self.seq += 1
        entry: dict[str, Any] = {
            "seq": self.seq,
            "method": request.method,
            "path": path,
            "headers": {name: request.headers[name] for name in RECORDED_HEADERS if name in request.headers},
        }
        fault = self.faults.take(path, lambda f: f["mode"] != "reject_body" or f["match"].encode() in raw)
        if fault is not None:
            answered = await self._faulted(request, entry, fault)
            if answered is not None:
                return answered
        try:
            return self._accept(request, entry, raw)
        except EdgeApiError as exc:
            return _error(request, exc)

    async def _faulted(
        self, request: web.Request, entry: dict[str, Any], fault: dict[str, Any]
    ) -> web.StreamResponse | None:
        """The answer a fault gives, or None when the request goes on (after a `slow` delay)."""
        mode = fault["mode"]
        self.faulted.append({**entry, "fault": mode})
        if mode == "error":
            status = int(fault.get("status", 500))
            return _error(request, EdgeApiError(status, "fake.INJECTED_FAILURE", f"injected {status}"))
        if mode == "rate_limited":
            retry_after = str(fault.get("retry_after", 1))
            return web.json_response(
                {"error": "personalize.RATE_LIMITED", "message": "too many requests (injected)"},
                status=429,
                headers={"Retry-After": retry_after, **_cors(request)},
            )
        if mode == "reject_body":
            message = f"the body contains {fault['match']!r}, which this fake rejects"
            return _error(request, EdgeApiError(400, "personalize.INVALID_EVENT", message))
        if mode == "refuse":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more is written on a connection that is gone
        delay = 3600.0 if mode == "timeout" else float(fault.get("delay", 2.0))
        try:
            await asyncio.wait_for(self._closing.wait(), delay)
        except TimeoutError:
            if mode == "slow":
                return None
        if request.transport is not None:  # shutting down (or a timeout that ran out): no answer at all
            request.transport.abort()
        raise asyncio.CancelledError

    def _accept(self, request: web.Request, entry: dict[str, Any], raw: bytes) -> web.Response:
        project = request.headers.get("X-Project-Uid", "").strip()
        if not project:
            raise EdgeApiError(400, "personalize.MISSING_PROJECT_UID", "header X-Project-Uid is required")
        if self.project_uids and project not in self.project_uids:
            raise EdgeApiError(404, PROJECT_NOT_FOUND, f"project {project[:64]!r} not found")
        path = entry["path"]
        user_uid = request_user_uid(request, required=path in ("/events", "/user-attributes"))
        extra: dict[str, str] = {}
        if path == "/manifest":
            body: Any = None
            answer: Any = {"experiences": [], "activeVariants": {}}
            extra[USER_UID] = user_uid or uuid.uuid4().hex
        elif path == "/events":
            body = parse_json_body(raw)
            assert user_uid is not None
            answer = {"accepted": len(event_records(body, project, user_uid, 0.0, MAX_EVENTS))}
        elif path == "/user-attributes":
            body = attributes_of(parse_json_body(raw))
            answer = {"userUid": user_uid, "updated": sorted(body)}
        else:
            body = parse_json_body(raw)
            source, target = merge_uids(body)
            answer = {"sourceUserUid": source, "targetUserUid": target}
        self.received.append({**entry, "body": body})
        headers = {"Cache-Control": "no-store", **_cors(request), **extra}
        return web.json_response(answer, headers=headers)


def _since(records: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    since = request.query.get("since", "0")
    try:
        after = int(since)
    except ValueError:
        raise web.HTTPBadRequest(text="since must be an integer") from None
    return [r for r in records if r["seq"] > after]


def _cors(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin", "*")
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": USER_UID}


def _error(request: web.Request, exc: EdgeApiError) -> web.Response:
    return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status, headers=_cors(request))


def _fault_problem(fault: dict[str, Any]) -> str | None:
    if fault["mode"] == "reject_body" and not (isinstance(fault.get("match"), str) and fault["match"]):
        return 'reject_body needs "match": a non-empty string'
    return None


def run_fake_edge_api(project_uids: Iterable[str], host: str, port: int) -> None:
    """Serve until interrupted (sync/fake_server.py)."""
    fake = FakeEdgeApi(project_uids)
    projects = ", ".join(sorted(fake.project_uids)) or "any project"
    serve_until_interrupted(fake.app(), "fake-edge-api", f"fake Personalize Edge API serving {projects}", host, port)
