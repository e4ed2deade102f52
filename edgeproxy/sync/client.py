"""Management API client: fetch a project's rules as the CLI-export tree (docs/contract.md §3), conditionally.

Each resource URL remembers its ETag / Last-Modified; a 304 reuses the previous body, and `fetch_tree` says
whether anything changed, so an unchanged Admin costs a few tiny requests per poll and no rebuild.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

# docs/contract.md §3 regional hosts.
REGIONS = {
    "na": "https://personalize-api.contentstack.com",
    "us": "https://personalize-api.contentstack.com",
    "eu": "https://eu-personalize-api.contentstack.com",
    "au": "https://au-personalize-api.contentstack.com",
    "azure-na": "https://azure-na-personalize-api.contentstack.com",
    "azure-eu": "https://azure-eu-personalize-api.contentstack.com",
    "gcp-na": "https://gcp-na-personalize-api.contentstack.com",
    "gcp-eu": "https://gcp-eu-personalize-api.contentstack.com",
}
VERSION_FETCH_CONCURRENCY = 8


class SyncError(Exception):
    """Admin could not give us a complete, well-formed project; the message says which call and why."""


@dataclass(frozen=True, slots=True)
class FetchedTree:
    files: dict[str, Any]  # export-relative path -> parsed JSON
    changed: bool  # False when every resource answered 304
    validators: dict[str, tuple[str | None, str | None, Any]]  # to `commit` once the tree is accepted


def admin_base_url(admin_url: str | None, region: str | None) -> str:
    if admin_url:
        if not admin_url.startswith(("http://", "https://")):
            raise SyncError(f"admin URL {admin_url!r} must start with http:// or https://")
        return admin_url.rstrip("/")
    key = (region or "na").lower()
    if key not in REGIONS:
        raise SyncError(f"unknown region {region!r}; one of {', '.join(sorted(REGIONS))} (or give --admin-url)")
    return REGIONS[key]


class ManagementClient:
    def __init__(
        self,
        base_url: str,
        project_uid: str,
        *,
        authtoken: str | None = None,
        oauth_token: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        if not project_uid:
            raise SyncError("a project uid is required (--project-uid)")
        if not authtoken and not oauth_token:
            raise SyncError(
                "credentials are required: EDGEPROXY_AUTHTOKEN=TOKEN (or --authtoken TOKEN), or "
                "EDGEPROXY_OAUTH_TOKEN=TOKEN (or --oauth-token TOKEN)"
            )
        self.base_url = base_url.rstrip("/")
        self.project_uid = project_uid
        self._headers = {"x-project-uid": project_uid, "accept": "application/json"}
        if authtoken:
            self._headers["authtoken"] = authtoken
        else:
            self._headers["authorization"] = f"Bearer {oauth_token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._validators: dict[str, tuple[str | None, str | None, Any]] = {}

    def commit(self, tree: FetchedTree) -> None:
        """Remember the validators of an accepted tree. Until then a 304 must not stand for a body that was
        fetched but rejected (say, with one failing call): the next sync would wrongly see "unchanged"."""
        self._validators.update(tree.validators)

    async def _get(
        self,
        session: aiohttp.ClientSession,
        path: str,
        pending: dict[str, tuple[str | None, str | None, Any]],
        *,
        optional: bool = False,
    ) -> tuple[Any, bool]:
        """(parsed JSON, changed). Raises SyncError naming the call."""
        url = self.base_url + path
        headers = dict(self._headers)
        known = self._validators.get(url)
        if known is not None:
            etag, modified, _ = known
            if etag:
                headers["If-None-Match"] = etag
            if modified:
                headers["If-Modified-Since"] = modified
        try:
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                if response.status == 304 and known is not None:
                    return known[2], False
                if response.status == 404 and optional:
                    return None, known is not None
                if response.status in (401, 403):
                    raise SyncError(f"GET {path}: {response.status}, Admin refused the credentials; check the token")
                if response.status != 200:
                    raise SyncError(f"GET {path}: HTTP {response.status} from Admin")
                body = await response.read()
                etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        except TimeoutError:
            raise SyncError(f"GET {path}: Admin did not answer within {self._timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise SyncError(f"GET {path}: cannot reach Admin at {self.base_url}: {exc}") from None
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SyncError(f"GET {path}: Admin answered with a body that is not JSON ({exc})") from None
        pending[url] = (etag, modified, data)
        return data, True

    async def fetch_tree(self) -> FetchedTree:
        pending: dict[str, tuple[str | None, str | None, Any]] = {}
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            calls = {
                "attributes/attributes.json": self._get(session, "/attributes", pending),
                "audiences/audiences.json": self._get(session, "/audiences?includeLyticsAudiences=true", pending),
                "events/events.json": self._get(session, "/events", pending),
                "experiences/experiences.json": self._get(session, "/experiences", pending),
                "experiences-priority.json": self._get(session, "/experiences-priority", pending, optional=True),
            }
            results = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
            experiences = results["experiences/experiences.json"][0]
            if not isinstance(experiences, list):
                raise SyncError("GET /experiences: expected a JSON array of experiences")
            uids = []
            for index, item in enumerate(experiences):
                uid = item.get("uid") if isinstance(item, dict) else None
                if not isinstance(uid, str) or not uid or "/" in uid:
                    raise SyncError(f"GET /experiences: item {index} has no usable uid")
                uids.append(uid)
            limit = asyncio.Semaphore(VERSION_FETCH_CONCURRENCY)

            async def versions(uid: str) -> tuple[Any, bool]:
                async with limit:
                    return await self._get(session, f"/experiences/{uid}/versions", pending)

            version_results = await asyncio.gather(*(versions(uid) for uid in uids))
        files: dict[str, Any] = {"projects/projects.json": [{"uid": self.project_uid}]}
        changed = False
        for name, (data, was_changed) in results.items():
            changed |= was_changed
            if data is not None:
                files[name] = data
        for uid, (data, was_changed) in zip(uids, version_results, strict=True):
            changed |= was_changed
            files[f"experiences/versions/{uid}.json"] = data
        return FetchedTree(files=files, changed=changed, validators=pending)
