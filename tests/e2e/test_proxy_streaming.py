"""Bodies stream through the proxy both ways without piling up in its memory; WebSockets are bridged."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import pytest

from .conftest import TRUSTED, Launcher, Service, proc_rss_bytes

pytestmark = pytest.mark.e2e

GIB = 1 << 30
RSS_BUDGET = 64 << 20
PERIOD = 251  # examples/origin/server.js: byte i of /download is i % 251
BLOCK = bytes(i % PERIOD for i in range(PERIOD * 4177))  # ~1 MiB, a whole number of periods


def pattern_chunks(total: int) -> Iterator[bytes]:
    """The /download body, byte i = i % 251, in ~1 MiB pieces."""
    sent = 0
    while sent < total:
        piece = BLOCK if total - sent >= len(BLOCK) else BLOCK[: total - sent]
        sent += len(piece)
        yield piece


@functools.cache
def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(total):
        digest.update(piece)
    return digest.hexdigest()


class PeakRss:
    """Samples a process's VmRSS in a background thread; `peak` is the highest value seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = proc_rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc_rss_bytes(self.pid))

    @contextmanager
    def watching(self) -> Iterator[PeakRss]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, proc_rss_bytes(self.pid))


async def _download(url: str, pause_at: int | None = None, pause: float = 0.0) -> tuple[int, str, int]:
    """Read the whole body, hashing it; optionally stop reading for `pause` seconds after `pause_at` bytes
    (a slow client: the proxy must apply backpressure to the origin instead of buffering)."""
    timeout = aiohttp.ClientTimeout(total=120, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        digest = hashlib.sha256()
        received = 0
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
            if pause_at is not None and received >= pause_at:
                pause_at = None
                await asyncio.sleep(pause)
        return received, digest.hexdigest(), int(response.headers.get("Content-Length", -1))


async def _upload(url: str, total: int) -> dict[str, object]:
    async def body() -> AsyncIterator[bytes]:
        for piece in pattern_chunks(total):
            yield piece

    timeout = aiohttp.ClientTimeout(total=120, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, data=body()) as response:
        assert response.status == 200, await response.text()
        result: dict[str, object] = await response.json()
        return result


@pytest.fixture
def stream_proxy(launch: Launcher, node_origin: Service) -> Service:
    """A proxy of its own, so its memory is not shared with other tests' traffic."""
    return launch.proxy(node_origin, *TRUSTED)


def test_one_gib_download_and_upload_stream_through_with_bounded_proxy_memory(stream_proxy: Service) -> None:
    expected = pattern_sha256(GIB)
    # Warm up both directions so lazily allocated buffers are part of the baseline.
    assert asyncio.run(_download(f"{stream_proxy.url}/download?bytes={8 << 20}"))[1] == pattern_sha256(8 << 20)
    assert asyncio.run(_upload(f"{stream_proxy.url}/upload", 8 << 20))["sha256"] == pattern_sha256(8 << 20)
    baseline = proc_rss_bytes(stream_proxy.pid)

    with PeakRss(stream_proxy.pid).watching() as rss:
        received, download_sha, length = asyncio.run(
            _download(f"{stream_proxy.url}/download?bytes={GIB}", pause_at=128 << 20, pause=2.0)
        )
        uploaded = asyncio.run(_upload(f"{stream_proxy.url}/upload", GIB))

    assert (received, length) == (GIB, GIB)
    assert download_sha == expected
    assert uploaded == {"bytes": GIB, "sha256": expected}
    growth = rss.peak - baseline
    assert growth < RSS_BUDGET, f"proxy RSS grew by {growth / (1 << 20):.1f} MiB (baseline {baseline >> 20} MiB)"


def test_chunked_download_without_content_length_streams_through(proxy: Service) -> None:
    size = (64 << 20) + 12345
    received, sha, length = asyncio.run(_download(f"{proxy.url}/download?bytes={size}&chunked=1"))
    assert (received, sha) == (size, pattern_sha256(size))
    assert length == -1, "no Content-Length was invented for a chunked origin response"


def test_websocket_echo_through_the_proxy_for_text_and_binary_messages(proxy: Service) -> None:
    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{proxy.url}/ws", protocols=("e2e.echo", "other"), max_msg_size=0) as ws,
        ):
            assert ws.protocol == "e2e.echo"
            texts = ["hello", "héllo ✓ — unicode", "x" * 70_000]
            blobs = [b"\x00\x01\x02\xff", os.urandom(256 << 10), os.urandom(4 << 20)]
            for text, blob in zip(texts, blobs, strict=True):
                await ws.send_str(text)
                await ws.send_bytes(blob)
                reply_text = await ws.receive(timeout=10)
                assert reply_text.type == aiohttp.WSMsgType.TEXT and reply_text.data == text
                reply_blob = await ws.receive(timeout=10)
                assert reply_blob.type == aiohttp.WSMsgType.BINARY and reply_blob.data == blob
            await ws.close()
            assert ws.close_code == aiohttp.WSCloseCode.OK

    asyncio.run(scenario())
