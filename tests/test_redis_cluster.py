"""Parley on a Redis Cluster of three masters started by the test (redis-cli --cluster create):
the stores driven directly, then a `parley serve` given REDIS_CLUSTER=1 serving sessions, a
dialog, a resume, admission and the rate limit with its keys spread over the masters."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from redis.crc import key_slot

from parley.redis_client import redis_client
from parley.settings import RedisConfig
from pipeline.dialog_store import DialogStore, Turn, dialog_key
from pipeline.errors import DialogFenced
from signaling.admission import Admission, count_key
from signaling.client_cap import ClientCap
from signaling.config import AdmissionConfig
from signaling.event_log import EventLog, LostOwnership
from signaling.ownership import OwnershipWatch
from signaling.rate_limit import RateLimitConfig, RateLimiter
from signaling.sessions import SessionError, SessionStore, event_log_key, session_key
from tests.conftest import own_server
from tests.fake_openai import ServingLLM
from tests.messages import messages_until
from tests.redis_nodes import cluster_topology, until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def redis_cluster():
    async with cluster_topology(masters=3) as cluster:
        yield cluster


@pytest.fixture
async def client(redis_cluster):
    client = redis_client(RedisConfig(url=redis_cluster.url, cluster=True))
    await client.flushall()  # on every master: each test starts from an empty cluster
    yield client
    await client.aclose()


def store(client, replica: str) -> SessionStore:
    return SessionStore(client, replica=replica, attached_ttl_s=3600, detached_ttl_s=120)


def master_of(client, key: str) -> str:
    return client.nodes_manager.get_node_from_slot(key_slot(key.encode())).name


async def test_a_sessions_keys_share_its_slot_and_sessions_spread_over_every_master(client):
    sessions, events, dialogs = store(client, "a"), EventLog(client, max_events=100), DialogStore(client)
    created = [await sessions.create() for _ in range(40)]
    for session in created:
        await dialogs.put(session.dialog_id, Turn(role="user", text="hello"), fence=session.fence)
        await events.append(session, [{"type": "reply", "turn_id": "t", "delta": "hi"}])
        keys = [session_key(session.session_id), event_log_key(session.session_id), dialog_key(session.dialog_id)]
        assert len({key_slot(k.encode()) for k in [*keys, dialog_key(session.dialog_id) + ":ids"]}) == 1
    assert len({master_of(client, session_key(s.session_id)) for s in created}) == 3
    assert [t.text for t in await dialogs.turns(created[0].dialog_id)] == ["hello"]
    assert [e["delta"] for e in await events.since(created[0].session_id, None)] == ["hi"]


async def test_a_resume_fences_the_former_owner_and_tells_it_whichever_master_holds_the_session(client):
    watch = OwnershipWatch(client)  # subscribed on one master; a session on each of the three
    watching = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.subscribed.wait(), 10)
        sessions = store(client, "a")
        on_master: dict[str, object] = {}
        while len(on_master) < 3:
            session = await sessions.create()
            on_master.setdefault(master_of(client, session_key(session.session_id)), session)
        lost = {name: asyncio.Event() for name in on_master}
        for name, session in on_master.items():
            watch.watch(session, lost[name].set)
        for session in on_master.values():
            # Five replicas race with one token: exactly one wins.
            taken = await asyncio.gather(
                *(store(client, f"b{i}").resume(session.session_id, session.resume_token) for i in range(5)),
                return_exceptions=True,
            )
            assert sum(not isinstance(t, SessionError) for t in taken) == 1
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in lost.values())), 10)
    finally:
        watching.cancel()
        await asyncio.wait([watching])
    for session in on_master.values():
        with pytest.raises(DialogFenced):
            await DialogStore(client).put(session.dialog_id, Turn(role="user", text="late"), fence=session.fence)
        with pytest.raises(LostOwnership):
            await EventLog(client, max_events=100).append(session, [{"type": "reply", "delta": "late"}])
        assert not await sessions.detach(session)


async def test_the_rate_limiter_takes_its_two_buckets_in_steps_and_each_holds(client):
    assert master_of(client, "rl:ip:198.51.100.7") != master_of(client, "rl:global")  # two nodes: two steps
    limiter = RateLimiter(client, RateLimitConfig(per_ip_rate=0, per_ip_burst=10))
    decisions = await asyncio.gather(*(limiter.take("198.51.100.7") for _ in range(100)))
    assert sum(d.admitted for d in decisions) == 10
    everyone = RateLimiter(client, RateLimitConfig(per_ip_rate=0, per_ip_burst=2, global_rate=0, global_burst=3))
    assert [(await everyone.take(f"203.0.113.{i}")).admitted for i in range(5)] == [True, True, True, False, False]
    # What the steps cost: the refused request spent a token of its address's bucket (not given back).
    assert float(await client.hget("rl:ip:203.0.113.4", "tokens")) == 1


async def test_admission_holds_the_cluster_cap_and_the_per_address_cap_across_replicas(client):
    config = AdmissionConfig(max_calls=3, cluster_max_calls=4, max_calls_per_ip=2)
    a, b = Admission(client, "a", config), Admission(client, "b", config)
    first = [await a.admit("calls") for _ in range(3)]
    then = [await b.admit("calls") for _ in range(2)]
    assert first == [None, None, None] and then[0] is None
    assert then[1].reason == "cluster" and not then[1].room_elsewhere
    await a.publish()  # the heartbeat, a MULTI on the one slot
    assert {k: int(v) for k, v in (await client.hgetall(count_key("calls"))).items()} == {b"a": 3, b"b": 1}
    caps = [ClientCap(client, name, config) for name in ("a", "b")]
    assert [await cap.take("calls", "192.0.2.5") for cap in (*caps, *caps)] == [True, True, False, False]
    await caps[0].publish()


async def test_a_server_on_the_cluster_serves_sessions_dialogs_resumes_admission_and_rate_limits(
    redis_cluster, client, tmp_path
):
    env = {
        "REDIS_CLUSTER": "1",
        "PARLEY_ADMISSION_MAX_SESSIONS": "2",
        "PARLEY_RATE_LIMIT_PER_IP_RATE": "0",
        "PARLEY_RATE_LIMIT_PER_IP_BURST": "4",
    }
    async with ServingLLM().running() as llm, own_server(redis_cluster.url, llm.base_url, tmp_path, **env) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        first = await websockets.connect(ws_url)  # token 1
        session = json.loads(await first.recv())
        await first.send(json.dumps({"type": "text", "text": "Hello there."}))
        done = (await messages_until(first, lambda m: m["type"] == "reply" and m.get("done")))[-1]

        back = await websockets.connect(ws_url + "?resume")  # token 2
        await back.send(json.dumps({
            "type": "resume", "session_id": session["session_id"], "resume_token": session["resume_token"],
            "last_event_id": None,
        }))
        resumed, history = json.loads(await back.recv()), json.loads(await back.recv())
        bye = (await messages_until(first, lambda m: m["type"] == "bye"))[-1]

        async def one_session() -> bool:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{url}/stats")).json()["sessions"] == 1

        await until(one_session, 10)  # the first socket's place is given back
        other = await websockets.connect(ws_url)  # token 3: the second place
        assert json.loads(await other.recv())["type"] == "session"
        async with websockets.connect(ws_url) as full:  # token 4: no place left
            refused = json.loads(await full.recv())
        async with websockets.connect(ws_url) as flooding:  # token 5: none left
            limited = json.loads(await flooding.recv())
        for ws in (first, back, other):
            await ws.close()
        turns = await DialogStore(client).turns(session["dialog_id"])

    assert resumed["type"] == "session" and resumed["resumed"] and resumed["session_id"] == session["session_id"]
    assert [(t["role"], t["text"]) for t in history["turns"]] == [("user", "Hello there."), ("assistant", done["text"])]
    assert bye["reason"] == "resumed_elsewhere"
    assert (refused["type"], refused["code"]) == ("error", "over_capacity")
    assert (limited["type"], limited["code"]) == ("error", "rate_limited")
    assert [(t.role, t.text) for t in turns] == [("user", "Hello there."), ("assistant", done["text"])]
    assert "Traceback" not in (tmp_path / "server.log").read_text()
