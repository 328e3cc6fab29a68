"""A cap per client address: how many voice calls and sessions one IP holds at once, cluster-wide.

Capacity (signaling.admission) keeps a replica from taking more than it can carry; this
keeps one address from taking all of it. The count lives in Redis, beside the replicas'
load, so a caller cannot get past the cap by landing on another replica, and it follows
admission's pattern: each replica's share of an address's count is a field of its own,
counted only while that replica's heartbeat deadline (in admission's `{adm}:replicas`)
has not passed, so the calls of a replica that died stop counting within
`[admission] replica_ttl_s`. The local count is the truth for this replica: the heartbeat
writes it back (healing a count lost in a Redis restart) and keeps the key alive; while
Redis is away the replica holds each address to the cap within itself alone.

The address is the one the WebSocket server reports: the peer's, or, from a trusted proxy
(`[server] forwarded_allow_ips`), the one its X-Forwarded-For names.

Keys (hash slot `{adm}`): `{adm}:ip:<kind>:<address>` (hash, count per replica), expiring
`replica_ttl_s` after the last replica holding a place for that address stopped writing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling import metrics
from signaling.admission import REPLICAS_KEY, Kind
from signaling.config import AdmissionConfig

log = logging.getLogger(__name__)


def address_key(kind: Kind, address: str) -> str:
    return f"{{adm}}:ip:{kind}:{address}"


# KEYS: the address's counts hash, the replicas zset.
# ARGV: replica, now (ms), the cap, this replica's heartbeat deadline (ms), the key's TTL (ms).
# Returns 1 (a place taken) or 0 (the address holds the cap already).
_TAKE = """
local counts, replicas = KEYS[1], KEYS[2]
local me, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', replicas, ARGV[4], me)
local total = 0
local all = redis.call('HGETALL', counts)
for i = 1, #all, 2 do
  local deadline = redis.call('ZSCORE', replicas, all[i])
  if not deadline or tonumber(deadline) <= now then
    redis.call('HDEL', counts, all[i])
  else
    total = total + (tonumber(all[i + 1]) or 0)
  end
end
if total >= cap then return 0 end
redis.call('HINCRBY', counts, me, 1)
redis.call('PEXPIRE', counts, ARGV[5])
return 1
"""

# KEYS: the address's counts hash. ARGV: replica. A place given back; the field goes at zero.
_RELEASE = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""


class ClientCap:
    """`take(kind, address)` a place for one client address, or refuse; `release` gives it back."""

    def __init__(self, redis: aioredis.Redis, replica: str, config: AdmissionConfig) -> None:
        self.config = config
        self.replica = replica
        self._redis = redis
        self._take = redis.register_script(_TAKE)
        self._release = redis.register_script(_RELEASE)
        self.held: Counter[tuple[Kind, str]] = Counter()  # this replica's places, by kind and address
        # Every (kind, address) this replica may have a count for in Redis: the heartbeat writes
        # each, or deletes it once it holds none (a give-back that failed is put right so).
        self._written: set[tuple[Kind, str]] = set()

    def cap(self, kind: Kind) -> int:
        return self.config.max_calls_per_ip if kind == "calls" else self.config.max_sessions_per_ip

    async def take(self, kind: Kind, address: str) -> bool:
        """Take a place of `kind` for `address`; False when it holds `cap(kind)` already."""
        cap = self.cap(kind)
        if cap == 0:
            return True
        # Counted here first, so that the heartbeat never writes a count missing a place in flight.
        self.held[kind, address] += 1
        self._written.add((kind, address))
        try:
            taken = bool(await self._run_take(kind, address, cap))
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("client_cap").inc()
            log.warning("client cap: Redis unavailable (%s); counting this replica's places alone", exc)
            taken = self.held[kind, address] <= cap
        except BaseException:
            self._forget(kind, address)  # cancelled on the way: the heartbeat puts Redis right
            raise
        if not taken:
            self._forget(kind, address)
            metrics.CLIENT_CAP_REFUSALS.labels(kind).inc()
        return taken

    async def release(self, kind: Kind, address: str) -> None:
        """Give back a place `take` gave."""
        if self.cap(kind) == 0 or self.held[kind, address] == 0:
            return
        self._forget(kind, address)
        try:
            await self._release(keys=[address_key(kind, address)], args=[self.replica])
        except (RedisError, OSError) as exc:
            log.warning("client cap: could not give back a place in Redis (%s); the heartbeat will", exc)

    async def heartbeat(self) -> None:
        """Write this replica's places per address to Redis, every `[admission] heartbeat_s`."""
        while True:
            try:
                await self.publish()
            except (RedisError, OSError) as exc:
                log.warning("client cap: heartbeat failed (%s)", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    async def publish(self) -> None:
        ttl_ms = int(1000 * self.config.replica_ttl_s)
        written = set(self._written)  # holds every address of `held` too
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(REPLICAS_KEY, {self.replica: int(1000 * time.time()) + ttl_ms})
            for kind, address in written:
                if (n := self.held[kind, address]) > 0:
                    pipe.hset(address_key(kind, address), self.replica, n)
                    pipe.pexpire(address_key(kind, address), ttl_ms)
                else:
                    pipe.hdel(address_key(kind, address), self.replica)
            await pipe.execute()
        self._written -= {key for key in written if self.held[key] == 0}

    async def _run_take(self, kind: Kind, address: str, cap: int) -> int:
        now = int(1000 * time.time())
        ttl_ms = int(1000 * self.config.replica_ttl_s)
        return await self._take(
            keys=[address_key(kind, address), REPLICAS_KEY],
            args=[self.replica, now, cap, now + ttl_ms, ttl_ms],
        )

    def _forget(self, kind: Kind, address: str) -> None:
        self.held[kind, address] -= 1
        if self.held[kind, address] <= 0:
            del self.held[kind, address]
