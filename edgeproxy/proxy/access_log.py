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

from edgeproxy.proxy.decision_log import iso

# Request-scoped: set by the proxy handler (an `app.Decided`), read here for the decision fields.
DECIDED_KEY = web.RequestKey("edgeproxy.decided", object)


_SECRET_PARAMS = re.compile(r"([?&](?:token|authtoken)=)[^&]*", re.IGNORECASE)


def _redacted(path: str) -> str:
    """The dashboard accepts `?token=` so a browser can open it; a log line must not carry it."""
    return _SECRET_PARAMS.sub(r"\1[redacted]", path) if "token=" in path.lower() else path


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        record: dict[str, object] = {
            "ts": iso(time.time()),
            "remote": request.remote,
            "method": request.method,
            "path": _redacted(request.raw_path),
            "status": response.status,
            "bytes": response.body_length,
            "ms": round(duration * 1000, 3),
        }
        decided = request.get(DECIDED_KEY)
        manifest = getattr(decided, "manifest", None)
        if manifest is not None:
            record.update(kind="page", userUid=manifest.user_uid, variants=manifest.variant_param,
                          snapshot=getattr(decided, "snapshot", None))  # fmt: skip
        cache = response.headers.get("X-Cache")
        if cache:
            record["cache"] = cache
        self.logger.info(json.dumps(record, separators=(",", ":")))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
