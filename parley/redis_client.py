"""The process's Redis client: one connection pool that waits when it is busy.

redis-py's default pool opens a new connection for every command in flight and raises
"Too many connections" past its limit: a burst of new sessions was told Redis was
unavailable while Redis was fine. A `BlockingConnectionPool` keeps at most
`max_connections` and makes a burst queue for one, up to `pool_timeout_s`; only then
does a caller get an error, and that error says the pool was busy, not that Redis is down.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from parley.settings import RedisConfig

# What redis-py's BlockingConnectionPool raises when no connection frees up in time.
_POOL_TIMEOUT = "No connection available."


def redis_client(config: RedisConfig) -> aioredis.Redis:
    """A client for `config.url` on a blocking pool of `config.max_connections`."""
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url, max_connections=config.max_connections, timeout=config.pool_timeout_s
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: closing it closes both


def redis_problem(exc: BaseException) -> str:
    """Why a Redis command failed, in words for the caller: a busy pool is not a Redis that is down."""
    if isinstance(exc, RedisConnectionError) and str(exc) == _POOL_TIMEOUT:
        return "Redis is busy: no connection free in this server's pool in time"
    return f"Redis is unavailable ({exc})"
