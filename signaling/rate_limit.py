"""Token buckets in Redis: one per client IP and one global, checked and taken in one Lua script.

The script reads Redis's own clock (`TIME`), never the caller's, so replicas with
skewed clocks share buckets fairly. A request is admitted only if every bucket it
touches has a token, and then takes one from each. Buckets live in `rl:ip:<address>`
and `rl:global` hashes that expire once they would be full again.

In a Redis Cluster the two buckets hash to different slots, and one script may not touch
both: there they are taken in two steps (`RateLimiter._take_in_steps` says what that costs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.redis_client import is_cluster
from signaling import metrics

log = logging.getLogger(__name__)

# KEYS: the buckets. ARGV: rate and burst of each bucket, in KEYS order.
# Returns {admitted (0/1), seconds to wait as a string (-1: never, with no refill)}.
_TAKE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, wait = {}, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local have = tonumber(state[1]) or burst
  local since = tonumber(state[2]) or now
  have = math.min(burst, have + math.max(0, now - since) * rate)
  tokens[i] = have
  if have < 1 then
    local need = rate > 0 and (1 - have) / rate or -1
    if need < 0 or wait < 0 then wait = -1 elseif need > wait then wait = need end
  end
end
local admitted = wait == 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local left = admitted and tokens[i] - 1 or tokens[i]
  redis.call('HSET', key, 'tokens', left, 'ts', now)
  local ttl = rate > 0 and math.ceil((burst - left) / rate) + 1 or 86400
  redis.call('EXPIRE', key, ttl)
end
return {admitted and 1 or 0, tostring(wait)}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    """per_ip_rate, per_ip_burst: tokens a second and the bucket size for each client IP;
    global_rate, global_burst: the same for the whole service (the seed's gateway used 2000/s, 4000)."""

    per_ip_rate: float = 20.0
    per_ip_burst: float = 40.0
    global_rate: float = 2000.0
    global_burst: float = 4000.0


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    retry_after_s: float  # whole seconds to wait when refused; 0 when admitted


class RateLimiter:
    """Takes tokens for a client; the script is registered once and run by EVALSHA."""

    def __init__(self, redis: aioredis.Redis, config: RateLimitConfig = RateLimitConfig()) -> None:
        self.config = config
        self._take = redis.register_script(_TAKE)
        self._in_steps = is_cluster(redis)

    async def take(self, client_ip: str) -> Decision:
        """One token from the client's bucket and the global one, or a refusal with Retry-After.

        When Redis cannot be reached the request is admitted: the limiter protects the
        service from floods, and refusing everyone while Redis is away would be an outage.
        """
        c = self.config
        buckets = [(f"rl:ip:{client_ip}", c.per_ip_rate, c.per_ip_burst), ("rl:global", c.global_rate, c.global_burst)]
        try:
            if self._in_steps:
                admitted, wait = await self._take_in_steps(buckets)
            else:
                keys = [key for key, _, _ in buckets]
                args = [c.per_ip_rate, c.per_ip_burst, c.global_rate, c.global_burst]
                admitted, wait = await self._take(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("rate_limit").inc()
            log.warning("rate limiter: Redis unavailable (%s); admitting %s", exc, client_ip)
            return Decision(True, 0.0)
        if admitted:
            return Decision(True, 0.0)
        seconds = float(wait)
        return Decision(False, 3600.0 if seconds < 0 else float(max(1, math.ceil(seconds))))

    async def _take_in_steps(self, buckets: list[tuple[str, float, float]]) -> tuple[int, bytes]:
        """Each bucket in a script of its own, in order, stopping at the first that refuses.

        For a cluster, where the buckets are in different slots (on different nodes, often).
        The client's own bucket goes first, so an address its bucket refuses takes nothing from
        everyone's. Each step is atomic by itself, so neither bucket ever gives more than its rate
        and burst allow, however requests interleave; what is lost is the all-or-nothing of the
        two: a request the global bucket refuses has spent a token of the client's bucket. It is
        not given back (one more round trip, for a client that is refused and waits anyway; the
        token is back within 1/per_ip_rate seconds).
        """
        admitted, wait = 1, b"0"
        for key, rate, burst in buckets:
            admitted, wait = await self._take(keys=[key], args=[rate, burst])
            if not admitted:
                break
        return admitted, wait
