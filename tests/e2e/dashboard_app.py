"""Serve `edgeproxy.analytics.dashboard.dashboard_handler` on its own, with a real ProxyState (make_state).

Used by tests/e2e/test_dashboard.py while `edgeproxy serve` does not route `/_edgeproxy/dashboard` yet. Like the
proxy, it answers `/_edgeproxy/ready`, and it records the decisions of `--decisions` synthetic visitors (real
engine manifests) so the live counters have something to show.

    python tests/e2e/dashboard_app.py --rules rules --state sqlite:///x.db --ops-token T --listen 127.0.0.1:8099
"""

from __future__ import annotations

import argparse
import time
import uuid

from aiohttp import web

from edgeproxy.analytics.dashboard import dashboard_handler
from edgeproxy.engine.context import context_from_description
from edgeproxy.proxy.config import load_config
from edgeproxy.proxy.server import make_state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--ops-token", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--decisions", type=int, default=0)
    args = parser.parse_args()
    config = load_config(None, {}, {
        "origin": "http://127.0.0.1:9", "rules": args.rules, "state": args.state, "ops_token": args.ops_token,
    })  # fmt: skip
    state = make_state(config)
    loaded = state.holder.current
    assert loaded is not None
    for i in range(args.decisions):
        described = context_from_description(
            {"userUid": f"live-{i}", "url": "https://shop.example/?utm_campaign=bf" if i % 3 == 0 else "https://shop.example/"},
            clock=time.time, new_uid=lambda: str(uuid.uuid4()), classifier=state.classifier, geo_lookup=None,
        )  # fmt: skip
        state.live.record(loaded.snapshot.decide(described.context, described.tags))

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/_edgeproxy/ready":
            return web.json_response({"ready": True})
        return await dashboard_handler(request, state)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    host, _, port = args.listen.rpartition(":")
    web.run_app(app, host=host, port=int(port), print=None)


if __name__ == "__main__":
    main()
