import asyncio

import pytest
import redis.asyncio as aioredis

from parley.redis_client import redis_client, redis_problem
from parley.settings import RedisConfig
from signaling.admission import Admission, count_key, line_key
from signaling.config import AdmissionConfig

pytestmark = pytest.mark.slow


@pytest.fixture
async def redis(embedded_redis):
    client = redis_client(RedisConfig(url=embedded_redis.url))
    yield client
    await client.aclose()


def replica(redis, name: str, **config) -> Admission:
    return Admission(redis, name, AdmissionConfig(**{"max_calls": 2, "max_sessions": 10, **config}))


async def test_a_replica_takes_calls_up_to_its_capacity_and_a_place_given_back_is_free_again(redis):
    a = replica(redis, "a")
    assert [await a.admit("calls") for _ in range(2)] == [None, None]
    refusal = await a.admit("calls")
    assert refusal is not None and refusal.reason == "replica" and refusal.retry_after_s == 5.0
    assert not refusal.room_elsewhere  # there is no other replica
    assert await a.admit("sessions") is None  # sessions have places of their own
    await a.release("calls")
    assert await a.admit("calls") is None
    assert int(await redis.hget(count_key("calls"), "a")) == 2


async def test_a_refusal_says_whether_another_replica_has_room(redis):
    a, b = replica(redis, "a", max_calls=1), replica(redis, "b", max_calls=1)
    await b.publish()
    assert await a.admit("calls") is None
    assert (await a.admit("calls")).room_elsewhere  # b has a free place
    assert await b.admit("calls") is None
    assert not (await a.admit("calls")).room_elsewhere  # now both are full


async def test_the_cluster_cap_holds_across_replicas_taking_places_at_once(redis):
    replicas = [replica(redis, f"r{i}", max_calls=10, cluster_max_calls=7) for i in range(4)]
    outcomes = await asyncio.gather(*(r.admit("calls") for r in replicas for _ in range(5)))
    assert sum(o is None for o in outcomes) == 7
    assert {o.reason for o in outcomes if o is not None} == {"cluster"}
    assert sum(r.active["calls"] for r in replicas) == 7


async def test_a_replica_whose_heartbeat_stopped_is_not_counted(redis):
    gone = replica(redis, "gone", max_calls=5, cluster_max_calls=5, heartbeat_s=0.1, replica_ttl_s=0.3)
    for _ in range(5):
        assert await gone.admit("calls") is None
    alive = replica(redis, "alive", max_calls=5, cluster_max_calls=5, heartbeat_s=0.1, replica_ttl_s=0.3)
    assert (await alive.admit("calls")).reason == "cluster"
    # "gone" dies without a word: once its deadline passes, its five calls no longer count.
    async with asyncio.timeout(10):
        while (refusal := await alive.admit("calls")) is not None:
            await asyncio.sleep(0.1)
    assert await redis.hget(count_key("calls"), "gone") is None


async def test_the_local_count_heals_a_count_lost_in_redis(redis):
    a = replica(redis, "a")
    assert await a.admit("calls") is None
    await redis.flushall()  # Redis restarted without its data
    await a.publish()
    assert int(await redis.hget(count_key("calls"), "a")) == 1
    assert await a.admit("calls") is None
    assert (await a.admit("calls")).reason == "replica"


async def test_with_redis_away_a_replica_decides_by_its_own_capacity():
    dead = aioredis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    a = replica(dead, "a")
    assert [await a.admit("calls") for _ in range(2)] == [None, None]
    assert (await a.admit("calls")).reason == "replica"
    await a.release("calls")
    assert a.active["calls"] == 1
    await dead.aclose()


async def test_a_draining_replica_takes_nobody_and_shows_no_room(redis):
    a, b = replica(redis, "a"), replica(redis, "b")
    await a.withdraw()
    assert (await a.admit("sessions")).reason == "draining"
    assert await b.admit("calls") is None
    assert await b.admit("calls") is None  # b's second place
    assert not (await b.admit("calls")).room_elsewhere  # a is draining: no room there


