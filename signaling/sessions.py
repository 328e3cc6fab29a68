"""Sessions in Redis, so any replica can serve a client that comes back, and only one at a time.

`sess:{session_id}` is a hash: the dialog id, the sha256 of the resume token (the
token itself is only ever sent to the client), the replica serving it, when it was
created, and an `epoch` that counts its owners. Its TTL is long while a client is
attached and short after it leaves, so an abandoned session expires on its own.

The braces are part of the key: every key of a session carries its id as a hash tag
(`sess:{id}`, `evt:{id}`, and `dlg:{id}` of its dialog, which is named after the session),
so in a Redis Cluster they share one hash slot, and the scripts that check the owner's epoch
and write beside it touch one node, as a cluster requires of a script.

Resuming is one Lua script: check the token (and that the session is younger than its
maximum length, `[signaling] max_call_s`), bump the epoch, store the next token's
hash and publish the new epoch on `SESSIONS_CHANNEL`, so two clients racing with one
token cannot both win, and the replica that served the session before learns at once
that it no longer does. Every later change a replica makes to the session (its TTL,
its dialog, its event log) is fenced by the epoch it took: a replica that lost the
session cannot shorten the TTL of a session another replica now serves.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.redis_client import redis_problem
from pipeline.dialog_store import Fence

# Where a resume announces "session <id> now has owner epoch <n>" to every replica.
SESSIONS_CHANNEL = "sess:owners"

# KEYS: the session hash. ARGV: the presented token's hash, the next token's hash, this
# replica, the attached TTL, the channel, the earliest creation time still resumable (0: any),
# the session id.
# Returns {dialog_id, epoch, voice, created_at}; nil for an unknown session or a wrong token,
# 0 for a session that has reached its maximum length.
_RESUME = """
if redis.call('HGET', KEYS[1], 'token_sha256') ~= ARGV[1] then
  return nil
end
if tonumber(ARGV[6]) > 0 and (tonumber(redis.call('HGET', KEYS[1], 'created_at')) or 0) < tonumber(ARGV[6]) then
  return 0
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'token_sha256', ARGV[2], 'replica', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[7] .. ' ' .. epoch)
return {redis.call('HGET', KEYS[1], 'dialog_id'), epoch, redis.call('HGET', KEYS[1], 'voice') or '0',
        redis.call('HGET', KEYS[1], 'created_at') or '0'}
"""

# KEYS: the session hash, its event log. ARGV: the epoch held, the TTL. Returns 1 when the
# TTL was set, 0 when another owner holds the session (or it is gone).
_EXPIRE_IF_OWNER = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class SessionError(Exception):
    """A session cannot be created or resumed; `code` goes into the protocol's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Session:
    """A session as one owner holds it: `epoch` fences every change this owner makes."""

    session_id: str
    dialog_id: str
    resume_token: str
    epoch: int = 1
    voice: bool = False  # the session has carried a voice call (a resumed one offers again)
    created_at: float = 0.0  # when the session began (Unix time), on whichever replica

    @property
    def fence(self) -> Fence:
        """The condition of this owner's writes: the session still has this owner's epoch."""
        return Fence(session_key(self.session_id), self.epoch)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_key(session_id: str) -> str:
    return f"sess:{{{session_id}}}"


def event_log_key(session_id: str) -> str:
    return f"evt:{{{session_id}}}"


class SessionStore:
    """Sessions in Redis. max_age_s: a session this old may no longer be resumed (0: any age)."""

    def __init__(
        self, redis: aioredis.Redis, *, replica: str, attached_ttl_s: int, detached_ttl_s: int, max_age_s: float = 0.0
    ) -> None:
        self._redis = redis
        self.replica = replica
        self.attached_ttl_s = attached_ttl_s
        self.detached_ttl_s = detached_ttl_s
        self.max_age_s = max_age_s
        self._resume = redis.register_script(_RESUME)
        self._expire_if_owner = redis.register_script(_EXPIRE_IF_OWNER)

    async def create(self) -> Session:
        """A new session with a new dialog, owned by this replica at epoch 1."""
        session_id = uuid.uuid4().hex
        # The dialog is named after the session, so its keys share the session's hash slot.
        session = Session(session_id, session_id, secrets.token_urlsafe(24), 1, created_at=time.time())
        fields = {
            "dialog_id": session.dialog_id,
            "token_sha256": _hash(session.resume_token),
            "replica": self.replica,
            "created_at": session.created_at,
            "epoch": session.epoch,
        }
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                # Queued, not awaited: awaiting a cluster pipeline starts it afresh, dropping
                # what was queued (redis-py's ClusterPipeline.__await__).
                pipe.hset(session_key(session.session_id), mapping=fields)
                pipe.expire(session_key(session.session_id), self.attached_ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SessionError("unavailable", f"cannot create a session: {redis_problem(exc)}") from exc
        return session

    async def resume(self, session_id: str, token: str) -> Session:
        """Take the session whose resume token this is (SessionError otherwise), with a new token.

        Atomic: of two clients presenting the same token, exactly one gets the session; the
        other's token no longer matches. A session older than `max_age_s` is not resumed: it
        ended at its maximum length, and a new one is the way on.
        """
        session = Session(session_id, "", secrets.token_urlsafe(24))
        born_after = time.time() - self.max_age_s if self.max_age_s > 0 else 0
        try:
            taken = await self._resume(
                keys=[session_key(session_id)],
                args=[
                    _hash(token), _hash(session.resume_token), self.replica, self.attached_ttl_s, SESSIONS_CHANNEL,
                    born_after, session_id,
                ],
            )
        except (RedisError, OSError) as exc:
            raise SessionError("unavailable", f"cannot resume: {redis_problem(exc)}") from exc
        if taken is None:
            raise SessionError("resume_failed", "unknown session or wrong resume token")
        if taken == 0:
            raise SessionError("resume_failed", "the session has reached its maximum length")
        dialog_id, epoch, voice, created_at = taken
        return Session(
            session_id, dialog_id.decode(), session.resume_token, int(epoch), voice == b"1",
            created_at=float(created_at or 0),
        )

    async def mark_voice(self, session: Session) -> None:
        """Remember that the session carries a voice call, for the replica that may resume it."""
        await self._redis.hset(session_key(session.session_id), "voice", 1)

    async def detach(self, session: Session) -> bool:
        """The client left: keep the session (and its event log) for `detached_ttl_s` in case it
        comes back. False, changing nothing, when another replica has taken the session since."""
        kept = await self._expire_if_owner(
            keys=[session_key(session.session_id), event_log_key(session.session_id)],
            args=[session.epoch, self.detached_ttl_s],
        )
        return bool(kept)
