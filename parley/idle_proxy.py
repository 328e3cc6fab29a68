"""A TCP proxy that drops idle flows, as a NAT or a stateful firewall does.

Every connection made to the proxy is forwarded to one target. A flow that
carries no byte in either direction for `idle_s` is dropped: both sides are
reset at once. (A real NAT forgets the mapping silently and each side learns of
it at its next send; resetting both is the same loss, found out sooner.) A call's
WebSocket survives it only if something, a keepalive, crosses it more often than
every `idle_s`. Only TCP goes through it: a call's RTP takes its own UDP path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

_CHUNK = 65536


class _Activity:
    """When a byte last crossed a flow, either way."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self.at


class IdleDroppingProxy:
    """Forwards TCP from a local port to `target`, dropping flows idle for `idle_s`.

    Use `running()`; `url` is then the proxy's http:// address. `flows` counts the
    connections taken, `dropped` those dropped for being idle.
    """

    def __init__(self, target: tuple[str, int], *, idle_s: float, host: str = "127.0.0.1", port: int = 0) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle_s must be positive, not {idle_s}")
        self.target = target
        self.idle_s = idle_s
        self.host = host
        self.port = port
        self.flows = 0
        self.dropped = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[IdleDroppingProxy]:
        """Listen until the block ends; then close the listener and every flow still open."""
        server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.flows += 1
        task = asyncio.create_task(self._flow(client_reader, client_writer), name=f"idle-proxy-flow-{self.flows}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flow(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.info("idle proxy: cannot reach %s:%d (%s)", *self.target, exc)
            client_writer.transport.abort()
            return
        activity = _Activity()
        try:
            async with asyncio.TaskGroup() as flow:
                pipes = [
                    flow.create_task(self._pipe(client_reader, server_writer, activity), name="idle-proxy-up"),
                    flow.create_task(self._pipe(server_reader, client_writer, activity), name="idle-proxy-down"),
                ]
                watch = flow.create_task(self._watch(activity), name="idle-proxy-watch")
                done, _ = await asyncio.wait([*pipes, watch], return_when=asyncio.FIRST_COMPLETED)
                if watch in done:
                    self.dropped += 1
                    log.info("idle proxy: dropped a flow idle for %.0f s", self.idle_s)
                for task in (*pipes, watch):
                    task.cancel()
        finally:
            # Dropped or ended, neither side may linger: an idle drop resets both (abort).
            client_writer.transport.abort()
            server_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity) -> None:
        """Copy one direction until its end or an error; either ends the flow."""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(_CHUNK):
                activity.at = time.monotonic()
                writer.write(data)
                await writer.drain()

    async def _watch(self, activity: _Activity) -> None:
        """Return once no byte has crossed for idle_s."""
        while (idle := activity.idle_s()) < self.idle_s:
            await asyncio.sleep(self.idle_s - idle)
