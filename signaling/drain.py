"""A replica's graceful way out, on SIGTERM.

1. At once: `/readyz` answers 503 `draining` (the balancer stops sending callers) and
   newcomers are refused (`over_capacity`, reason `draining`); the replica's capacity in
   Redis drops to 0, so refusals elsewhere do not point here.
2. Text sessions end after the reply in progress; voice calls go on until they end, or
   until `[server] drain_timeout_s` has passed.
3. Then every remaining session ends after its reply in progress, with `bye` reason
   `draining` and `reconnect: true`: its resume token stays valid, so the client comes
   back on another replica. Each call's unsaved turns are flushed to Redis as it ends.
4. The server stops and the process exits 0.

A second SIGTERM or SIGINT exits at once. uvicorn's own handling would close every
socket on the first signal, cutting calls mid-sentence, so `DrainingServer` takes it over.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

# A session still making its reply after the drain timeout gets this long to finish it.
REPLY_GRACE_S = 15.0


async def drain(services: Any, timeout_s: float) -> None:
    """Refuse newcomers, let calls end (up to `timeout_s`), then send everyone still here away."""
    started = time.monotonic()
    await services.admission.withdraw()
    sockets = set(services.sockets)
    log.info(
        "draining: %d voice call(s) and %d text session(s); calls may go on for %.0f s",
        sum(s.voice for s in sockets), sum(not s.voice for s in sockets), timeout_s,
    )
    async with asyncio.TaskGroup() as tasks:
        for socket in sockets:
            if not socket.voice:
                tasks.create_task(_send_away(socket), name="drain-text-session")
        while any(s.voice for s in services.sockets) and time.monotonic() - started < timeout_s:
            await asyncio.sleep(0.1)
        for socket in list(services.sockets):
            if socket.voice:
                tasks.create_task(_send_away(socket), name="drain-voice-call")
    log.info("drained in %.1f s", time.monotonic() - started)


async def _send_away(socket: Any) -> None:
    try:
        async with asyncio.timeout(REPLY_GRACE_S):
            await socket.drain()
    except TimeoutError:
        log.warning("draining: a session did not finish its reply within %.0f s; it is cut", REPLY_GRACE_S)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with SIGTERM and SIGINT taken over: the first drains, a second exits at once."""

    def __init__(self, config: uvicorn.Config, *, app: Any, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._draining: asyncio.Task[None] | None = None  # kept, so the task is not collected

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Never passed on to uvicorn: it would record the signal and raise it again after the
        # shutdown, and the process would end killed by SIGTERM instead of exiting 0.
        services = getattr(self._app.state, "services", None)
        if self._signalled or self._loop is None or services is None:
            log.info("%s: exiting now", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = self._signalled
            return
        self._signalled = True
        log.info("%s: draining (a second signal exits at once)", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._begin_drain, services)

    def _begin_drain(self, services: Any) -> None:
        self._draining = asyncio.create_task(self._drain_then_exit(services), name="drain")

    async def _drain_then_exit(self, services: Any) -> None:
        try:
            await drain(services, self._drain_timeout_s)
        except Exception:
            log.exception("draining failed; exiting")
        self.should_exit = True
