"""A faithful local stand-in for the Personalize Management API, with fault injection.

It serves a rules folder in the CLI-export layout as the Management API resources of docs/contract.md §3, re-reading the
files on every request so a test (or a person trying sync) can edit an audience and see it propagate:

    GET /attributes   /audiences?includeLyticsAudiences=true   /events   /experiences
    GET /experiences/{uid}/versions   /experiences-priority

Auth like the real API: `authtoken: <token>` or `authorization: Bearer <oauth token>`, plus `x-project-uid`
(401 without credentials, 403 with wrong ones, 404 for another project). Responses carry an ETag and honour
If-None-Match with 304. Lists can be paged with `?skip=&limit=` (no paging unless asked, as in the export).

Faults, set with `POST /_fake/faults` (JSON) and cleared with `DELETE /_fake/faults`:
    {"mode": "error"   , "status": 500}           answer with that status
    {"mode": "timeout"}                            accept and never answer (until the client gives up)
    {"mode": "slow", "delay": 2.5}                 answer after a delay
    {"mode": "malformed"}                          a body that is not JSON
    {"mode": "invalid"}                            valid JSON that breaks the contract: every audience rule gets
                                                   an unknown condition (default "paths": ["/audiences"], the
                                                   resource it can break; elsewhere only experience types and
                                                   version statuses are renamed)
    {"mode": "partial"}                            a JSON body cut in the middle
  with optional "paths": ["/audiences", ...] (prefix match; default all, for "invalid" /audiences) and
  "count": N (the next N matching requests, then cleared).
`GET /_fake/requests` lists the requests seen (method, path, auth ok), for tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from edgeproxy.files.rules import find_personalize_dir
from edgeproxy.sync.fake_server import Faults, serve_until_interrupted

RESOURCES = {
    "/attributes": "attributes/attributes.json",
    "/audiences": "audiences/audiences.json",
    "/events": "events/events.json",
    "/experiences": "experiences/experiences.json",
}
FAULT_MODES = frozenset({"error", "timeout", "slow", "malformed", "invalid", "partial"})
# Where a fault without "paths" applies; every path unless named here. "invalid" breaks rule conditions, which
# only audiences carry: elsewhere (attributes, events) it would change nothing, and a "count" spent there is lost.
DEFAULT_PATHS = {"invalid": ("/audiences",)}


class FakeAdmin:
    def __init__(self, rules: str | Path, project_uid: str, token: str) -> None:
        self.root = find_personalize_dir(rules)
        self.project_uid = project_uid
        self.token = token
        self.faults = Faults(FAULT_MODES, DEFAULT_PATHS)
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        self.faults.routes(app)
        app.router.add_get("/_fake/requests", self.seen)
        app.router.add_get("/{tail:.*}", self.resource)
        return app

    async def seen(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    def _auth(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("authtoken")
        auth = request.headers.get("authorization", "")
        if token is None and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if not token:
            return web.json_response(
                {"error_message": "Missing authtoken or authorization header", "error_code": 105}, status=401
            )
        if token != self.token:
            return web.json_response({"error_message": "Invalid credentials", "error_code": 105}, status=403)
        if request.headers.get("x-project-uid") != self.project_uid:
            return web.json_response({"error_message": "Project not found", "error_code": 404}, status=404)
        return None

    def _load(self, path: str) -> Any:
        if path in RESOURCES:
            return json.loads((self.root / RESOURCES[path]).read_text())
        if path == "/experiences-priority":
            file = self.root / "experiences-priority.json"
            return json.loads(file.read_text()) if file.exists() else {"priorityOrder": []}
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "experiences" and parts[2] == "versions":
            file = self.root / "experiences" / "versions" / f"{parts[1]}.json"
            if not file.exists():
                raise KeyError(path)
            return json.loads(file.read_text())
        raise KeyError(path)

    async def resource(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"].strip("/")
        denied = self._auth(request)
        self.requests.append({"method": request.method, "path": path, "authorized": denied is None})
        if denied is not None:
            return denied
        fault = self.faults.take(path)
        if fault is not None:
            mode = fault["mode"]
            if mode == "error":
                return web.json_response({"error_message": "injected failure"}, status=int(fault.get("status", 500)))
            if mode == "timeout":
                await asyncio.sleep(3600)
            if mode == "slow":
                await asyncio.sleep(float(fault.get("delay", 2.0)))
            if mode == "malformed":
                return web.Response(text="<html>Bad Gateway</html>", content_type="application/json")
        try:
            data = self._load(path)
        except KeyError:
            return web.json_response({"error_message": f"{path} not found", "error_code": 404}, status=404)
        if fault is not None and fault["mode"] == "invalid":
            data = _break_contract(data)
        if isinstance(data, list) and ("skip" in request.query or "limit" in request.query):
            skip = int(request.query.get("skip", 0))
            limit = int(request.query.get("limit", 100))
            data = data[skip : skip + limit]
        body = json.dumps(data)
        if fault is not None and fault["mode"] == "partial":
            return web.Response(text=body[: len(body) // 2], content_type="application/json")
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(text=body, content_type="application/json", headers={"ETag": etag})


def _break_contract(data: Any) -> Any:
    """Valid JSON, wrong meaning: every condition becomes one the contract does not know."""
    text = json.dumps(data)
    text = re.sub(r'"attributeMatchCondition": "[^"]*"', '"attributeMatchCondition": "SOUNDS_LIKE"', text)
    text = text.replace('"SEGMENTED"', '"MYSTERY"').replace('"status": "ACTIVE"', '"status": "LIVE"')
    return json.loads(text)


def run_fake_admin(rules: str, project_uid: str, token: str, host: str, port: int) -> None:
    """Serve until interrupted (sync/fake_server.py)."""
    admin = FakeAdmin(rules, project_uid, token)
    serve_until_interrupted(admin.app(), "fake-admin", f"fake Personalize Management API serving {admin.root}", host,
                            port)  # fmt: skip
