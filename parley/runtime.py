"""Starting what a process needs from its settings: Redis and the LLM, embedded or external."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from parley.services.llm_server import EmbeddedLLMServer, embedded_llm_servers
from parley.services.redis_server import EmbeddedRedis
from parley.settings import Settings


@dataclass(slots=True)
class Services:
    """The URLs in use, and the embedded children (None where an external service is configured)."""

    settings: Settings
    redis: EmbeddedRedis | None = None
    llm_servers: list[EmbeddedLLMServer] = field(default_factory=list)


@contextlib.asynccontextmanager
async def services(settings: Settings, *, redis: bool = True, llm: bool = True) -> AsyncIterator[Services]:
    """Start the embedded Redis and llama-server where none is configured; stop them on exit.

    The yielded `settings` carry the URLs actually in use, so callers read them from one place.
    """
    running = Services(settings)
    try:
        if redis and not settings.redis.url and not settings.redis.sentinels:
            running.redis = EmbeddedRedis(settings.redis.state_dir)
            url = await running.redis.start()
            running.settings = replace(running.settings, redis=replace(settings.redis, url=url))
        if llm and not settings.llm.base_url:
            running.llm_servers = embedded_llm_servers(
                settings.llm_server, log_dir=Path(settings.server.log_dir).expanduser()
            )
            urls = [await server.start() for server in running.llm_servers]
            # Our own llama-servers: their slots are known, so each dialog can keep one (and its cache).
            slots = settings.llm_server.parallel if settings.llm.server_slots < 0 else settings.llm.server_slots
            ours = replace(running.settings.llm, base_url=",".join(urls), server_slots=slots)
            running.settings = replace(running.settings, llm=ours)
        yield running
    finally:
        for server in reversed(running.llm_servers):
            await server.stop()
        if running.redis is not None:
            await running.redis.stop()
