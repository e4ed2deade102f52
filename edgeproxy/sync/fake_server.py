"""How the bundled fakes (fake_admin.py, fake_edge_api.py) run: an aiohttp app on HOST:PORT until interrupted, one
"serving" line once the port is bound, and a port that cannot be bound as one line on stderr and exit status 2."""

from __future__ import annotations

import asyncio
import sys

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
