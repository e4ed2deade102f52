"""`serve --workers N`: N processes sharing the port with SO_REUSEPORT, one supervisor.

The supervisor owns what must happen once: with Admin sync it polls and writes `snapshot_dir` (workers serve
`snapshot_dir/snapshot.msgpack` and reload it within a second of a change, so all switch to the same version);
a webhook on any worker asks the supervisor (SIGHUP) to sync now. Signals to the supervisor:
    SIGTERM / SIGINT   every worker drains its in-flight requests and exits
    SIGHUP             sync now (Admin) or reload the rules (workers)
    SIGUSR2            rolling restart: a new worker starts and is ready before an old one drains and exits
A worker that dies unexpectedly is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from edgeproxy.runtime.config import ProxyConfig, listen_address
from edgeproxy.runtime.listen import ListenError, bind_sockets

log = logging.getLogger("edgeproxy.supervisor")
SUPERVISOR_ENV = "EDGEPROXY_SUPERVISOR_PID"
READY_TIMEOUT = 30.0


class WorkerRun(Protocol):
    """What a worker process runs (`serve.run`): serve `config` as worker `worker`, put a message on `ready` once
    listening, return the exit code. Passed in rather than imported, so that serve and workers import each other
    in one direction only."""

    def __call__(self, config: ProxyConfig, *, worker: int | None = None, ready: Any = None) -> int: ...


def _worker_main(run: WorkerRun, config: ProxyConfig, index: int, ready: Any) -> None:
    os.environ[SUPERVISOR_ENV] = str(os.getppid())
    code = run(config, worker=index, ready=ready)
    raise SystemExit(code)


def claim_port(host: str, port: int) -> list[Any]:
    """The supervisor's hold on the port while it syncs and starts its workers. It is first bound alone (no
    SO_REUSEPORT), so a port that any other server holds fails, even one of another `--workers` edgeproxy that
    binds with SO_REUSEPORT (which a reuse-port bind would silently share); then it is held with SO_REUSEPORT so
    that the workers can bind it too. ListenError when busy."""
    for sock in bind_sockets(host, port, reuse_port=False):
        sock.close()
    return bind_sockets(host, port, reuse_port=True)


class _WorkerFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"worker exited with {code}")
        self.code = code


class Supervisor:
    """`run_worker`: what each worker process runs (`serve.run`; a module-level function, as the spawned process
    imports it by name)."""

    def __init__(self, config: ProxyConfig, run_worker: WorkerRun) -> None:
        self.config = config
        self.run_worker = run_worker
        self.ctx = multiprocessing.get_context("spawn")
        self.ready = self.ctx.Queue()
        self.workers: list[BaseProcess] = []
        self.flags: set[str] = set()
        self.worker_config = config
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._poller: Any = None

    # -- Admin sync, once for all workers -------------------------------------------------------------

    def _start_sync(self) -> None:
        if self.config.rules:
            return
        from edgeproxy.engine.useragent import UserAgentClassifier
        from edgeproxy.runtime.snapshots import SnapshotHolder
        from edgeproxy.sync.client import ManagementClient, admin_base_url
        from edgeproxy.sync.poller import AdminSource, SnapshotPoller

        client = ManagementClient(
            admin_base_url(self.config.admin_url or None, self.config.region or None), self.config.project_uid,
            authtoken=self.config.authtoken or None, oauth_token=self.config.oauth_token or None,
            timeout=self.config.sync_timeout,
        )  # fmt: skip
        source = AdminSource(client, Path(self.config.snapshot_dir), UserAgentClassifier())
        self._poller = SnapshotPoller(SnapshotHolder(), source, interval=self.config.sync_interval)
        loop = asyncio.new_event_loop()
        self._sync_loop = loop
        outcome = loop.run_until_complete(self._poller.refresh("startup"))
        snapshot_file = Path(self.config.snapshot_dir) / "snapshot.msgpack"
        if outcome["result"] == "rejected" and not snapshot_file.exists():
            raise SystemExit(f"edgeproxy: Admin sync failed and no last good snapshot: {outcome['error']}")
        self.worker_config = replace(
            self.config, rules=str(snapshot_file), watch=True, admin_url="", region="", project_uid="",
            authtoken="", oauth_token="",
        )  # fmt: skip
        threading.Thread(target=loop.run_until_complete, args=(self._poller.run(),), daemon=True).start()

    def _sync_now(self) -> None:
        if self._poller is not None and self._sync_loop is not None:
            self._sync_loop.call_soon_threadsafe(self._poller.trigger)
        else:
            for worker in self.workers:
                if worker.pid:
                    os.kill(worker.pid, signal.SIGHUP)

    # -- workers -----------------------------------------------------------------------------------------

    def _spawn(self, index: int) -> BaseProcess:
        process = self.ctx.Process(target=_worker_main, args=(self.run_worker, self.worker_config, index, self.ready),
                                   name=f"edgeproxy-worker-{index}", daemon=False)  # fmt: skip
        process.start()
        return process

    def _wait_ready(self, count: int, starting: list[BaseProcess] | None = None) -> None:
        """Wait for `count` ready messages; a worker of `starting` that exits first fails the wait at once (its
        own log line says why) instead of after READY_TIMEOUT."""
        deadline = time.monotonic() + READY_TIMEOUT
        seen = 0
        while seen < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit("edgeproxy: workers did not become ready in time")
            try:
                self.ready.get(timeout=min(remaining, 0.25))
                seen += 1
            except Exception:  # queue.Empty
                dead = [w for w in starting or () if w.exitcode is not None]
                if dead and seen < count:
                    raise _WorkerFailed(dead[0].exitcode or 1) from None
                continue

    def _stop(self, worker: BaseProcess, timeout: float = 15.0) -> None:
        if worker.is_alive() and worker.pid:
            os.kill(worker.pid, signal.SIGTERM)
        worker.join(timeout)
        if worker.is_alive():
            worker.kill()
            worker.join()

    def rolling_restart(self) -> None:
        log.info("rolling restart of %d workers", len(self.workers))
        for position, old in enumerate(list(self.workers)):
            new = self._spawn(position)
            try:
                self._wait_ready(1, [new])
            except _WorkerFailed as exc:
                log.error("rolling restart stopped: a new worker exited with %s; the old ones keep serving", exc.code)
                return
            self.workers[position] = new
            self._stop(old)  # drains in-flight requests; the new worker already accepts
        log.info("rolling restart done")

    def run(self) -> int:
        flags = {signal.SIGTERM: "stop", signal.SIGINT: "stop", signal.SIGHUP: "sync", signal.SIGUSR2: "restart"}

        def on_signal(signum: int, _frame: object) -> None:
            self.flags.add(flags[signal.Signals(signum)])

        for sig in flags:
            signal.signal(sig, on_signal)
        try:  # the port first, so that a busy one fails before any sync (workers bind it again, SO_REUSEPORT)
            probe = claim_port(*listen_address(self.config))
        except ListenError as exc:
            log.error("%s (setting 'listen'; is another server on that port?)", exc)
            return 2
        try:
            self._start_sync()
            self.workers = [self._spawn(i) for i in range(self.config.workers)]
            self._wait_ready(len(self.workers), self.workers)
        except _WorkerFailed as exc:
            log.error("a worker exited with %s while starting (its error is above); stopping", exc.code)
            for worker in self.workers:
                self._stop(worker)
            return 2
        finally:
            for sock in probe:
                sock.close()
        log.info("edgeproxy: %d workers ready on %s (pids %s)", len(self.workers), self.config.listen,
                 ", ".join(str(w.pid) for w in self.workers))  # fmt: skip
        while True:
            time.sleep(0.2)
            if "stop" in self.flags:
                break
            if "sync" in self.flags:
                self.flags.discard("sync")
                self._sync_now()
            if "restart" in self.flags:
                self.flags.discard("restart")
                self.rolling_restart()
            for position, worker in enumerate(self.workers):
                if not worker.is_alive():
                    log.error("worker %s exited with %s; starting a new one", worker.pid, worker.exitcode)
                    self.workers[position] = self._spawn(position)
        log.info("stopping %d workers (draining)", len(self.workers))
        for worker in self.workers:
            if worker.is_alive() and worker.pid:
                os.kill(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            self._stop(worker)
        return 0
