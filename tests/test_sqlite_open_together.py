"""Several processes opening one new SQLite state file at once (`serve --workers N` starting): each one opens it,
none fails with "database is locked" (SQLite's busy timeout does not cover switching a new file to WAL)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from edgeproxy.store.base import AttributeLimits
from edgeproxy.store.sqlite_store import SqliteStore


def open_and_close(path: str, start: multiprocessing.synchronize.Event) -> None:
    async def run() -> None:
        store = SqliteStore(path, AttributeLimits())
        await store.start()
        await store.close()

    start.wait()
    asyncio.run(run())


def test_processes_opening_one_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(12):
        path = str(tmp_path / f"state-{attempt}.db")
        start = context.Event()
        processes = [context.Process(target=open_and_close, args=(path, start)) for _ in range(4)]
        for process in processes:
            process.start()
        start.set()  # all at once
        for process in processes:
            process.join(30)
        assert [process.exitcode for process in processes] == [0, 0, 0, 0], f"attempt {attempt}"
