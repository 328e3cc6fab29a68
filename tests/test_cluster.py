"""The local cluster: Redis, one llama-server, three replicas and haproxy, as `parley cluster` runs them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import httpx
import pytest
import websockets

from parley.server_process import free_port
from parley.services.cluster import Cluster, ClusterConfig
from parley.services.haproxy import BalancerConfig
from tests.messages import messages_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def cluster(settings):
    # Under /tmp: the Redis and haproxy sockets live in the state directory (107-byte limit).
    state = Path(tempfile.mkdtemp(prefix="parley-cluster-", dir="/tmp"))
    config = ClusterConfig(replicas=3, state_dir=str(state), balancer=BalancerConfig(port=free_port()))
    replica_env = {"PARLEY_LLM_TEMPERATURE": "0", "PARLEY_LLM_SEED": "42", "PARLEY_LLM_MAX_TOKENS": "48"}
    async with Cluster(config, settings=settings, env=replica_env) as running:
        yield running
    shutil.rmtree(state, ignore_errors=True)


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/ws"


def is_reply_done(message: dict) -> bool:
    return message["type"] == "reply" and bool(message.get("done"))


async def ask(ws, text: str) -> dict:
    """Send a text turn; return the end of its reply."""
    await ws.send(json.dumps({"type": "text", "text": text}))
    return (await messages_until(ws, is_reply_done))[-1]


async def until(condition, seconds: float = 20.0):
    """Poll `condition()` (async) until it returns something true; that value."""
    async with asyncio.timeout(seconds):
        while not (value := await condition()):
            await asyncio.sleep(0.1)
    return value


async def session_counts(cluster: Cluster) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        return {r.name: (await http.get(f"{r.url}/stats")).json()["sessions"] for r in cluster.replicas if r.child.ready}


async def test_a_text_session_through_haproxy_gets_a_reply(cluster):
    assert [r.name for r in await cluster.routed()] == ["replica-1", "replica-2", "replica-3"]
    async with websockets.connect(ws_url(cluster.url)) as ws:
        session = json.loads(await ws.recv())
        assert session["type"] == "session" and session["resume_token"]
        done = await ask(ws, "What is two plus two?")
    assert done["text"].strip()


async def test_sessions_are_spread_over_the_replicas(cluster):
    sockets = [await websockets.connect(ws_url(cluster.url)) for _ in range(6)]
    try:
        for ws in sockets:
            assert json.loads(await ws.recv())["type"] == "session"

        async def all_counted():
            counts = await session_counts(cluster)
            return counts if sum(counts.values()) == 6 else None

        counts = await until(all_counted)
    finally:
        for ws in sockets:
            await ws.close()
    # leastconn with six sessions held at once: every replica has some.
    assert all(n > 0 for n in counts.values()), counts


async def test_a_draining_replica_leaves_the_rotation_and_newcomers_go_to_the_others(cluster):
    draining, others = cluster.replicas[-1], cluster.replicas[:-1]
    async with httpx.AsyncClient(timeout=5.0) as http:
        # A session on the replica itself, mid-reply, so the drain has something to wait for.
        async with websockets.connect(ws_url(draining.url)) as held:
            await held.recv()
            await held.send(json.dumps({"type": "text", "text": "Tell me about the moon."}))
            await messages_until(held, lambda m: m["type"] == "reply" and "delta" in m)
            os.kill(draining.pid, signal.SIGTERM)
            # Read on, as a client does, while newcomers arrive through the frontend.
            held_rest = asyncio.create_task(messages_until(held, lambda m: m["type"] == "bye"), name="held-session")
            try:

                async def readyz_draining():
                    answer = await http.get(f"{draining.url}/readyz")
                    return answer if answer.status_code == 503 else None

                assert (await until(readyz_draining, 10)).json()["status"] == "draining"

                async def out_of_rotation():
                    return draining not in await cluster.routed()

                await until(out_of_rotation, 10)
                before = await cluster.balancer.servers()
                for question in ("What is two plus two?", "Name a colour.", "Say hello."):
                    async with websockets.connect(ws_url(cluster.url)) as ws:
                        assert json.loads(await ws.recv())["type"] == "session"
                        assert (await ask(ws, question))["text"].strip()
                after = await cluster.balancer.servers()
                rest = await held_rest
            finally:
                held_rest.cancel()

    assert after[draining.name].total == before[draining.name].total
    assert sum(after[r.name].total - before[r.name].total for r in others) == 3
    # The held client is sent away to reconnect, which through the frontend lands elsewhere.
    assert rest[-1] == {"type": "bye", "reason": "draining", "reconnect": True}

    async def exited():
        return not draining.child.ready

    await until(exited, 30)
    assert draining.child.failure.endswith("(last exit code 0)")


async def test_a_killed_replica_is_routed_around_at_once(cluster):
    killed = cluster.replicas[1]
    os.kill(killed.pid, signal.SIGKILL)
    # Before a check has noticed: a connection haproxy finds refused is tried on another replica.
    for _ in range(4):
        async with websockets.connect(ws_url(cluster.url)) as ws:
            assert json.loads(await ws.recv())["type"] == "session"

    async def out_of_rotation():
        return killed not in await cluster.routed()

    await until(out_of_rotation, 10)
    assert not killed.child.ready


async def test_replacement_replicas_join_the_rotation(cluster):
    gone = [r for r in cluster.replicas if not r.child.ready]
    replacement = await cluster.add_replica()
    for replica in gone:
        await cluster.remove_replica(replica)
    assert [r.name for r in await cluster.routed()] == ["replica-1", replacement.name]
    assert set(await cluster.balancer.servers()) == {"replica-1", replacement.name}

    before = (await cluster.balancer.servers())[replacement.name].total
    sockets = [await websockets.connect(ws_url(cluster.url)) for _ in range(2)]
    try:
        for ws in sockets:
            assert json.loads(await ws.recv())["type"] == "session"
        # leastconn: of two sessions held at once, one is the newcomer's.
        assert (await cluster.balancer.servers())[replacement.name].total == before + 1
        assert (await ask(sockets[0], "What is two plus two?"))["text"].strip()
    finally:
        for ws in sockets:
            await ws.close()
