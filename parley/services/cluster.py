"""A local cluster in one command: Redis, one llama-server, N replicas of `parley serve`, haproxy.

Each is a supervised child of one process, started in dependency order and stopped
in reverse: the replicas first (each drains on SIGTERM), then haproxy, the LLM and
Redis. The replicas share the one Redis (REDIS_URL) and the one LLM
(PARLEY_LLM_BASE_URL), so none starts a private one, and a session begun on one
replica can be resumed on another. README.md ("A local cluster") maps each part
to its Kubernetes counterpart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from parley.errors import ServiceError
from parley.server_process import free_port
from parley.services.child import ChildProcess
from parley.services.haproxy import Balancer, BalancerConfig
from parley.services.llm_server import EmbeddedLLMServer, embedded_llm_servers
from parley.services.redis_server import EmbeddedRedis
from parley.settings import Settings, load_settings
from signaling.drain import REPLY_GRACE_S
from signaling.sessions import session_key


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """A local cluster.

    replicas: `parley serve` processes behind haproxy.
    state_dir: Redis's append-only file, haproxy's configuration and socket, and `logs/`.
        Kept short: unix socket paths are limited to 107 bytes.
    replica_ready_timeout_s: how long a replica may take to load its models; replicas
        start at once and share the CPU, so more replicas take longer each.
    replica_restarts: restarts of a replica that dies before it stays down. 0: it stays
        down at once, as a failover test wants to see; `Cluster.add_replica` starts another.
    balancer: haproxy, and the frontend port clients connect to.
    """

    replicas: int = 3
    state_dir: str = "~/.local/state/parley/cluster"
    replica_ready_timeout_s: float = 180.0
    replica_restarts: int = 0
    balancer: BalancerConfig = BalancerConfig()

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"a cluster needs at least one replica, not {self.replicas}")


@dataclass(frozen=True, slots=True)
class Replica:
    """One `parley serve` of the cluster; `name` is its server's name in haproxy."""

    name: str
    port: int
    child: ChildProcess

    @property
    def url(self) -> str:
        """Its own address, bypassing haproxy (for /stats and /readyz)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def log_path(self) -> Path:
        return self.child.log_path


class Cluster:
    """The whole cluster; `async with Cluster(config) as cluster:` starts it and stops it.

    settings: the configuration the cluster's Redis and LLM come from (default: models.toml);
        an external `[redis] url` or `[llm] base_url` there is used instead of starting one.
    env: extra environment for every replica, e.g. PARLEY_* overrides.
    """

    def __init__(
        self,
        config: ClusterConfig = ClusterConfig(),
        *,
        settings: Settings | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or load_settings()
        self.state_dir = Path(config.state_dir).expanduser()
        self.log_dir = self.state_dir / "logs"
        self.replicas: list[Replica] = []
        self.redis: EmbeddedRedis | None = None
        self.llm_servers: list[EmbeddedLLMServer] = []
        self.balancer = Balancer(config.balancer, state_dir=self.state_dir, log_dir=self.log_dir)
        self.redis_url = self.settings.redis.url
        self.llm_url = self.settings.llm.base_url
        self._env = dict(env or {})
        self._stack = contextlib.AsyncExitStack()
        self._started = False
        self._serial = 0

    @property
    def url(self) -> str:
        """The frontend, where clients connect: http://host:port."""
        return self.balancer.url

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Shielded: a cancelled test or Ctrl-C must not leave processes behind.
        await asyncio.shield(self.stop())

    async def start(self) -> None:
        """Start everything; returns once haproxy routes to every replica. Raises ServiceError."""
        if self._started:
            raise ServiceError("the cluster is already started")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the replicas, then haproxy, the LLM and Redis. Safe to call twice."""
        await self._stack.aclose()

    async def add_replica(self) -> Replica:
        """Start one more replica (a replacement, or one more), routed once haproxy has checked it."""
        replica = self._new_replica()
        try:
            await replica.child.start()
            await self.balancer.add_server(replica.name, replica.port)
            await self.balancer.wait_routed([replica.name], timeout_s=10.0)
        except BaseException:
            self.replicas.remove(replica)
            await replica.child.stop()
            raise
        return replica

    async def remove_replica(self, replica: Replica) -> None:
        """Take a replica out of haproxy's rotation and stop it (SIGTERM: it drains, see `drain_timeout_s`)."""
        await self.balancer.disable_server(replica.name)
        await replica.child.stop()
        await self.balancer.remove_server(replica.name)
        self.replicas.remove(replica)

    async def serving(self, session_id: str) -> Replica:
        """The replica that owns the session now: the one its hash in Redis names (host:pid)."""
        redis = aioredis.from_url(self.redis_url)
        try:
            owner = await redis.hget(session_key(session_id), "replica")
        finally:
            await redis.aclose()
        if owner is None:
            raise ServiceError(f"session {session_id} is not in Redis")
        pid = int(owner.decode().rsplit(":", 1)[1])
        return next(r for r in self.replicas if r.pid == pid)

    async def replace_dead(self) -> None:
        """Start a replica for each one that died (a failover test or benchmark killed it)."""
        for replica in [r for r in self.replicas if not r.child.ready]:
            self.replicas.remove(replica)
            await self.balancer.disable_server(replica.name)
            await self.balancer.remove_server(replica.name)
            await self.add_replica()

    async def routed(self) -> list[Replica]:
        """The replicas haproxy sends new connections to now."""
        servers = await self.balancer.servers()
        return [r for r in self.replicas if r.name in servers and servers[r.name].routed]

    async def _start(self) -> None:
        _ensure_free(self.config.balancer.host, self.config.balancer.port)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Pushed in start order; the stack stops them in reverse: replicas, haproxy, LLM, Redis.
        services: dict[str, Coroutine[Any, Any, None]] = {}
        if not self.redis_url:
            self.redis = EmbeddedRedis(self.state_dir / "redis")
            self._stack.push_async_callback(self.redis.stop)
            services["start-redis"] = self._start_redis()
        if not self.llm_url:
            self.llm_servers = embedded_llm_servers(self.settings.llm_server, log_dir=self.log_dir)
            for server in self.llm_servers:
                self._stack.push_async_callback(server.stop)
            services["start-llm"] = self._start_llm()
        await _together(services)
        self._stack.push_async_callback(self.balancer.stop)
        self._stack.push_async_callback(self._stop_replicas)
        replicas = [self._new_replica() for _ in range(self.config.replicas)]
        await _together({f"start-{r.name}": r.child.start() for r in replicas})
        await self.balancer.start({r.name: r.port for r in self.replicas})
        await self.balancer.wait_routed([r.name for r in self.replicas], timeout_s=15.0)

    async def _start_redis(self) -> None:
        assert self.redis is not None
        self.redis_url = await self.redis.start()

    async def _start_llm(self) -> None:
        # One after another (embedded_llm_servers); the replicas get them all ([llm] base_url,
        # comma-separated) and spread their dialogs.
        self.llm_url = ",".join([await server.start() for server in self.llm_servers])

    def _new_replica(self) -> Replica:
        self._serial += 1
        name, port = f"replica-{self._serial}", free_port()
        env = {
            **os.environ,
            **self._env,
            # Shared by every replica: a replica given these starts no Redis or LLM of its own.
            # [llm] server_slots stays unset for a server of base_url, and must: each replica
            # would pin its dialogs to the same slot numbers of the one llama-server.
            "REDIS_URL": self.redis_url,
            "PARLEY_LLM_BASE_URL": self.llm_url,
            "PARLEY_SERVER_LOG_DIR": str(self.log_dir),
        }
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2.0) as client:
                    return (await client.get(f"{url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        child = ChildProcess(
            name,
            [sys.executable, "-m", "parley.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            probe=ready,
            log_path=self.log_dir / f"{name}.log",
            ready_timeout_s=self.config.replica_ready_timeout_s,
            max_restarts=self.config.replica_restarts,
            env=env,
            # SIGTERM makes a replica drain: its calls get the drain timeout, a reply in progress
            # then a grace to finish, and only a replica stuck past both is killed.
            stop_timeout_s=load_settings(environ=env).server.drain_timeout_s + REPLY_GRACE_S + 5.0,
        )
        replica = Replica(name, port, child)
        self.replicas.append(replica)
        return replica

    async def _stop_replicas(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for replica in self.replicas:
                tasks.create_task(replica.child.stop(), name=f"stop-{replica.name}")


async def _together(starts: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run `starts` (by task name) at once; the first failure cancels the others and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as tasks:
            for name, start in starts.items():
                tasks.create_task(start, name=name)
    except* Exception as group:
        raise group.exceptions[0] from None


def _ensure_free(host: str, port: int) -> None:
    # Checked before anything starts, so a second cluster fails at once with a clear reason.
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


async def run_cluster(config: ClusterConfig, *, settings: Settings) -> None:
    """`parley cluster`: start the cluster, print where everything is, stop it on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    cluster = Cluster(config, settings=settings)
    starting = asyncio.create_task(cluster.start(), name="cluster-start")
    waiting = asyncio.create_task(signalled.wait(), name="cluster-signal")
    try:
        await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a ServiceError saying what failed
            _describe(cluster)
            await waiting
            print("stopping the cluster", flush=True)
    finally:
        for task in (starting, waiting):
            task.cancel()
        await asyncio.wait({starting, waiting})
        await asyncio.shield(cluster.stop())


def _describe(cluster: Cluster) -> None:
    def line(name: str, address: str, log: Path | None) -> None:
        print(f"{name:<11} {address:<42} {f'log {log}' if log else '(external)'}")

    line("redis", cluster.redis_url, cluster.redis.state_dir / "redis.log" if cluster.redis else None)
    for server in cluster.llm_servers or [None]:
        url = server.base_url if server else cluster.llm_url
        line(server.name if server else "llm", url, cluster.log_dir / f"{server.name}.log" if server else None)
    for replica in cluster.replicas:
        line(replica.name, f"{replica.url} (pid {replica.pid})", replica.log_path)
    line("haproxy", f"{cluster.url} (stats: {cluster.balancer.stats_socket})", cluster.balancer.log_path)
    print(f"logs in {cluster.log_dir}")
    print(f"cluster ready at {cluster.url}", flush=True)
