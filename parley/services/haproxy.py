"""haproxy in front of Parley's replicas: its configuration, its process, and its runtime API.

One HTTP frontend balances WebSockets and plain requests over the replicas with
`leastconn` (a call holds its replica for minutes, so the count of open connections
is what says which replica is least busy). Each replica is checked with
`GET /readyz` every second: a replica that drains on SIGTERM answers 503 and leaves
the rotation within about 1.5 s, while the calls it already holds go on.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from parley.errors import ServiceError
from parley.services.child import ChildProcess

BACKEND = "replicas"


@dataclass(frozen=True, slots=True, kw_only=True)
class BalancerConfig:
    """The haproxy in front of the replicas.

    binary: the haproxy executable (Debian's package; `make cluster` installs it).
    host, port: the frontend, where clients connect.
    check_interval_ms: how often each replica's /readyz is asked.
    fall: failed checks in a row that take a replica out of the rotation. Two, not one:
        a single slow answer from a busy replica does not eject it.
    rise: passed checks in a row that bring it back.
    tunnel_timeout_s: how long an upgraded WebSocket may stay idle (the server pings every 30 s).
    maxconn: connections haproxy accepts at once.
    """

    binary: str = "/usr/sbin/haproxy"
    host: str = "127.0.0.1"
    port: int = 8000
    check_interval_ms: int = 1000
    fall: int = 2
    rise: int = 2
    tunnel_timeout_s: int = 3600
    maxconn: int = 4096


def server_line(config: BalancerConfig, name: str, port: int) -> str:
    """One replica's `server` line; the runtime API's `add server` takes the same arguments.

    No `on-marked-down shutdown-sessions`: a replica marked down because it drains still
    finishes its calls and then tells each client to reconnect, which lands on another replica.
    """
    inter = config.check_interval_ms
    # fastinter: once a check has failed, the next comes sooner, so a draining replica is out
    # after inter + fastinter rather than fall * inter.
    return (
        f"{name} 127.0.0.1:{port} check inter {inter}ms fastinter {max(100, inter // 2)}ms "
        f"downinter {inter}ms fall {config.fall} rise {config.rise}"
    )


def render(config: BalancerConfig, *, servers: dict[str, int], stats_socket: Path) -> str:
    """haproxy.cfg for `servers` (name to port on 127.0.0.1)."""
    lines = "\n".join(f"    server {server_line(config, name, port)}" for name, port in servers.items())
    return f"""\
# Written by `parley cluster` at every start; edits are lost.
global
    log stdout format raw local0 info
    stats socket {stats_socket} mode 600 level admin
    stats timeout 30s
    # A second cluster on the same port fails to bind instead of sharing it (haproxy's default).
    noreuseport
    maxconn {config.maxconn}

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # The replicas rate-limit per client address; uvicorn trusts this header from 127.0.0.1.
    option forwardfor
    # A replica killed outright refuses connections, or resets those its dying socket had
    # accepted, until its checks fail: the request goes to another replica instead. Every
    # request Parley serves is a GET (the WebSocket upgrade too), so sending it again is safe.
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response
    maxconn {config.maxconn}
    timeout connect 2s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout client 60s
    timeout server 60s
    # Once a WebSocket is upgraded haproxy only relays bytes, and this replaces the two above.
    # No `option http-server-close`: haproxy switches an upgraded connection to a tunnel by itself.
    timeout tunnel {config.tunnel_timeout_s}s
    timeout client-fin 5s
    timeout check 2s

frontend parley
    bind {config.host}:{config.port}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    http-request disable-l7-retry unless METH_GET
{lines}
"""


@dataclass(frozen=True, slots=True)
class ServerState:
    """One backend server as haproxy's `show stat` reports it.

    status: UP, DOWN, MAINT, or a transition such as "UP 1/2" (failing, still routed)
    or "DOWN 1/2" (recovering, not yet routed).
    current, total: its connections now and since haproxy started.
    """

    status: str
    current: int
    total: int

    @property
    def routed(self) -> bool:
        """New connections may be sent to it."""
        return self.status.startswith("UP")


class Balancer:
    """A supervised haproxy on `config.port`, configured for `servers`, and its runtime API."""

    def __init__(self, config: BalancerConfig, *, state_dir: Path, log_dir: Path) -> None:
        self.config = config
        self.config_path = state_dir / "haproxy.cfg"
        self.stats_socket = state_dir / "haproxy.sock"
        self.log_path = log_dir / "haproxy.log"
        self.url = f"http://{config.host}:{config.port}"
        self._child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    async def start(self, servers: dict[str, int]) -> None:
        """Write the configuration and start haproxy; returns once the frontend accepts connections."""
        if shutil.which(self.config.binary) is None:
            raise ServiceError(f"haproxy not found at {self.config.binary}: `make cluster` installs it")
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render(self.config, servers=servers, stats_socket=self.stats_socket))
        self.stats_socket.unlink(missing_ok=True)
        # -db: in the foreground, not daemonised, so it stays our child and its log is its stdout.
        argv = [self.config.binary, "-db", "-f", str(self.config_path)]
        self._child = ChildProcess("haproxy", argv, probe=self._accepting, log_path=self.log_path, ready_timeout_s=10)
        await self._child.start()

    async def stop(self) -> None:
        """Stop haproxy (its open connections close); safe to call twice."""
        if self._child is not None:
            await self._child.stop()
            self._child = None

    async def command(self, line: str) -> str:
        """One command on haproxy's runtime API (the stats socket); returns its answer."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.stats_socket))
        except OSError as exc:
            raise ServiceError(f"haproxy's runtime API at {self.stats_socket}: {exc}") from exc
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            # Without `prompt`, haproxy answers one command and closes the connection.
            return (await reader.read()).decode()
        finally:
            writer.close()
            await writer.wait_closed()

    async def servers(self) -> dict[str, ServerState]:
        """The replicas' servers by name, as haproxy sees them now."""
        text = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return {
            row["svname"]: ServerState(row["status"], int(row["scur"] or 0), int(row["stot"] or 0))
            for row in rows
            if row.get("pxname") == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def add_server(self, name: str, port: int) -> None:
        """Add a replica to the running haproxy, checks on."""
        for line in (
            f"add server {BACKEND}/{server_line(self.config, name, port)}",
            f"enable health {BACKEND}/{name}",
            f"enable server {BACKEND}/{name}",
        ):
            answer = (await self.command(line)).strip()
            if answer and "New server registered" not in answer:
                raise ServiceError(f"haproxy refused `{line}`: {answer}")

    async def disable_server(self, name: str) -> None:
        """Send a replica no new connections (maintenance); those it has go on."""
        answer = (await self.command(f"disable server {BACKEND}/{name}")).strip()
        if answer:
            raise ServiceError(f"haproxy refused to disable {name}: {answer}")

    async def remove_server(self, name: str, *, timeout_s: float = 10.0) -> None:
        """Delete a disabled replica from the running haproxy, once its connections have closed."""

        async def idle() -> bool:
            servers = await self.servers()
            return name not in servers or servers[name].current == 0

        await wait_until(idle, timeout_s=timeout_s, what=f"{name}'s connections to close")
        answer = (await self.command(f"del server {BACKEND}/{name}")).strip()
        if answer and "Server deleted" not in answer:
            raise ServiceError(f"haproxy refused to delete {name}: {answer}")

    async def wait_routed(self, names: Sequence[str], *, timeout_s: float) -> None:
        """Wait until every one of `names` has passed its checks (status UP)."""

        async def all_up() -> bool:
            servers = await self.servers()
            return all(name in servers and servers[name].status == "UP" for name in names)

        await wait_until(all_up, timeout_s=timeout_s, what=f"haproxy to route to {', '.join(names)}")

    async def _accepting(self) -> bool:
        # The runtime API answering tells it is our haproxy (not something else on the port);
        # the frontend accepting is what clients need.
        try:
            await self.command("show info")
        except ServiceError:
            return False
        try:
            _, writer = await asyncio.open_connection(self.config.host, self.config.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True


async def wait_until(condition: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Wait for `condition()` to be true; ServiceError naming `what` after `timeout_s`."""
    # haproxy's view changes on its own schedule (a check a second) and offers nothing to wait
    # on, so it is read again every 100 ms until the deadline.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await condition():
        if loop.time() > deadline:
            raise ServiceError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
