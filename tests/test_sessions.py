"""Session ownership in Redis: one atomic resume, an epoch that fences every later change, and the
former owner told at once. Against a real Redis of the test's own."""

import asyncio

import pytest
import redis.asyncio as aioredis

from pipeline.dialog_store import DialogStore, Turn
from pipeline.errors import DialogFenced
from signaling.event_log import EventLog, LostOwnership
from signaling.ownership import OwnershipWatch
from signaling.sessions import SessionError, SessionStore, event_log_key, session_key

pytestmark = pytest.mark.slow


@pytest.fixture
async def redis(embedded_redis):
    client = aioredis.from_url(embedded_redis.url)
    yield client
    await client.aclose()


def store(redis, replica: str) -> SessionStore:
    return SessionStore(redis, replica=replica, attached_ttl_s=3600, detached_ttl_s=120)


async def test_of_many_clients_racing_to_resume_one_token_exactly_one_wins_every_time(redis):
    replicas = [store(redis, f"replica-{i}") for i in range(3)]
    for round_ in range(30):
        session = await replicas[0].create()
        outcomes = await asyncio.gather(
            *(replicas[i % 3].resume(session.session_id, session.resume_token) for i in range(8)),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(winners) == 1, f"round {round_}: {outcomes}"
        assert all(isinstance(o, SessionError) and o.code == "resume_failed" for o in outcomes if o is not winners[0])
        assert winners[0].epoch == 2 and winners[0].dialog_id == session.dialog_id
        # The winner's new token works once more; the old one never again.
        again = await replicas[1].resume(session.session_id, winners[0].resume_token)
        assert again.epoch == 3
        with pytest.raises(SessionError):
            await replicas[2].resume(session.session_id, session.resume_token)


async def test_a_former_owner_changes_nothing_and_the_new_owner_everything(redis):
    sessions = store(redis, "a")
    first = await sessions.create()
    events = EventLog(redis, max_events=100)
    await events.append(first, [{"type": "reply", "turn_id": "t", "delta": "Hi"}])
    second = await store(redis, "b").resume(first.session_id, first.resume_token)

    assert not await sessions.detach(first)  # the TTL another replica set stands
    assert await redis.ttl(session_key(first.session_id)) > 3000
    with pytest.raises(LostOwnership):
        await events.append(first, [{"type": "reply", "turn_id": "t", "delta": " there"}])
    with pytest.raises(DialogFenced):
        await DialogStore(redis).put(first.dialog_id, Turn(role="user", text="late"), fence=first.fence)

    await events.append(second, [{"type": "reply", "turn_id": "t", "delta": " again"}])
    assert [e["delta"] for e in await events.since(first.session_id, None)] == ["Hi", " again"]
    assert await store(redis, "b").detach(second)
    assert 0 < await redis.ttl(session_key(first.session_id)) <= 120
    assert 0 < await redis.ttl(event_log_key(first.session_id)) <= 120


async def test_the_event_log_replays_what_came_after_the_last_id_seen_and_is_capped(redis):
    session = await store(redis, "a").create()
    events = EventLog(redis, max_events=100)
    ids = []
    for i in range(0, 500, 50):
        ids += await events.append(session, [{"type": "reply", "turn_id": "t", "delta": str(n)} for n in range(i, i + 50)])
    assert len(set(ids)) == 500 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    after = await events.since(session.session_id, ids[-3])
    assert [(e["id"], e["delta"]) for e in after] == [(ids[-2], "498"), (ids[-1], "499")]
    assert 100 <= await redis.xlen(event_log_key(session.session_id)) < 500  # MAXLEN ~: about the cap
    assert await redis.ttl(event_log_key(session.session_id)) > 3000  # it lives as long as the session


async def test_the_former_owner_is_told_at_once_when_its_session_is_resumed_elsewhere(redis):
    watch = OwnershipWatch(redis)
    watching = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.subscribed.wait(), 5)
        sessions = store(redis, "a")
        mine, other = await sessions.create(), await sessions.create()
        lost = asyncio.Event()
        watch.watch(mine, lost.set)
        watch.watch(other, lambda: pytest.fail("a session nobody resumed was reported taken"))
        await store(redis, "b").resume(mine.session_id, mine.resume_token)
        await asyncio.wait_for(lost.wait(), 5)
    finally:
        watching.cancel()
        await asyncio.wait([watching])
