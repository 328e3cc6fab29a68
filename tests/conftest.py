"""Shared fixtures: settings, the real models, and the embedded services, each started once."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import pytest

from parley.services.llm_server import EmbeddedLLMServer
from parley.services.redis_server import EmbeddedRedis
from parley.settings import Settings, load_settings


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


@pytest.fixture
async def embedded_redis() -> EmbeddedRedis:
    """A private Redis in a fresh state directory (short, because a unix socket path is limited to 107 bytes)."""
    state = Path(tempfile.mkdtemp(prefix="parley-redis-", dir="/tmp"))
    redis_server = EmbeddedRedis(state)
    await redis_server.start()
    yield redis_server
    await redis_server.stop()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
async def shared_redis() -> EmbeddedRedis:
    """One private Redis for the tests that run a whole server."""
    state = Path(tempfile.mkdtemp(prefix="parley-redis-", dir="/tmp"))
    redis_server = EmbeddedRedis(state)
    await redis_server.start()
    yield redis_server
    await redis_server.stop()
    shutil.rmtree(state, ignore_errors=True)
