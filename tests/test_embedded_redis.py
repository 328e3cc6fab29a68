import os
import signal

import pytest
import redis.asyncio as aioredis

from parley.runtime import services
from parley.settings import load_settings

pytestmark = pytest.mark.slow


async def test_a_value_survives_a_restart_of_the_embedded_redis(embedded_redis):
    client = aioredis.from_url(embedded_redis.url)
    await client.set("parley:test", "kept")
    await client.aclose()

    await embedded_redis.stop()
    assert not embedded_redis.socket_path.exists() or not await embedded_redis._ping()
    await embedded_redis.start()

    client = aioredis.from_url(embedded_redis.url)
    assert await client.get("parley:test") == b"kept"
    await client.aclose()


async def test_redis_starts_embedded_when_redis_url_is_unset(tmp_path_factory):
    import tempfile

    state = tempfile.mkdtemp(prefix="parley-rt-", dir="/tmp")
    settings = load_settings(environ={"PARLEY_REDIS_STATE_DIR": state})
    assert settings.redis.url == ""
    async with services(settings, llm=False) as running:
        assert running.redis is not None and running.redis.owned
        assert running.settings.redis.url == f"unix://{state}/redis.sock"
        client = aioredis.from_url(running.settings.redis.url)
        assert await client.ping()
        info = await client.info("persistence")
        assert info["aof_enabled"] == 1
        assert (await client.config_get("appendfsync"))["appendfsync"] == "everysec"
        assert (await client.config_get("port"))["port"] == "0"  # no TCP port: the socket only
        await client.aclose()
        pid = running.redis._child.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_redis_url_set_means_no_embedded_redis():
    settings = load_settings(environ={"REDIS_URL": "redis://127.0.0.1:6379/0"})
    async with services(settings, llm=False) as running:
        assert running.redis is None
        assert running.settings.redis.url == "redis://127.0.0.1:6379/0"


async def test_a_killed_embedded_redis_is_restarted(embedded_redis):
    old_pid = embedded_redis._child.pid
    os.kill(old_pid, signal.SIGKILL)
    client = aioredis.from_url(embedded_redis.url)
    for _ in range(100):
        if embedded_redis._child.restarts:
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert embedded_redis._child.restarts == 1 and embedded_redis._child.pid != old_pid
    assert await client.ping()
    await client.aclose()
