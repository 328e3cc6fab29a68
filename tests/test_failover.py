"""Replicas dying under a call, through haproxy with three replicas: kill -9 in the middle of a
reply, SIGTERM (the drain), and a Redis restart. The call resumes on another replica, gets what
it missed, goes on with the next file, and Redis holds every caller turn said."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from parley.call_client import CallClient
from parley.server_process import free_port
from parley.services.cluster import Cluster, ClusterConfig
from parley.services.haproxy import BalancerConfig
from tests.conftest import stored_turns
from tests.speech import STEREO_TEXT, wer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def cluster(settings):
    state = Path(tempfile.mkdtemp(prefix="parley-failover-", dir="/tmp"))
    config = ClusterConfig(replicas=3, state_dir=str(state), balancer=BalancerConfig(port=free_port()))
    replica_env = {
        "PARLEY_LLM_TEMPERATURE": "0", "PARLEY_LLM_SEED": "42", "PARLEY_LLM_MAX_TOKENS": "48",
        # A draining replica hands its calls on after a second, not a minute.
        "PARLEY_SERVER_DRAIN_TIMEOUT_S": "1",
    }
    async with Cluster(config, settings=settings, env=replica_env) as running:
        yield running
    shutil.rmtree(state, ignore_errors=True)


async def first_delta_after(client: CallClient, since: int) -> None:
    async with asyncio.timeout(60):
        while not any(m["type"] == "reply" and "delta" in m for _, m in client.messages[since:]):
            await asyncio.sleep(0.005)


async def user_turns(cluster: Cluster, dialog_id: str) -> list[str]:
    return [t.text for t in await stored_turns(cluster.redis_url, dialog_id) if t.role == "user"]


async def test_kill_9_of_the_replica_serving_a_call_mid_reply_loses_no_turn(cluster, speakers, tmp_path):
    await cluster.replace_dead()
    async with CallClient(cluster.url) as client:
        first, _ = await client.talk(speakers[0], out_dir=tmp_path, index=1)
        assert first.reply_text and not first.dropped
        victim = await cluster.serving(client.session["session_id"])
        since = len(client.messages)
        talking = asyncio.create_task(client.talk(speakers[1], out_dir=tmp_path, index=2))
        await first_delta_after(client, since)
        os.kill(victim.pid, signal.SIGKILL)  # in the middle of the reply to the second file
        second, _ = await talking
        third, _ = await client.talk(speakers[0], out_dir=tmp_path, index=3)
        dialog_id = client.session["dialog_id"]
        assert len(client.reconnects) == 1 and client.reconnects[0].resume_ms > 0
        assert (await cluster.serving(client.session["session_id"])).pid != victim.pid
    assert second.dropped and wer(STEREO_TEXT[1], second.transcript) <= 0.2
    assert second.reply_text  # answered again by the replica that took the call over
    assert third.reply_text and not third.dropped
    said = await user_turns(cluster, dialog_id)
    assert len(said) == 3 and wer(STEREO_TEXT[1], said[1]) <= 0.2, said


async def test_sigterm_moves_the_call_to_another_replica_and_it_goes_on(cluster, speakers, tmp_path):
    await cluster.replace_dead()
    async with CallClient(cluster.url) as client:
        first, _ = await client.talk(speakers[0], out_dir=tmp_path, index=1)
        draining = await cluster.serving(client.session["session_id"])
        os.kill(draining.pid, signal.SIGTERM)  # it lets the call finish what it does, then says bye
        async with asyncio.timeout(30):
            while not client.dropped:
                await asyncio.sleep(0.05)
        assert any(m == {"type": "bye", "reason": "draining", "reconnect": True} for _, m in client.messages)
        second, _ = await client.talk(speakers[1], out_dir=tmp_path, index=2)
        dialog_id = client.session["dialog_id"]
        assert len(client.reconnects) == 1
        assert (await cluster.serving(client.session["session_id"])).pid != draining.pid
    assert first.reply_text and second.reply_text
    assert len(await user_turns(cluster, dialog_id)) == 2


async def test_a_redis_restart_during_a_call_loses_no_turn(cluster, speakers, tmp_path):
    await cluster.replace_dead()
    async with CallClient(cluster.url) as client:
        first, _ = await client.talk(speakers[0], out_dir=tmp_path, index=1)
        # Down and up again with its append-only file; the call goes on meanwhile.
        await cluster.redis.stop()
        await cluster.redis.start()
        second, _ = await client.talk(speakers[1], out_dir=tmp_path, index=2)
        dialog_id = client.session["dialog_id"]
    assert first.reply_text and second.reply_text
    async with asyncio.timeout(20):  # turns written while Redis was away land when it is back
        while len(said := await user_turns(cluster, dialog_id)) < 2:
            await asyncio.sleep(0.2)
    assert wer(STEREO_TEXT[0], said[0]) <= 0.2 and wer(STEREO_TEXT[1], said[1]) <= 0.2
