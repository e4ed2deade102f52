"""`--access-log`: one JSON line per request on the `edgeproxy.access` logger, with the decision when there was one.

{"ts": "...Z", "remote": "81.2.69.160", "method": "GET", "path": "/p?x=1", "status": 200, "bytes": 5114,
 "ms": 1.93, "kind": "page", "userUid": "...", "variants": "0_1,2_0", "snapshot": "sha256:...", "cache": "MISS"}
"""

from __future__ import annotations

import json
import logging
import re
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from edgeproxy.engine.decide import Manifest
from edgeproxy.runtime.decision_log import iso

# Request-scoped: set by the proxy handler (an `app.Decided`), read here for the decision fields.
DECIDED_KEY = web.RequestKey("edgeproxy.decided", object)
# Set by a handler whose path names a person (`{ops_prefix}users/{uid}`): the path the log line shows instead.
LOGGED_PATH_KEY = web.RequestKey("edgeproxy.logged_path", str)


_SECRET_PARAMS = re.compile(r"([?&](?:token|authtoken|cs_preview)=)[^&]*", re.IGNORECASE)  # preview: a bearer link


def _redacted(path: str) -> str:
    """The dashboard accepts `?token=` so a browser can open it; a log line must not carry it."""
    lowered = path.lower()
    return _SECRET_PARAMS.sub(r"\1[redacted]", path) if "token=" in lowered or "cs_preview=" in lowered else path


def access_line(
    *, remote: str | None, method: str, raw_path: str, status: int, body_bytes: int, seconds: float,
    manifest: Manifest | None, snapshot: str | None, cache: str | None,
) -> str:  # fmt: skip
    """One access log line (also written by the hit lane, which has no aiohttp request to log)."""
    record: dict[str, object] = {
        "ts": iso(time.time()),
        "remote": remote,
        "method": method,
        "path": _redacted(raw_path),
        "status": status,
        "bytes": body_bytes,
        "ms": round(seconds * 1000, 3),
    }
    if manifest is not None:
        record.update(kind="page", userUid=manifest.user_uid, variants=manifest.variant_param, snapshot=snapshot)
    if cache:
        record["cache"] = cache
    return json.dumps(record, separators=(",", ":"))


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        decided = request.get(DECIDED_KEY)
        self.logger.info(access_line(
            remote=request.remote, method=request.method, raw_path=request.get(LOGGED_PATH_KEY, request.raw_path),
            status=response.status,
            body_bytes=response.body_length, seconds=duration, manifest=getattr(decided, "manifest", None),
            snapshot=getattr(decided, "snapshot", None), cache=response.headers.get("X-Cache"),
        ))  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
