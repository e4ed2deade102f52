"""What the bundled fakes (fake_admin.py, fake_edge_api.py) share: how they run (an aiohttp app on HOST:PORT until
interrupted, one "serving" line once the port is bound, a port that cannot be bound as one line on stderr and exit
status 2) and their injected faults (`Faults`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web


def serve_until_interrupted(app: web.Application, command: str, banner: str, host: str, port: int) -> None:
    try:
        asyncio.run(_serve(app, banner, host, port))
    except OSError as exc:
        print(f"edgeproxy: {command}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


async def _serve(app: web.Application, banner: str, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()  # raises OSError when the port cannot be bound
        print(f"{banner} on http://{host}:{port}", flush=True)
        await asyncio.Event().wait()  # until interrupted
    finally:
        await runner.cleanup()


class Faults:
    """The faults a fake injects, set with `POST /_fake/faults` (a JSON object with a "mode" of `modes`, optional
    "paths": path prefixes, and "count": the next N matching requests) and cleared with `DELETE /_fake/faults`.
    `default_paths`: per mode, the paths a fault without "paths" applies to (default: all); `check`: the fake's
    own rule for a fault's other fields (a message when it is refused)."""

    def __init__(
        self,
        modes: frozenset[str],
        default_paths: Mapping[str, tuple[str, ...]] | None = None,
        check: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.modes = modes
        self.default_paths = default_paths or {}
        self.check = check
        self.active: list[dict[str, Any]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/_fake/faults", self.set)
        app.router.add_delete("/_fake/faults", self.clear)

    async def set(self, request: web.Request) -> web.Response:
        try:
            fault = await request.json()
        except ValueError:
            return web.json_response({"error": "fault must be a JSON object"}, status=400)
        if not isinstance(fault, dict) or fault.get("mode") not in self.modes:
            return web.json_response({"error": f"mode must be one of {sorted(self.modes)}"}, status=400)
        problem = self.check(fault) if self.check is not None else None
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        self.active.append(fault)
        return web.json_response({"faults": self.active})

    async def clear(self, request: web.Request) -> web.Response:
        self.active.clear()
        return web.json_response({"faults": []})

    def take(self, path: str, applies: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The first fault for `path` (and, with `applies`, that request), counting it down; None: no fault."""
        for fault in self.active:
            paths = fault.get("paths") or self.default_paths.get(fault["mode"])
            if paths and not any(path.startswith(p) for p in paths):
                continue
            if applies is not None and not applies(fault):
                continue
            if "count" in fault:
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.active.remove(fault)
            return fault
        return None
