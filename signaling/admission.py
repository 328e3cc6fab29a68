"""Admission by capacity: a new session or call is taken only if this replica can carry it.

Two kinds, each with its own limit per replica: `sessions` (every WebSocket, text or
voice) and `calls` (sessions with WebRTC audio, far costlier). The decision is made
once, before any work for the newcomer, and never takes back what was admitted: an
admitted call is not cut to let another in.

Each replica's count and capacity live in Redis beside every other replica's, so the
cluster's load is known in one place: one Lua script checks and takes a place
atomically, clears the counts of replicas whose heartbeat stopped, holds the cluster
to `[admission] cluster_max_calls` when set, and, on a refusal, says whether another
replica has room. The local count is the truth for this replica: a heartbeat writes
it back to Redis (healing a count lost in a Redis restart), and while Redis is away the
replica decides alone, by its own capacity.

A caller refused for want of a line may wait in the service's line instead of retrying
blind (its offer asks to): it is told its position, keeps it by trying again within
`line_hold_s`, and is admitted before anyone behind it, on whichever replica has the free
place. A newcomer, in line or not, is admitted only while there are more free places in the
cluster than callers ahead of it. Without the line, callers retrying with backoff and jitter
are served in no order: the one who waited longest may lose each free line to a newcomer.

Keys (one hash slot, `{adm}`): `{adm}:replicas` (zset, heartbeat deadline in ms per
replica), `{adm}:<kind>` (hash, count per replica), `{adm}:<kind>:cap` (hash, capacity),
`{adm}:<kind>:line` (zset, arrival number per ticket: a session id),
`{adm}:<kind>:line:holds` (zset, the deadline by which each ticket must be claimed again) and
`{adm}:<kind>:line:arrivals` (the counter that numbers arrivals in line).
One slot on purpose: the cluster's cap is a sum over every replica's count, checked and
taken in one script, and in a Redis Cluster a script may touch the keys of one slot only.
So admission (and signaling.client_cap, whose script reads `{adm}:replicas`) lives on one
node of a cluster: a few small keys and one short script per new session or call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling import metrics
from signaling.config import AdmissionConfig

log = logging.getLogger(__name__)

Kind = Literal["sessions", "calls"]

REPLICAS_KEY = "{adm}:replicas"


def count_key(kind: Kind) -> str:
    return f"{{adm}}:{kind}"


def capacity_key(kind: Kind) -> str:
    return f"{{adm}}:{kind}:cap"


def line_key(kind: Kind) -> str:
    return f"{{adm}}:{kind}:line"


def holds_key(kind: Kind) -> str:
    return f"{{adm}}:{kind}:line:holds"


def arrivals_key(kind: Kind) -> str:
    return f"{{adm}}:{kind}:line:arrivals"


# KEYS: replicas zset, counts hash, capacities hash, the line (zset, arrival number per ticket),
# the line's holds (zset, deadline in ms per ticket), the line's arrival counter.
# ARGV: replica, now (ms), this replica's capacity, the cluster's cap (0: none), heartbeat deadline
# (ms), take (1: this replica found room in itself, so check the cluster and count the newcomer;
# 0: it is full, only say whether another replica has room), the newcomer's ticket ("": it does not
# wait in line), the ticket's hold deadline (ms), the most tickets in line.
# Returns {admitted (0/1), why ("" | "replica" | "cluster" | "line"), another replica has room
# (0/1), the ticket's position in line (1 first; 0: not in line), tickets in line}.
_ADMIT = """
local replicas, counts, caps, line, holds, arrivals = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local me, now, capacity, cluster_max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ticket, line_max = ARGV[7], tonumber(ARGV[9])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', replicas, '-inf', now)) do
  redis.call('HDEL', counts, gone)
  redis.call('HDEL', caps, gone)
end
redis.call('ZREMRANGEBYSCORE', replicas, '-inf', now)
redis.call('ZADD', replicas, ARGV[5], me)
redis.call('HSET', caps, me, capacity)
local total, free, room_elsewhere = 0, 0, 0
local all = redis.call('HGETALL', caps)
for i = 1, #all, 2 do
  local n, cap = tonumber(redis.call('HGET', counts, all[i])) or 0, tonumber(all[i + 1]) or 0
  total = total + n
  if n < cap then
    free = free + cap - n
    if all[i] ~= me then room_elsewhere = 1 end
  end
end
if cluster_max > 0 then free = math.min(free, math.max(cluster_max - total, 0)) end
-- A ticket not claimed again before its hold ran out has left the line.
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do redis.call('ZREM', line, gone) end
redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
local ahead, rank = redis.call('ZCARD', line), false
if ticket ~= '' then rank = redis.call('ZRANK', line, ticket) end
if rank then ahead = rank end
local why = ''
if ARGV[6] == '0' then why = 'replica'
elseif cluster_max > 0 and total >= cluster_max then why = 'cluster'; room_elsewhere = 0
-- Everyone ahead in line gets a free place first, wherever it is.
elseif ahead >= free then why = 'line' end
if why == '' then
  redis.call('HINCRBY', counts, me, 1)
  if ticket ~= '' then
    redis.call('ZREM', line, ticket)
    redis.call('ZREM', holds, ticket)
  end
  return {1, '', room_elsewhere, 0, redis.call('ZCARD', line)}
end
local position = 0
if ticket ~= '' and (rank or redis.call('ZCARD', line) < line_max) then
  if not rank then redis.call('ZADD', line, redis.call('INCR', arrivals), ticket) end
  redis.call('ZADD', holds, ARGV[8], ticket)
  position = redis.call('ZRANK', line, ticket) + 1
