"""A task that runs every so often in the background of a process (retention, tombstones, write-behind flushes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

log = logging.getLogger("edgeproxy")


class Periodic(ABC):
    """`run_once` every `interval` seconds in the background, from `start` to `stop`; a failed run (the store away)
    is logged as `what` failed and tried again next time, never ending the loop."""

    what = "a periodic task"
    logger = log  # where a failed run is logged: each task its own module's logger

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def run_once(self) -> int:
        """One run; returns how many items it handled."""

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                self.logger.warning("%s failed, retrying in %.0f s: %s", self.what, self.interval, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
