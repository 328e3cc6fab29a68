"""Dialog history in Redis: one sorted set per dialog, scored by turn sequence number.

`dlg:{dialog_id}` holds one JSON member per turn; `dlg:{dialog_id}:ids` maps turn
ids to sequence numbers (the braces are part of the keys: a hash tag, so in a Redis Cluster
both live in the slot of `sess:{session_id}`, whose epoch fences the write, a session's
dialog being named after it). Redis assigns the numbers (the script takes the next one),
so two writers on one dialog never collide, and the turn id is the idempotency key:
writing a turn again keeps its number and puts the latest text in its place (a retry
is a no-op; a turn that grew, a caller who went on after a pause, or a reply played
further, is updated where it stands). The check and the write are one Lua script.
A write may be fenced: it happens only while the session still has the writer's
owner epoch, so a replica that lost the session to another cannot write into it.
Both keys' TTL is refreshed on every write.

Behind Sentinel a write acknowledged by the master alone may not outlive a failover, so
there a turn counts as written once a replica has it too (WAIT, in the same round trip),
or once the Sentinels know no live replica to wait for; until then it is written again,
which the turn id makes harmless: after a failover a turn lands once, on the new master.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.errors import DialogFenced, DialogStoreUnavailable

Role = Literal["user", "assistant"]

# KEYS: the turns' sorted set, the id→seq hash, and the session hash of a fenced write (else
# the id hash again). ARGV: turn id, the turn as JSON, TTL seconds, the writer's epoch ("" for
# no fence). Returns {inserted (1), updated (0) or fenced (-1), seq}.
_PUT = """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[4] then
  return {-1, 0}
end
local turn = cjson.decode(ARGV[2])
local existing = redis.call('HGET', KEYS[2], ARGV[1])
local seq, inserted
if existing then
  seq, inserted = tonumber(existing), 0
  redis.call('ZREMRANGEBYSCORE', KEYS[1], seq, seq)
else
  local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  seq, inserted = last[2] and (tonumber(last[2]) + 1) or 1, 1
  redis.call('HSET', KEYS[2], ARGV[1], seq)
end
turn['seq'] = seq
redis.call('ZADD', KEYS[1], seq, cjson.encode(turn))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {inserted, seq}
"""


class Replicas(Protocol):
    """What a write must reach to outlive a failover (parley.redis_client.SentinelReplicas)."""

    wait_ms: int  # how long a write waits for a replica to acknowledge it

    async def live(self) -> int:
        """How many live replicas the master has now (0: a lone master, nothing more to wait for)."""
        ...


@dataclass(frozen=True, slots=True)
class Fence:
    """A write's condition: the hash at `key` still has `epoch` (the writer still owns the session)."""

    key: str
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One turn of a dialog. turn_id is made by the writer, so a retry carries the same id."""

    role: Role
    text: str
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    seq: int = 0
    started_at: float = field(default_factory=time.time)
    ended_at: float = field(default_factory=time.time)
    interrupted: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        return cls(**json.loads(raw))


def reply_turn_id(turn_id: str) -> str:
    """The id of the bot's turn answering the caller's turn `turn_id` (one reply per caller turn)."""
    return f"{turn_id}-bot"


def dialog_key(dialog_id: str) -> str:
    return f"dlg:{{{dialog_id}}}"


class DialogStore:
    """Reads and appends turns; Redis errors come out as DialogStoreUnavailable.

    replicas: behind Sentinel, what a turn must reach before it counts as written (None: the
    master's acknowledgement is enough, as with one Redis or a cluster).
    """

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = 900, replicas: Replicas | None = None) -> None:
        self._redis = redis
        self.ttl_s = ttl_s
        self.replicas = replicas
        self._put = redis.register_script(_PUT)

    async def put(self, dialog_id: str, turn: Turn, *, fence: Fence | None = None) -> tuple[Turn, bool]:
        """Store `turn` under its id: the next sequence number the first time, its own after.

        Returns the turn with its sequence number, and whether this call inserted it (False:
        it was there, and now holds this text). DialogFenced when `fence` no longer holds;
        DialogStoreUnavailable when Redis is away, or the turn is not yet safe from a failover
        (write it again).
        """
        key = dialog_key(dialog_id)
        ids = f"{key}:ids"
        keys = [key, ids, fence.key if fence else ids]
        args = [turn.turn_id, turn.to_json(), self.ttl_s, fence.epoch if fence else ""]
        what = f"turn {turn.turn_id} of dialog {dialog_id}"
        try:
            if self.replicas is None:
                inserted, seq = await self._put(keys=keys, args=args)
            else:
                inserted, seq = await self._put_replicated(self.replicas, keys, args, what)
        except (RedisError, OSError) as exc:
            raise DialogStoreUnavailable(f"cannot write {what}: {exc}") from exc
        if inserted == -1:
            raise DialogFenced(f"{what} not written: another replica took the session")
        return Turn(**{**asdict(turn), "seq": int(seq)}), bool(inserted)

    async def _put_replicated(self, replicas: Replicas, keys: list[str], args: list, what: str) -> tuple[int, int]:
        # WAIT counts the replicas holding every write its connection made so far: in one
        # pipeline (one connection) with the write, that is this write.
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._put(keys=keys, args=args, client=pipe)
            pipe.wait(1, replicas.wait_ms)
            (inserted, seq), acknowledged = await pipe.execute()
        if inserted != -1 and acknowledged < 1 and await replicas.live() > 0:
            # A master with live replicas, none of which has the turn: one promoted away from
            # and not yet told, or one whose replicas lag. The turn may be lost; write it again.
            raise DialogStoreUnavailable(
                f"{what} reached no replica within {replicas.wait_ms} ms (a failover under way?)"
            )
        return inserted, seq

    async def turns(self, dialog_id: str) -> list[Turn]:
        """All stored turns with any text, in sequence order. A turn written again empty was
        voided (a reply begun in the caller's pause, then dropped when they went on): it keeps
        its place, so a later write of the same id lands there, but is no part of the dialog."""
        try:
            members = await self._redis.zrange(dialog_key(dialog_id), 0, -1)
        except (RedisError, OSError) as exc:
            raise DialogStoreUnavailable(f"cannot read dialog {dialog_id}: {exc}") from exc
        return [turn for turn in map(Turn.from_json, members) if turn.text]
