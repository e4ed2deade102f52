"""A progress bar on stderr, only when stderr is a terminal (pipes, CI logs and `--json` consumers see nothing)."""

from __future__ import annotations

import os
import shutil
import time
from typing import IO

from edgeproxy.replay.readers import OpenSource

REFRESH_SECONDS = 0.2


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


class Progress:
    def __init__(self, stream: IO[str], paths: list[str], *, enabled: bool | None = None) -> None:
        self._stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self._sizes: dict[str, int | None] = {}
        for path in paths:
            try:
                self._sizes[path] = os.stat(path).st_size if path != "-" else None
            except OSError:
                self._sizes[path] = None
        self._total = sum(s for s in self._sizes.values() if s) if all(self._sizes.values()) else None
        self._done_bytes = 0
        self._current: OpenSource | None = None
        self._started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def open_source(self, source: OpenSource) -> None:
        if self._current is not None:
            self._done_bytes += self._sizes.get(self._current.path) or 0
        self._current = source

    def update(self, records: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < REFRESH_SECONDS:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        rate = f"{_human(records / elapsed)} req/s"
        name = os.path.basename(self._current.path) if self._current is not None else ""
        width = shutil.get_terminal_size((80, 20)).columns
        if self._total:
            consumed = self._done_bytes + (self._current.stream.consumed if self._current is not None else 0)
            fraction = min(1.0, consumed / self._total)
            bar_width = max(10, min(40, width - 60))
            filled = int(fraction * bar_width)
            eta = (elapsed / fraction - elapsed) if fraction > 0 else 0.0
            line = (
                f"[{'#' * filled}{'.' * (bar_width - filled)}] {fraction * 100:5.1f}% {name} "
                f"{_human(records)} req {rate} eta {eta:.0f}s"
            )
        else:
            line = f"{name} {_human(records)} requests, {rate}"
        self._stream.write("\r" + line[: width - 1].ljust(min(width - 1, len(line) + 2)))
        self._stream.flush()
        self._drawn = True

    def finish(self, records: int) -> None:
        if not self.enabled:
            return
        self.update(records, force=True)
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
