"""The process's Redis client: one node, Sentinel or Cluster, riding out a failover with retries.

One node (`[redis] url`): redis-py's default pool opens a new connection for every command in
flight and raises "Too many connections" past its limit: a burst of new sessions was told Redis
was unavailable while Redis was fine. A `BlockingConnectionPool` keeps at most `max_connections`
and makes a burst queue for one, up to `pool_timeout_s`; only then does a caller get an error,
and that error says the pool was busy, not that Redis is down.

Sentinel (`[redis] sentinels`): redis-py's `Sentinel.master_for`, on the same waiting pool. A
connection asks the Sentinels for the master as it opens (`url`, if set, gives the master's
user, password, database and TLS; its host is the Sentinels' to name). After a failover the old master's
connections break (it died, or Sentinel kills its clients as it makes it a replica) or answer
READONLY, which redis-py turns into a ConnectionError that drops the connection; the retry
opens a new one, to the new master.

Cluster (`[redis] cluster`): redis-py's `RedisCluster`, which routes each command to the node
holding its key's slot and follows the cluster's redirections. Its pool per node has no waiting
mode, so it is left unbounded (a burst opens connections rather than failing); the keys a Lua
script or a MULTI touches together share a slot by their `{...}` hash tags.

Every mode retries a command whose connection failed or timed out `retries` times, waiting
exponentially longer with jitter between tries (redis-py's `Retry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:  # parley.settings imports signaling.rate_limit, which imports this module
    from parley.settings import RedisConfig

# What redis-py's BlockingConnectionPool raises when no connection frees up in time.
_POOL_TIMEOUT = "No connection available."

# A Sentinel that does not answer within this is passed over for the next one.
_SENTINEL_TIMEOUT_S = 1.0

Client = aioredis.Redis | RedisCluster


def redis_client(config: RedisConfig) -> Client:
    """A client for the Redis `config` describes: a node, the master Sentinel names, or a cluster."""
    backoff = ExponentialWithJitterBackoff(base=0.1, cap=2.0)
    retry = Retry(backoff, config.retries, (RedisConnectionError, RedisTimeoutError))
    if config.sentinels:
        sentinel = Sentinel(
            config.sentinel_addresses,
            # One try per Sentinel: the next one is asked instead, and the command's own retry
            # asks them all again.
            sentinel_kwargs={
                "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
                "socket_timeout": _SENTINEL_TIMEOUT_S,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        return sentinel.master_for(
            config.sentinel_master,
            redis_class=_SentinelMaster,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=config.max_connections,
            timeout=config.pool_timeout_s,
            retry=retry,
            **_credentials(config.url),
        )
    if config.cluster:
        return _Cluster.from_url(config.url, retry=retry)
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url, max_connections=config.max_connections, timeout=config.pool_timeout_s, retry=retry
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: closing it closes both


def _credentials(url: str) -> dict[str, Any]:
    """User, password, database and TLS of a Redis URL, without its address."""
    if not url:
        return {}
    parsed = parse_url(url)
    kwargs = {key: parsed[key] for key in ("username", "password", "db") if key in parsed}
    if parsed.get("connection_class") is aioredis.SSLConnection:
        kwargs["ssl"] = True  # SentinelConnectionPool's own switch to its TLS connections
    return kwargs


def redis_problem(exc: BaseException) -> str:
    """Why a Redis command failed, in words for the caller: a busy pool is not a Redis that is down."""
    if isinstance(exc, RedisConnectionError) and str(exc) == _POOL_TIMEOUT:
        return "Redis is busy: no connection free in this server's pool in time"
    return f"Redis is unavailable ({exc})"


def is_cluster(client: Client) -> bool:
    """Whether `client` talks to a Redis Cluster (keys in different slots live on different nodes)."""
    return isinstance(client, RedisCluster)


async def open_pubsub(client: Client) -> PubSub:
    """A PubSub on `client`'s Redis.

    redis-py's asyncio cluster client has none, and needs none: a PUBLISH in a cluster reaches
    the subscribers of every node, so one subscribes on a node picked at random each time (after
    a node is lost, the caller's next subscription lands on another).
    """
    if not isinstance(client, RedisCluster):
        return client.pubsub(ignore_subscribe_messages=True)
    await client.initialize()  # learns the nodes on first use; a no-op after
    node = client.get_random_node()
    pool = aioredis.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
    return PubSub(pool, ignore_subscribe_messages=True)


class SentinelReplicas:
    """What a write must reach to outlive a failover, as the Sentinels see it (pipeline.dialog_store).

    A write acknowledged by the master alone can be lost: Sentinel may promote a replica that
    did not have it yet, or the old master, promoted away from but not yet told, may take writes
    for seconds that its demotion then throws away. A write a replica has acknowledged (WAIT)
    survives the promotion of that replica. When none has within `wait_ms`, the write counts
    only if the Sentinels know of no live replica (a lone master: nothing more can be had).
    """

    def __init__(self, client: aioredis.Redis, *, wait_ms: int) -> None:
        self.wait_ms = wait_ms
        self._pool: SentinelConnectionPool = client.connection_pool

    async def live(self) -> int:
        """How many live replicas the Sentinels list for the master they name now.

        Also makes the pool ask for the master again, so connections left idle on a master that
        was promoted away from are dropped, and the next write goes to the new one.
        """
        await self._pool.get_master_address()
        return len(await self._pool.sentinel_manager.discover_slaves(self._pool.service_name))


def sentinel_replicas(client: Client, config: RedisConfig) -> SentinelReplicas | None:
    """For a client of a Sentinel-managed master, what its writes must reach; None otherwise, and
    when `replica_wait_ms` is 0 (the master's acknowledgement is taken as enough)."""
    sentinel = isinstance(client, aioredis.Redis) and isinstance(client.connection_pool, SentinelConnectionPool)
    if sentinel and config.replica_wait_ms > 0:
        return SentinelReplicas(client, wait_ms=config.replica_wait_ms)
    return None


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (each new connection asks the Sentinels for the master) that waits for a
    free connection when all are busy, as the one-node pool does."""


class _SentinelMaster(aioredis.Redis):
    """The master's client; closing it also closes the connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:
            await sentinel.aclose()


class _Cluster(RedisCluster):
    """A cluster client whose "no node of the cluster answers" is a ConnectionError, as it is in
    every other mode: redis-py raises RedisClusterException, which is no RedisError, and would
    get past every place Parley handles a Redis that is away."""

    async def initialize(self) -> RedisCluster:
        try:
            return await super().initialize()
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unreachable: {exc}") from exc
