"""Sessions in Redis, so any replica can serve a client that comes back.

`sess:{session_id}` is a hash: the dialog id, the sha256 of the resume token (the
token itself is only ever sent to the client), the replica serving it, and when
it was created. Its TTL is long while a client is attached and short after it
leaves, so an abandoned session expires on its own.
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


class SessionError(Exception):
    """A session cannot be created or resumed; `code` goes into the protocol's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    dialog_id: str
    resume_token: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_key(session_id: str) -> str:
    return f"sess:{session_id}"


class SessionStore:
    def __init__(self, redis: aioredis.Redis, *, replica: str, attached_ttl_s: int, detached_ttl_s: int) -> None:
        self._redis = redis
        self.replica = replica
        self.attached_ttl_s = attached_ttl_s
        self.detached_ttl_s = detached_ttl_s

    async def create(self) -> Session:
        """A new session with a new dialog."""
        session = Session(uuid.uuid4().hex, uuid.uuid4().hex, secrets.token_urlsafe(24))
        fields = {
            "dialog_id": session.dialog_id,
            "token_sha256": _hash(session.resume_token),
            "replica": self.replica,
            "created_at": time.time(),
        }
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.hset(session_key(session.session_id), mapping=fields)
                await pipe.expire(session_key(session.session_id), self.attached_ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SessionError("unavailable", f"cannot create a session: {redis_problem(exc)}") from exc
        return session

    async def resume(self, session_id: str, token: str) -> Session:
        """The session whose resume token this is; SessionError otherwise. A new token is issued."""
        key = session_key(session_id)
        try:
            fields = await self._redis.hgetall(key)
        except (RedisError, OSError) as exc:
            raise SessionError("unavailable", f"cannot resume: {redis_problem(exc)}") from exc
        stored = fields.get(b"token_sha256", b"").decode()
        if not stored or not secrets.compare_digest(stored, _hash(token)):
            raise SessionError("resume_failed", "unknown session or wrong resume token")
        session = Session(session_id, fields[b"dialog_id"].decode(), secrets.token_urlsafe(24))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.hset(key, mapping={"token_sha256": _hash(session.resume_token), "replica": self.replica})
                await pipe.expire(key, self.attached_ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SessionError("unavailable", f"cannot resume: {redis_problem(exc)}") from exc
        return session

    async def detach(self, session_id: str) -> None:
        """The client left: keep the session for `detached_ttl_s` in case it comes back."""
        await self._redis.expire(session_key(session_id), self.detached_ttl_s)
