"""A plain aiohttp reverse proxy: the baseline edgeproxy's throughput is measured against.

    python benchmarks/passthrough.py --origin http://127.0.0.1:3000 --listen 127.0.0.1:8081

What a competent pass-through does and nothing more: one `ClientSession` with a pooled keep-alive
`TCPConnector`, hop-by-hop headers removed both ways (RFC 9110 §7.6.1, including names listed in `Connection`),
X-Forwarded-For/Proto/Host set, bodies streamed both ways, HEAD/204/304 without bodies, uvloop when importable
(as `edgeproxy.runtime.serve` does), no access log. No personalization, routing, ops endpoints or WebSockets, so
the gap between this and edgeproxy is the price of edgeproxy's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip
NO_BODY_STATUSES = frozenset({204, 304})
SESSION = web.AppKey("session", aiohttp.ClientSession)


def end_to_end(headers: CIMultiDictProxy[str], drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    removed = HOP_BY_HOP | drop
    connection = headers.get("Connection")
    if connection:
        removed = removed | {token.strip().lower() for token in connection.split(",")}
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in removed)


def build_app(origin: str, pool_size: int) -> web.Application:
    base = URL(origin.rstrip("/"))
    origin_prefix = f"{base.scheme}://{base.raw_authority}{base.raw_path.rstrip('/')}"
    origin_host = base.raw_authority
    app = web.Application(client_max_size=0)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = end_to_end(request.headers, frozenset({"host"}))
        peer = request.remote or ""
        incoming = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{incoming}, {peer}" if incoming else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers["Host"] = origin_host
        target = URL(origin_prefix + request.raw_path, encoded=True)
        try:
            upstream = await request.app[SESSION].request(
                request.method,
                target,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                compress=None,
            )
        except (TimeoutError, aiohttp.ClientError, OSError):
            return web.Response(status=502, text="bad gateway\n")
        try:
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers)
            )
            no_body = request.method == "HEAD" or upstream.status in NO_BODY_STATUSES or upstream.status < 200
            if upstream.content_length is not None and not no_body:
                response.content_length = upstream.content_length
            await response.prepare(request)
            if not no_body:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            upstream.release()

    app.router.add_route("*", "/{tail:.*}", forward)

    async def on_startup(app: web.Application) -> None:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=30, ttl_dns_cache=300),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=60),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def on_cleanup(app: web.Application) -> None:
        await app[SESSION].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(origin: str, host: str, port: int, pool_size: int) -> None:
    runner = web.AppRunner(build_app(origin, pool_size), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True, backlog=1024).start()
    print(f"passthrough listening on http://{host}:{port} -> {origin}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--origin", required=True, help="origin base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT (default 127.0.0.1:8081)")
    parser.add_argument("--pool-size", type=int, default=256, help="pooled keep-alive connections (default 256)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.origin, host or "127.0.0.1", int(port), args.pool_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
