"""A supervised child process: started, checked for readiness, restarted when it dies, stopped.

A child that dies is logged with its exit code and the tail of its log, and
restarted; after `max_restarts` failures in a row it stays down and `ready` is
False, so /readyz reports it instead of the server hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from parley.errors import ServiceError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _before_exec(nice: int) -> Callable[[], None]:
    def prepare() -> None:
        # If Parley is killed outright, the kernel sends the child SIGTERM rather than leaving it orphaned.
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if nice:
            os.nice(nice)  # before exec, so every thread the child starts inherits it

    return prepare


class ChildProcess:
    """One supervised child; `start()` returns once `probe()` says it is ready.

    nice: added to the child's niceness, so it yields the CPU to Parley's own work.
    env: the child's environment (default: this process's).
    stop_timeout_s: how long `stop()` lets it exit after SIGTERM before SIGKILL (a replica that
        drains needs its drain timeout and more).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        probe: Callable[[], Awaitable[bool]],
        log_path: Path,
        ready_timeout_s: float = 30.0,
        max_restarts: int = 3,
        nice: int = 0,
        env: Mapping[str, str] | None = None,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.name = name
        self.stop_timeout_s = stop_timeout_s
        self.nice = nice
        self.env = dict(env) if env is not None else None
        self.argv = list(argv)
        self.log_path = log_path
        self._probe = probe
        self._ready_timeout_s = ready_timeout_s
        self._max_restarts = max_restarts
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._failed: str | None = None
        self.restarts = 0
        self.stable_s = 10.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def ready(self) -> bool:
        """True while the process runs and has not exhausted its restarts."""
        return self._failed is None and self._process is not None and self._process.returncode is None

    @property
    def failure(self) -> str | None:
        """Why the child is down for good, or None."""
        return self._failed

    async def start(self) -> None:
        """Spawn the child and wait for it to answer; raise ServiceError with its log tail otherwise."""
        if self._process is not None:
            raise ServiceError(f"{self.name} is already started")
        self._stopping = False
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after `stop_timeout_s`). Safe to call twice."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            # Wait for it to end without raising its CancelledError (ours still propagates).
            await asyncio.wait([self._supervisor])
            self._supervisor = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            try:
                self._process = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self.env,
                    preexec_fn=_before_exec(self.nice),
                    # Out of the terminal's process group: Ctrl-C reaches only Parley, which stops
                    # its children in order (a child killed by the same Ctrl-C would be restarted).
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServiceError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        deadline = asyncio.get_running_loop().time() + self._ready_timeout_s
        while True:
            if self._process.returncode is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self._process.returncode} while starting; "
                    f"log {self.log_path}: {self.log_tail()}"
                )
            if await self._probe():
                log.info("%s ready (pid %d)", self.name, self._process.pid)
                return
            if asyncio.get_running_loop().time() > deadline:
                self._process.kill()
                await self._process.wait()
                raise ServiceError(
                    f"{self.name} did not become ready within {self._ready_timeout_s:.0f} s; "
                    f"log {self.log_path}: {self.log_tail()}"
                )
            # Either the child exits (checked above) or answers; a short wait between probes is the
            # simplest correct way to wait for a port to open in a process we do not control.
            await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        # Failures in a row: a child that ran for `stable_s` before dying starts the count afresh,
        # one that dies straight after every restart is a crash loop and is given up on.
        failures = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            failures = 1 if loop.time() - started > self.stable_s else failures + 1
            log.error(
                "%s (pid %d) died with exit code %s; log %s: %s",
                self.name, self._process.pid, code, self.log_path, self.log_tail(),
            )
            if failures > self._max_restarts:
                self._failed = f"{self.name} died {failures} times in a row (last exit code {code})"
                log.error("%s: giving up; Parley reports not ready", self._failed)
                return
            await asyncio.sleep(min(0.2 * 2**failures, 5.0))
            started = loop.time()
            try:
                await self._spawn()
            except ServiceError as exc:
                log.error("%s", exc)
                continue
            self.restarts += 1
            log.warning("%s restarted (restart %d)", self.name, self.restarts)

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the child's log, on one line, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 4096))
                tail = f.read().decode(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in tail) or "(empty log)"
