"""Learning at once that another replica took one of our sessions.

A resume publishes `<session_id> <epoch>` on `SESSIONS_CHANNEL` (signaling.sessions).
Each replica listens on one subscription and tells the session's socket, if it
serves it with an older epoch, to end its side. A message missed while Redis was
away is caught by the fence instead: the next write of the old owner is refused.
In a Redis Cluster the subscription is on one node: a PUBLISH reaches every node's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.redis_client import open_pubsub
from signaling.sessions import SESSIONS_CHANNEL, Session

log = logging.getLogger(__name__)

Lost = Callable[[], None]


class OwnershipWatch:
    """Run `run()` as a task of the app; `watch()` each session served, `forget()` it at the end."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._watched: dict[str, tuple[int, Lost]] = {}
        self.subscribed = asyncio.Event()

    def watch(self, session: Session, lost: Lost) -> None:
        """Call `lost()` once another replica takes `session` from the epoch held here."""
        self._watched[session.session_id] = (session.epoch, lost)

    def forget(self, session: Session) -> None:
        held = self._watched.get(session.session_id)
        if held is not None and held[0] == session.epoch:
            del self._watched[session.session_id]

    async def run(self) -> None:
        """Listen for taken sessions until cancelled, subscribing again after a Redis outage."""
        backoff = 0.25
        while True:
            pubsub = None
            try:
                pubsub = await open_pubsub(self._redis)
                await pubsub.subscribe(SESSIONS_CHANNEL)
                self.subscribed.set()
                backoff = 0.25
                async for message in pubsub.listen():
                    self._taken(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("ownership watch: %s; subscribing again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    await asyncio.shield(pubsub.aclose())

    def _taken(self, data: bytes) -> None:
        session_id, _, epoch = data.decode().partition(" ")
        held = self._watched.get(session_id)
        if held is not None and held[0] < int(epoch):
            del self._watched[session_id]
            held[1]()
