"""A session's event log: the events a client must not miss, in a Redis Stream, for replay.

`evt:{session_id}` holds, in order, every event of the conversation the server sent
(final transcripts, reply deltas and ends, turn errors), capped at about
`event_log_max` entries and expiring with the session. The stream's entry id is the
event's `id` in the protocol; a client that comes back (to any replica) says the last
id it saw and is sent what came after. Appends are fenced by the owner's epoch, in
the same script, so a replica that lost the session appends nothing more.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling.sessions import Session, event_log_key, session_key

# KEYS: the session hash, its event log. ARGV: the writer's epoch, MAXLEN, then one JSON event
# each. Returns the new entries' ids, or -1 when the session has another owner (or is gone).
_APPEND = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return -1
end
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i])
end
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
return ids
"""

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class EventLogError(Exception):
    """The log could not be written or read (Redis is away); the events still go out, without ids."""


class LostOwnership(Exception):
    """Another replica resumed the session: this one must stop serving it."""


def valid_event_id(value: str) -> bool:
    """A stream entry id as the protocol carries it (`<ms>-<n>`)."""
    return bool(_EVENT_ID.match(value))


class EventLog:
    """Appends one owner's events and reads back what a returning client missed."""

    def __init__(self, redis: aioredis.Redis, *, max_events: int) -> None:
        self._redis = redis
        self.max_events = max_events
        self._append = redis.register_script(_APPEND)

    async def append(self, session: Session, events: list[dict[str, Any]]) -> list[str]:
        """Log `events` in order and return their ids; LostOwnership when the session is another's."""
        try:
            ids = await self._append(
                keys=[session_key(session.session_id), event_log_key(session.session_id)],
                args=[session.epoch, self.max_events, *(json.dumps(e, separators=(",", ":")) for e in events)],
            )
        except (RedisError, OSError) as exc:
            raise EventLogError(f"cannot log {len(events)} event(s) of session {session.session_id}: {exc}") from exc
        if ids == -1:
            raise LostOwnership(f"session {session.session_id} was resumed elsewhere")
        return [i.decode() for i in ids]

    async def since(self, session_id: str, last_id: str | None) -> list[dict[str, Any]]:
        """The events after `last_id` (all of them when None), each with its `id`, oldest first."""
        try:
            entries = await self._redis.xrange(event_log_key(session_id), f"({last_id}" if last_id else "-", "+")
        except (RedisError, OSError) as exc:
            raise EventLogError(f"cannot read the event log of session {session_id}: {exc}") from exc
        return [{**json.loads(fields[b"e"]), "id": entry_id.decode()} for entry_id, fields in entries]