async def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing(embedded_redis):
    client = redis_client(RedisConfig(url=embedded_redis.url, max_connections=4, pool_timeout_s=10))
    try:
        # 1,000 commands at once through 4 connections: they queue, none fails.
        results = await asyncio.gather(*(client.incr("burst") for _ in range(1000)))
        assert sorted(results) == list(range(1, 1001))
    finally:
        await client.aclose()
    tiny = redis_client(RedisConfig(url=embedded_redis.url, max_connections=1, pool_timeout_s=0.05))
    try:
        blocked = asyncio.create_task(tiny.blpop(["never"], timeout=2))  # holds the only connection
        await asyncio.sleep(0.2)
        with pytest.raises(Exception) as failure:
            await tiny.get("x")
        assert redis_problem(failure.value) == "Redis is busy: no connection free in this server's pool in time"
        blocked.cancel()
    finally:
        await tiny.aclose()


async def test_callers_who_wait_in_line_get_the_free_places_in_their_order(redis):
    a = replica(redis, "a", max_calls=1)
    assert await a.admit("calls", "first") is None
    second, third = await a.admit("calls", "second"), await a.admit("calls", "third")
    assert (second.reason, second.position, third.position, third.waiting) == ("replica", 1, 2, 2)
    assert (await a.admit("calls")).position is None  # a newcomer that does not ask to wait
    await a.release("calls")
    # A free place, but two came first: the third, and any newcomer, wait their turn.
    behind = await a.admit("calls", "third")
    assert (behind.reason, behind.position) == ("line", 2)
    newcomer = await a.admit("calls")
    assert (newcomer.reason, newcomer.position) == ("line", None)
    assert await a.admit("calls", "second") is None  # first in line
    await a.release("calls")
    assert await a.admit("calls", "third") is None
    assert int(await redis.zcard(line_key("calls"))) == 0


async def test_a_free_place_on_another_replica_goes_to_the_first_in_line(redis):
    a, b = replica(redis, "a", max_calls=1), replica(redis, "b", max_calls=1)
    await b.publish()
    assert await a.admit("calls") is None and await b.admit("calls") is None
    assert (await a.admit("calls", "waiting")).position == 1
    await b.release("calls")
    # b's free place is the waiting caller's: a newcomer at b is refused, the caller is taken there.
    assert (await b.admit("calls", "late")).reason == "line"
    refused_here = await a.admit("calls", "waiting")
    assert (refused_here.reason, refused_here.room_elsewhere, refused_here.position) == ("replica", True, 1)
    assert await b.admit("calls", "waiting") is None


async def test_a_caller_who_stops_trying_leaves_the_line(redis):
    a = replica(redis, "a", max_calls=1, retry_after_s=0.1, line_hold_s=0.3)
    assert await a.admit("calls") is None
    assert (await a.admit("calls", "gone")).position == 1
    assert (await a.admit("calls", "stays")).position == 2
    await a.release("calls")
    # "gone" never comes back; once its hold runs out, "stays" is next, and takes the place.
    async with asyncio.timeout(10):
        while (refusal := await a.admit("calls", "stays")) is not None:
            assert refusal.position in (1, 2)
            await asyncio.sleep(0.05)
    assert int(await redis.zcard(line_key("calls"))) == 0


async def test_the_line_holds_at_most_line_max_calls(redis):
    a = replica(redis, "a", max_calls=1, line_max_calls=2)
    assert await a.admit("calls") is None
    positions = [(await a.admit("calls", f"c{i}")).position for i in range(4)]
    assert positions == [1, 2, None, None]
    assert (await a.admit("calls", "c1")).position == 2  # a place held is kept


async def test_without_a_line_a_refusal_has_no_position(redis):
    a = replica(redis, "a", max_calls=1, line_max_calls=0)
    assert await a.admit("calls", "x") is None
    refusal = await a.admit("calls", "y")
    assert (refusal.reason, refusal.position) == ("replica", None)


async def test_a_caller_who_hangs_up_in_line_leaves_it_at_once_and_those_behind_move_up(redis):
    a = replica(redis, "a", max_calls=1)
    assert await a.admit("calls") is None
    assert [(await a.admit("calls", t)).position for t in ("gone", "stays")] == [1, 2]
    await a.leave_line("calls", "gone")
    assert (await a.admit("calls", "stays")).position == 1
    await a.release("calls")
    assert await a.admit("calls", "stays") is None  # next in line, with no hold to wait out
