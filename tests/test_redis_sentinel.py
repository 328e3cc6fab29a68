"""Parley behind Redis Sentinel: real redis-server processes (a master, a replica, three Sentinels)
and a real `parley serve` given REDIS_SENTINELS. A failover in the middle of a dialog loses no turn
and writes none twice, whether an operator's SENTINEL FAILOVER (Sentinel promotes the replica at
once, but tells the old master it is one only about ten seconds later, and until then it takes
writes that its demotion throws away) or the master killed (no master for a few seconds, then one
with no replica left)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from redis.asyncio.connection import SSLConnection

from parley.redis_client import redis_client, sentinel_replicas
from parley.settings import RedisConfig
from pipeline.dialog_store import DialogStore, Turn, dialog_key, reply_turn_id
from tests.conftest import own_server
from tests.fake_openai import ServingLLM
from tests.messages import messages_until
from tests.redis_nodes import MASTER_NAME, sentinel_topology, until

pytestmark = pytest.mark.slow


def is_reply_done(message: dict) -> bool:
    return message["type"] == "reply" and bool(message.get("done"))


@pytest.mark.parametrize("failover", ["SENTINEL FAILOVER", "kill -9 of the master"])
async def test_a_failover_in_the_middle_of_a_dialog_loses_no_turn_and_writes_none_twice(failover, tmp_path):
    said: list[str] = []
    async with sentinel_topology(replicas=1, sentinels=3) as redis_ha, ServingLLM().running() as llm:
        config = RedisConfig(sentinels=redis_ha.sentinel_addresses, sentinel_master=MASTER_NAME)
        env = {"REDIS_SENTINELS": config.sentinels, "REDIS_SENTINEL_MASTER": MASTER_NAME}
        reader = redis_client(config)
        async with own_server("", llm.base_url, tmp_path, **env) as url:
            first_master = await redis_ha.master_address()
            async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
                session = json.loads(await ws.recv())

                async def turn() -> None:
                    said.append(f"This is turn number {len(said) + 1}.")
                    await ws.send(json.dumps({"type": "text", "text": said[-1]}))
                    await messages_until(ws, is_reply_done)

                for _ in range(4):
                    await turn()
                if failover == "SENTINEL FAILOVER":
                    await redis_ha.failover()
                else:
                    redis_ha.master.kill()
                # Turns while the replica is promoted, then in the seconds after (the old master,
                # if alive and not yet told, still takes writes on the call's open connections).
                while await redis_ha.master_address() == first_master:
                    await turn()
                for _ in range(4):
                    await turn()

                # The call goes on meanwhile; its turns reach the new master, each once.
                deadline = time.monotonic() + 60
                while len(stored := await DialogStore(reader).turns(session["dialog_id"])) < 2 * len(said):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
            new_master = await redis_ha.master_address()
            zset_size = await reader.zcard(dialog_key(session["dialog_id"]))
            ids_size = await reader.hlen(dialog_key(session["dialog_id"]) + ":ids")
        await reader.aclose()
    log = (tmp_path / "server.log").read_text()

    assert new_master != first_master
    assert [t.text for t in stored if t.role == "user"] == said
    in_pairs = []  # each caller turn, then the reply to it
    for user in (t for t in stored if t.role == "user"):
        in_pairs += [("user", user.turn_id), ("assistant", reply_turn_id(user.turn_id))]
    assert [(t.role, t.turn_id) for t in stored] == in_pairs
    assert [t.seq for t in stored] == list(range(1, 2 * len(said) + 1))
    assert zset_size == ids_size == 2 * len(said)  # nothing voided, nothing twice
    if failover == "SENTINEL FAILOVER":
        # The old master took some of them after the promotion: written again, on the new one.
        assert "reached no replica" in log
    assert "Traceback" not in log


async def test_with_no_live_replica_a_lone_master_write_counts_at_once(tmp_path):
    async with sentinel_topology(replicas=1, sentinels=1) as redis_ha:
        client = redis_client(RedisConfig(sentinels=redis_ha.sentinel_addresses, sentinel_master=MASTER_NAME))
        replicas = sentinel_replicas(client, RedisConfig(replica_wait_ms=200))
        store = DialogStore(client, replicas=replicas)
        assert (await store.put("d1", Turn(role="user", text="with a replica")))[1]
        assert await replicas.live() == 1
        await redis_ha.replicas[0].stop()

        async def replica_down() -> bool:
            return await replicas.live() == 0

        await until(replica_down, 30)
        stored, inserted = await store.put("d1", Turn(role="user", text="alone"))
        await client.aclose()
    assert inserted and stored.seq == 2


async def test_behind_sentinel_a_burst_past_the_pool_waits_for_a_connection_as_with_one_redis():
    async with sentinel_topology(replicas=1, sentinels=1) as redis_ha:
        config = RedisConfig(
            sentinels=redis_ha.sentinel_addresses, sentinel_master=MASTER_NAME, max_connections=2, pool_timeout_s=10
        )
        client = redis_client(config)
        # 50 at once on 2 connections: on redis-py's own Sentinel pool 48 fail (MaxConnectionsError).
        counts = await asyncio.gather(*(client.incr("burst") for _ in range(50)))
        await client.aclose()
    assert sorted(counts) == list(range(1, 51))


def test_behind_sentinel_the_url_gives_the_masters_user_password_database_and_tls_not_its_address():
    client = redis_client(RedisConfig(sentinels="127.0.0.1:26379", url="rediss://parley:secret@ignored:6380/3"))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("parley", "secret", 3)
    assert issubclass(client.connection_pool.connection_class, SSLConnection)
    assert "host" not in kwargs and "port" not in kwargs
