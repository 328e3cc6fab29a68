"""Dialog history in Redis: one sorted set per dialog, scored by turn sequence number.

`dlg:{dialog_id}` holds one JSON member per turn; `dlg:{dialog_id}:ids` maps turn
ids to sequence numbers, so writing a turn again (a retry) is a no-op. The check
and the insert are one Lua script, so two concurrent retries cannot both insert.
Both keys' TTL is refreshed on every write.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.errors import DialogStoreUnavailable

Role = Literal["user", "assistant"]

# KEYS: the turns' sorted set, the id→seq hash. ARGV: turn id, seq ("" = next), the turn as
# JSON, TTL seconds. Returns {inserted (0/1), seq}.
_APPEND = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  return {0, tonumber(existing)}
end
local seq = tonumber(ARGV[2])
if not seq then
  local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  seq = last[2] and (tonumber(last[2]) + 1) or 1
end
local turn = cjson.decode(ARGV[3])
turn['seq'] = seq
redis.call('ZADD', KEYS[1], seq, cjson.encode(turn))
redis.call('HSET', KEYS[2], ARGV[1], seq)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, seq}
"""


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


def dialog_key(dialog_id: str) -> str:
    return f"dlg:{dialog_id}"


class DialogStore:
    """Reads and appends turns; Redis errors come out as DialogStoreUnavailable."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = 900) -> None:
        self._redis = redis
        self.ttl_s = ttl_s
        self._append = redis.register_script(_APPEND)

    async def append(self, dialog_id: str, turn: Turn) -> tuple[Turn, bool]:
        """Store `turn` once; returns it with its sequence number, and whether this call inserted it.

        A turn with seq 0 gets the next number; a turn with a seq keeps it (a buffered write
        replayed later keeps its place).
        """
        key = dialog_key(dialog_id)
        try:
            inserted, seq = await self._append(
                keys=[key, f"{key}:ids"], args=[turn.turn_id, turn.seq or "", turn.to_json(), self.ttl_s]
            )
        except (RedisError, OSError) as exc:
            raise DialogStoreUnavailable(f"cannot write turn {turn.turn_id} of dialog {dialog_id}: {exc}") from exc
        return Turn(**{**asdict(turn), "seq": int(seq)}), bool(inserted)

    async def turns(self, dialog_id: str) -> list[Turn]:
        """All stored turns, in sequence order."""
        try:
            members = await self._redis.zrange(dialog_key(dialog_id), 0, -1)
        except (RedisError, OSError) as exc:
            raise DialogStoreUnavailable(f"cannot read dialog {dialog_id}: {exc}") from exc
        return [Turn.from_json(m) for m in members]
