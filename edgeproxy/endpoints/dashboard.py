"""The analytics dashboard, served by the proxy under its ops prefix (default `/_edgeproxy/`):

    GET {ops_prefix}dashboard             the page (HTML with the package's CSS and JS inlined; no CDN)
    GET {ops_prefix}dashboard/data.json   the data it draws: the report, daily series, live decision counts

Token-protected like `explain`: `Authorization: Bearer TOKEN` or `X-Edgeproxy-Token`, or `?token=TOKEN` so a
browser can open it; without `ops_token` set it is a 403 (the feature is off), with a missing or wrong token a 401.

Dates ("running days", the 14-day rule for a winner) are read on the proxy's clock (`now` setting), the clock
that dated the events, so a demo started with `--now` shows the same report as `edgeproxy report --now`.

The aggregation runs in a worker thread on its own read-only view of the events (SQLite file, Redis stream, or
the PostgreSQL event store of the `events` setting), never on the event loop, and only while someone looks.
Results are cached per (snapshot version, newest event id); with new events they are recomputed at most every
`REFRESH_SECONDS`, or every 5x the last computation's duration when that is longer (a 10M-event store costs a
core for ~15 s: at most ~20% of one core while the page is open). While a newer result is computed, requests
get the previous one (`"stale": true`) instead of waiting.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import weakref
from dataclasses import dataclass, field
from html import escape as html_escape
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgeproxy.analytics.report import build_report, daily_series, iso, report_scope
from edgeproxy.analytics.sources import AnalyticsError, change_marker, collect_tallies, redact
from edgeproxy.endpoints.guard import endpoint_name, refusal
from edgeproxy.endpoints.previews import dashboard_previews
from edgeproxy.http.errors import error_response

if TYPE_CHECKING:
    from edgeproxy.runtime.state import ProxyState

REFRESH_SECONDS = 10.0  # recompute at most this often while events keep arriving ...
COMPUTE_SHARE = 5.0  # ... and at most every 5x the last computation's duration


def static_text(name: str) -> str:
    """A file shipped in edgeproxy/endpoints/static/ (package data)."""
    return resources.files("edgeproxy.endpoints").joinpath("static", name).read_text(encoding="utf-8")


@dataclass
class _Cache:
    key: tuple[str, str | None] | None = None
    data: dict[str, Any] | None = None
    computed_at: float = 0.0
    min_interval: float = REFRESH_SECONDS
    task: asyncio.Task[dict[str, Any]] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_CACHES: weakref.WeakKeyDictionary[Any, _Cache] = weakref.WeakKeyDictionary()


async def dashboard_handler(request: web.BaseRequest, state: ProxyState) -> web.StreamResponse:
    """Serve `{ops_prefix}dashboard` and `{ops_prefix}dashboard/data.json` (GET/HEAD)."""
    accept = request.headers.get("Accept")
    prefix = state.config.ops_prefix
    name = endpoint_name(request.path, prefix)  # as ops_handler names its endpoints
    refused = refusal(request, "dashboard", state.config.ops_token, "ops", query_token=True)
    if refused is not None:
        return refused
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "method_not_allowed", "The dashboard answers GET only.", accept)
        response.headers["Allow"] = "GET, HEAD"
        return response
    if name == "dashboard":
        return _page(prefix.rstrip("/") + "/dashboard/data.json")
    if name == "dashboard/data.json":
        try:
            data = await dashboard_data(state)
        except AnalyticsError as exc:
            return _json({"error": "analytics_unavailable", "message": str(exc)}, 503)
        return _json(data)
    return error_response(404, "not_found", "No such resource; try dashboard or dashboard/data.json.", accept)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, separators=(",", ":"), allow_nan=False),
        content_type="application/json", headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def render_page(data_url: str, nonce: str) -> str:
    html = static_text("dashboard.html")
    return (
        html.replace("{{NONCE}}", nonce)
        .replace("{{DATA_URL}}", html_escape(data_url, quote=True))
        .replace("/*{{STYLE}}*/", static_text("dashboard.css"))
        .replace("/*{{SCRIPT}}*/", static_text("dashboard.js"))
    )


def _page(data_url: str) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return web.Response(
        text=render_page(data_url, nonce),
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": csp,
            "Referrer-Policy": "no-referrer",  # the token may be in the URL
            "X-Content-Type-Options": "nosniff",
        },
    )


async def dashboard_data(state: ProxyState) -> dict[str, Any]:
    """The page's data: cached analytics (see module doc) plus this process's live decision counts."""
    loaded = state.holder.current
    live = state.live.snapshot()
    if loaded is None:
        return {
            "ready": False,
            "message": "no snapshot loaded yet",
            "live": live,
            "generatedAt": iso(time.time()),
            "previews": None,
        }
    cache = _CACHES.get(state)
    if cache is None:
        cache = _CACHES[state] = _Cache()
    snapshot = loaded.snapshot
    # The fleet's durable event store when one is configured (`events`), else the state store.
    url, project_uid = state.config.events or state.config.state, snapshot.project.uid
    marker = await asyncio.to_thread(change_marker, url, project_uid)
    key = (snapshot.version, marker)
    async with cache.lock:
        fresh = cache.data is not None and cache.key == key
        recent = time.monotonic() - cache.computed_at < cache.min_interval
        new_snapshot = cache.key is not None and cache.key[0] != key[0]
        if cache.data is None or new_snapshot or not (fresh or recent):
            if cache.task is None:
                cache.task = asyncio.create_task(
                    _compute(cache, key, loaded.snapshot, url, loaded.source, state.clock())
                )
                cache.task.add_done_callback(_retrieve)
            task = cache.task
        else:
            task = None
        previous = cache.data
    stale = False
    if task is not None:
        if previous is None:
            analytics = await asyncio.shield(task)
        else:
            analytics, stale = previous, not task.done()
            if task.done():
                analytics = task.result()
    else:
        assert previous is not None
        analytics = previous
    return {**analytics, "ready": True, "stale": stale, "live": live, "previews": dashboard_previews(state)}


def _retrieve(task: asyncio.Task[dict[str, Any]]) -> None:
    # A failed refresh is reported to the requests awaiting it; nobody else needs the exception logged.
    if not task.cancelled():
        task.exception()


async def _compute(
    cache: _Cache, key: tuple[str, str | None], snapshot: Any, url: str, source: str, now: float
) -> dict[str, Any]:
    try:
        data = await asyncio.to_thread(compute_analytics, snapshot.project, snapshot.version, url, source, now)
        async with cache.lock:
            cache.key, cache.data, cache.computed_at = key, data, time.monotonic()
            cache.min_interval = max(REFRESH_SECONDS, COMPUTE_SHARE * float(data["computeSeconds"]))
        return data
    finally:
        cache.task = None


def compute_analytics(project: Any, version: str, url: str, source: str, now: float | None = None) -> dict[str, Any]:
    """Report + daily series for every live experience (blocking; run it in a thread); `now` (default: the system
    clock) is the proxy's clock, which dates "running days"."""
    started = time.monotonic()
    scope = report_scope(project)
    tallies = collect_tallies(url, project.uid, scope, daily=True, in_server=True)
    report = build_report(project, version, tallies, scope, now=now, source=redact(url))
    return {
        "generatedAt": report["generatedAt"],
        "computeSeconds": round(time.monotonic() - started, 3),
        "snapshot": {"version": version, "source": source, "projectUid": project.uid},
        "report": report,
        "series": daily_series(project, tallies, scope),
    }
