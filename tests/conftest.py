"""Shared fixtures: settings, the real models, and the embedded services, each started once."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from parley.server_process import server_process
from parley.services.llm_server import EmbeddedLLMServer
from parley.services.redis_server import EmbeddedRedis
from parley.settings import Settings, load_settings
from pipeline.dialog_store import Turn, dialog_key
from tests.llm_proxy import RecordingProxy


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(environ={})


@pytest.fixture(scope="session")
def transcriber(settings):
    from pipeline.asr import Transcriber

    return Transcriber(settings.asr)


@pytest.fixture(scope="session")
def synthesizer(settings):
    from pipeline.tts import Synthesizer

    return Synthesizer(settings.tts)


@pytest.fixture(scope="session")
async def llm_server(settings, tmp_path_factory) -> EmbeddedLLMServer:
    """The bundled llama-server, started once for the session."""
    server = EmbeddedLLMServer(settings.llm_server, log_dir=tmp_path_factory.mktemp("llm-logs"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def llm_config(settings, llm_server):
    """LLM settings pointing at the session's llama-server, sampling made repeatable."""
    return dataclasses.replace(settings.llm, base_url=llm_server.base_url, temperature=0.0, seed=42)


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[EmbeddedRedis]:
    """A private Redis in a fresh state directory (under /tmp: a unix socket path is limited to 107 bytes)."""
    state = Path(tempfile.mkdtemp(prefix="parley-redis-", dir="/tmp"))
    redis_server = EmbeddedRedis(state)
    await redis_server.start()
    try:
        yield redis_server
    finally:
        await redis_server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
async def embedded_redis() -> EmbeddedRedis:
    """A Redis of the test's own."""
    async with private_redis() as redis_server:
        yield redis_server


@pytest.fixture(scope="session")
async def shared_redis() -> EmbeddedRedis:
    """One Redis for the tests that run a whole server."""
    async with private_redis() as redis_server:
        yield redis_server


@pytest.fixture(scope="session")
async def proxy(llm_server):
    async with RecordingProxy(llm_server.base_url).running() as running:
        yield running


def server_env(redis_url: str, llm_url: str, log_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "PARLEY_LLM_BASE_URL": llm_url,
        "PARLEY_LLM_TEMPERATURE": "0",
        "PARLEY_LLM_SEED": "42",
        # Shorter replies keep the suite quick; every reply still has a sentence or two.
        "PARLEY_LLM_MAX_TOKENS": "48",
        "PARLEY_SERVER_LOG_DIR": str(log_dir),
        **extra,
    }


@pytest.fixture(scope="session")
async def server(shared_redis, proxy, tmp_path_factory):
    """`parley serve` as a user runs it, on the session's Redis and (through the proxy) llama-server."""
    logs = tmp_path_factory.mktemp("server")
    env = server_env(shared_redis.url, proxy.base_url, logs)
    async with server_process(env, log_path=str(logs / "server.log")) as url:
        yield url


async def stored_turns(redis_url: str, dialog_id: str) -> list[Turn]:
    client = aioredis.from_url(redis_url)
    try:
        return [Turn.from_json(m) for m in await client.zrange(dialog_key(dialog_id), 0, -1)]
    finally:
        await client.aclose()
