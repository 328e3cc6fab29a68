"""Shared fixtures: settings, the real models, and the embedded services, each started once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from media.audio_file import read_audio, write_wav
from parley.server_process import server_process
from parley.services.llm_server import EmbeddedLLMServer
from parley.services.redis_server import EmbeddedRedis, private_redis
from parley.settings import Settings, load_settings
from pipeline.dialog_store import DialogStore, Turn
from tests.llm_proxy import RecordingProxy
from tests.speech import STEREO


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(environ={})


@pytest.fixture(scope="session")
def speakers(tmp_path_factory) -> list[str]:
    """The two single-utterance channels of the stereo recording, as mono files."""
    folder = tmp_path_factory.mktemp("speakers")
    paths = []
    for channel in (0, 1):
        path = folder / f"speaker-{channel}.wav"
        write_wav(path, read_audio(STEREO, channel=channel), 16000)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def transcriber(settings):
    from pipeline.asr import Transcriber

    return Transcriber(settings.asr)


@pytest.fixture(scope="session")
def synthesizer(settings):
    """The server's voice without piper's sampling noise: what the tests say is the same every run."""
    from pipeline.tts import Synthesizer

    return Synthesizer(settings.tts.without_noise())


@pytest.fixture(scope="session")
def turn_model(settings):
    from pipeline.turn_model import TurnCompletionModel

    return TurnCompletionModel(settings.turn_model)


@pytest.fixture(scope="session")
def paused_speech(settings):
    """Piper with phoneme timings: `say("... the | pound key.", 0.8)` pauses mid-sentence."""
    from parley.paused_speech import PausedSpeech

    return PausedSpeech(settings.tts)


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
    async with own_server(shared_redis.url, proxy.base_url, tmp_path_factory.mktemp("server")) as url:
        yield url


def own_database(redis_url: str, db: int) -> str:
    """The shared Redis, but a database of a test's own, so its keys are only its server's: no
    other test's server is a replica beside it (admission counts every replica's free lines)."""
    return f"{redis_url}{'&' if '?' in redis_url else '?'}db={db}"


def own_server(redis_url: str, llm_url: str, folder: Path, **settings: str):
    """A `parley serve` of a test's own, with `settings` (PARLEY_* variables); its log in `folder`."""
    return server_process(server_env(redis_url, llm_url, folder, **settings), log_path=str(folder / "server.log"))


async def stored_turns(redis_url: str, dialog_id: str) -> list[Turn]:
    client = aioredis.from_url(redis_url)
    try:
        return await DialogStore(client).turns(dialog_id)
    finally:
        await client.aclose()