end
return {0, why, room_elsewhere, position, redis.call('ZCARD', line)}
"""


# KEYS: counts hash. ARGV: replica. A place given back; never below zero.
_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end
return n
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a newcomer was not taken, and when to try again.

    reason: "replica" (this replica is full), "cluster" (every place in the cluster is
        taken), "line" (there is a free place, but callers waiting in line came first),
        "draining" (this replica is shutting down).
    room_elsewhere: another replica has room now (a balancer's next pick may take it).
    position: the newcomer's place in the line (1: next), None when it has none (it did not ask
        to wait, the line is full, or Redis is away); it keeps it by trying again in time.
    waiting: callers in the line.
    """

    kind: Kind
    reason: str
    retry_after_s: float
    room_elsewhere: bool
    position: int | None = None
    waiting: int = 0


class Admission:
    """This replica's places: `admit(kind)` takes one or refuses; `release(kind)` gives it back."""

    def __init__(self, redis: aioredis.Redis, replica: str, config: AdmissionConfig) -> None:
        self.config = config
        self.replica = replica
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)
        self.active: dict[Kind, int] = {"sessions": 0, "calls": 0}
        self.draining = False

    def capacity(self, kind: Kind) -> int:
        return self.config.max_calls if kind == "calls" else self.config.max_sessions

    async def admit(self, kind: Kind, ticket: str | None = None) -> Refusal | None:
        """Take a place of `kind`, or say why not (None: admitted). `ticket`: the newcomer waits in
        the service's line (voice calls, `line_max_calls`): refused, it is given a place in line,
        or keeps the one this ticket holds; nobody behind it in line is admitted before it."""
        if self.draining:
            return self._refuse(kind, "draining", room_elsewhere=True)
        # A place is taken here first, so admissions under way at once each see the others; a
        # full replica only asks Redis whether another has room.
        take = self.active[kind] < self.capacity(kind)
        self.active[kind] += int(take)
        try:
            admitted, why, elsewhere, position, waiting = await self._run_admit(kind, take, ticket)
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("admission").inc()
            log.warning("admission: Redis unavailable (%s); deciding by this replica's capacity alone", exc)
            admitted, why, elsewhere, position, waiting = take, b"replica", 0, 0, None
        if kind == "calls" and waiting is not None:
            metrics.CALLS_WAITING.set(waiting)
        if not admitted:
            self.active[kind] -= int(take)
            reason = why.decode() if isinstance(why, bytes) else str(why)
            return self._refuse(
                kind, reason, room_elsewhere=bool(elsewhere), position=position or None, waiting=waiting or 0
            )
        metrics.ADMISSIONS.labels(kind, "admitted").inc()
        return None

    async def release(self, kind: Kind) -> None:
        """Give back a place taken by `admit`."""
        self.active[kind] = max(0, self.active[kind] - 1)
        try:
            await self._release(keys=[count_key(kind)], args=[self.replica])
        except (RedisError, OSError) as exc:
            log.warning("admission: could not give back a place in Redis (%s); the heartbeat will", exc)

    async def leave_line(self, kind: Kind, ticket: str) -> None:
        """`ticket` no longer waits for a place of `kind` (its caller hung up): the callers behind it
        move up now, not once its hold runs out."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(line_key(kind), ticket)
                pipe.zrem(holds_key(kind), ticket)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("admission: could not take a ticket out of the line (%s); its hold will", exc)

    async def heartbeat(self) -> None:
        """Write this replica's counts and capacities to Redis, with a deadline; every `heartbeat_s`."""
        while True:
            try:
                await self.publish()
            except (RedisError, OSError) as exc:
                log.warning("admission: heartbeat failed (%s)", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    async def publish(self) -> None:
        deadline = int(1000 * (time.time() + self.config.replica_ttl_s))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(REPLICAS_KEY, {self.replica: deadline})
            for kind in ("sessions", "calls"):
                # The local count is the truth: it heals a count lost in a Redis restart.
                pipe.hset(count_key(kind), self.replica, self.active[kind])
                pipe.hset(capacity_key(kind), self.replica, 0 if self.draining else self.capacity(kind))
            # Tickets whose hold still runs (the script drops the others only when someone calls).
            pipe.zcount(holds_key("calls"), int(1000 * time.time()), "+inf")
            *_, waiting = await pipe.execute()
        metrics.CALLS_WAITING.set(waiting)  # fresh even when nobody calls

    async def withdraw(self) -> None:
        """Take no one from now on (the replica is shutting down); others see no room here."""
        self.draining = True
        try:
            await self.publish()  # capacities of 0
        except (RedisError, OSError) as exc:
            log.warning("admission: could not withdraw from Redis (%s)", exc)

    async def _run_admit(self, kind: Kind, take: bool, ticket: str | None) -> tuple[int, bytes, int, int, int]:
        now = int(1000 * time.time())
        calls = kind == "calls"
        cluster_max = self.config.cluster_max_calls if calls else 0
        line_max = self.config.line_max_calls if calls else 0
        admitted, why, elsewhere, position, waiting = await self._admit(
            keys=[REPLICAS_KEY, count_key(kind), capacity_key(kind), line_key(kind), holds_key(kind), arrivals_key(kind)],
            args=[
                self.replica, now, self.capacity(kind), cluster_max,
                now + int(1000 * self.config.replica_ttl_s), int(take),
                (ticket or "") if line_max else "", now + int(1000 * self.config.line_hold_s), line_max,
            ],
        )
        return int(admitted), why, int(elsewhere), int(position), int(waiting)

    def _refuse(
        self, kind: Kind, reason: str, *, room_elsewhere: bool, position: int | None = None, waiting: int = 0
    ) -> Refusal:
        metrics.ADMISSIONS.labels(kind, reason).inc()
        return Refusal(kind, reason, self.config.retry_after_s, room_elsewhere, position, waiting)
