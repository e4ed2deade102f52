"""Preview links from the proxy itself (SPEC §10): `POST {ops_prefix}preview-links` mints one for a marketer's tool
(ops token), and the dashboard lists one per variant and per draft experience. `edgeproxy preview-link` mints the
same links from a shell; both build them with visitor/preview.py and check the experiences against the snapshot
being served, so a link never names an experience or variant the proxy does not know.

    POST {ops_prefix}preview-links
    {"url": "https://shop.example/p" or "/p", "set": {"EXP": "VAR"}, "exclude": ["EXP"], "draft": false,
     "now": "2026-11-28T12:00:00Z", "ttl": "1h"}
    -> 200 {"link": "...?cs_preview=...", "expires": "2026-12-06T10:00:00Z"}
    -> 400 {"error": "invalid_request", "field": "set.0", "message": ...}; 409 when previews are off
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edgeproxy.engine.context import ClientJsonError, load_client_json
from edgeproxy.engine.decide import CompiledExperience, CompiledSnapshot
from edgeproxy.runtime.state import ProxyState
from edgeproxy.visitor.preview import PreviewRequestError, preview_for, signed_link

MAX_BODY = 16_384
DASHBOARD_TTL = "1h"  # the dashboard's links: minted afresh on each refresh of its data


@dataclass(frozen=True, slots=True)
class Previewable:
    """An experience a link can force: its variants as (short uid, name), and whether only `--draft` shows it
    this way (a draft-only experience, or the DRAFT edit of a live one)."""

    short_uid: str
    name: str
    variants: tuple[tuple[str, str], ...]
    draft: bool


def previewable(snapshot: CompiledSnapshot) -> list[Previewable]:
    """The live experiences, then each DRAFT version that differs from what is live (SPEC §10 `--draft`)."""
    found = [_previewable(ce, False) for ce in snapshot.experiences]
    if snapshot.draft is not None:
        found += [_previewable(ce, True) for ce in snapshot.draft.experiences if ce.experience.draft]
    return found


def _previewable(ce: CompiledExperience, draft: bool) -> Previewable:
    experience = ce.experience
    variants = tuple((v.short_uid, v.name or v.short_uid) for v in experience.variants)
    return Previewable(ce.short_uid, experience.name or ce.short_uid, variants, draft)


def _problem(snapshot: CompiledSnapshot, forced: dict[str, str | None], draft: bool) -> tuple[str, str] | None:
    """(field, message) for an experience or variant the snapshot does not have (with its drafts under `draft`)."""
    known: dict[str, set[str]] = {}
    for item in previewable(snapshot):
        if draft or not item.draft:
            known.setdefault(item.short_uid, set()).update(short for short, _ in item.variants)
    for experience, variant in forced.items():
        field = f"{'set' if variant is not None else 'exclude'}.{experience}"
        if experience not in known:
            hint = "" if draft else ' (a draft experience needs "draft": true)'
            return field, f"no experience {experience!r} in snapshot {snapshot.version}{hint}"
        if variant is not None and variant not in known[experience]:
            return field, f"experience {experience!r} has no variant {variant!r}; it has {sorted(known[experience])}"
    return None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, separators=(",", ":")), content_type="application/json",
                        headers={"Cache-Control": "no-store"})  # fmt: skip


def _invalid(field: str, message: str) -> web.Response:
    return _json({"error": "invalid_request", "field": field, "message": message}, 400)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def preview_links_handler(request: web.BaseRequest, state: ProxyState) -> web.Response:
    secret = state.config.preview_secret
    if not secret:
        return _json({"error": "previews_off", "message": "previews are off: set preview_secret (or "
                      "EDGEPROXY_PREVIEW_SECRET) in the proxy's config"}, 409)  # fmt: skip
    loaded = state.holder.current
    if loaded is None:
        return _json({"error": "not_ready", "message": "no snapshot loaded yet"}, 503)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return _json({"error": "too_large", "message": f"body over {MAX_BODY} bytes"}, 413)
    try:
        body = load_client_json(raw or b"{}")
    except (ClientJsonError, UnicodeDecodeError) as exc:
        return _json({"error": "invalid_json", "message": f"body is not JSON: {exc}"}, 400)
    if not isinstance(body, dict):
        return _invalid("$", 'expected an object {"url", "set", "exclude", "draft", "now", "ttl"}')
    unknown = sorted(set(body) - {"url", "set", "exclude", "draft", "now", "ttl"})
    if unknown:
        return _invalid(unknown[0], "unknown field; the fields are url, set, exclude, draft, now, ttl")
    url, chosen, excluded = body.get("url"), body.get("set"), body.get("exclude")
    chosen = {} if chosen is None else chosen  # absent or null: nothing forced; [] or "" is no object, a 400
    excluded = [] if excluded is None else excluded
    draft, now, ttl = body.get("draft", False), body.get("now"), body.get("ttl", "1h")
    if not isinstance(url, str):
        return _invalid("url", "required: the page's http(s) URL, or a path on this site such as /products/p")
    if not isinstance(chosen, dict) or not all(isinstance(v, str) for v in chosen.values()):
        return _invalid("set", 'expected an object of experience short uid -> variant short uid, e.g. {"0": "2"}')
    if not isinstance(excluded, list) or not all(isinstance(e, str) for e in excluded):
        return _invalid("exclude", 'expected an array of experience short uids, e.g. ["1"]')
    if not isinstance(draft, bool):
        return _invalid("draft", "expected true or false")
    if now is not None and not isinstance(now, str):
        return _invalid("now", "expected an ISO-8601 date-time string, e.g. 2026-11-28T12:00:00Z")
    if isinstance(ttl, int | float) and not isinstance(ttl, bool):
        ttl = str(ttl)
    if not isinstance(ttl, str):
        return _invalid("ttl", "expected seconds or a duration such as 30m, 1h, 2d")
    try:
        preview = preview_for(list(chosen.items()), excluded, draft=draft, now=now, ttl=ttl, issued=state.clock())
    except PreviewRequestError as exc:
        return _invalid(exc.field, str(exc))
    problem = _problem(loaded.snapshot, dict(preview.forced), draft)
    if problem is not None:
        return _invalid(*problem)
    try:
        link = signed_link(url, preview, secret)
    except PreviewRequestError as exc:
        return _invalid(exc.field, str(exc))
    return _json({"link": link, "expires": _iso(preview.expires)})


def dashboard_previews(state: ProxyState) -> list[dict[str, Any]] | None:
    """Per previewable experience, a link to the site's home page per variant (1 hour; None: previews off)."""
    secret, loaded = state.config.preview_secret, state.holder.current
    if not secret or loaded is None:
        return None
    issued = state.clock()
    out = []
    for item in previewable(loaded.snapshot):
        links = []
        for short_uid, name in item.variants:
            preview = preview_for([(item.short_uid, short_uid)], [], draft=item.draft, now=None,
                                  ttl=DASHBOARD_TTL, issued=issued)  # fmt: skip
            links.append({"shortUid": short_uid, "name": name, "link": signed_link("/", preview, secret)})
        out.append({"shortUid": item.short_uid, "name": item.name, "draft": item.draft, "variants": links})
    return out
