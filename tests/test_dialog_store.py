import asyncio
import random

import pytest
import redis.asyncio as aioredis

from pipeline.dialog_store import DialogStore, Turn, dialog_key

pytestmark = pytest.mark.slow


@pytest.fixture
async def store(embedded_redis):
    client = aioredis.from_url(embedded_redis.url)
    yield DialogStore(client, ttl_s=900), client
    await client.aclose()


async def test_turns_read_back_in_sequence_order(store):
    dialogs, _ = store
    for i, role in enumerate(["user", "assistant", "user"]):
        stored, inserted = await dialogs.append("d1", Turn(role=role, text=f"turn {i}"))
        assert inserted and stored.seq == i + 1
    assert [t.text for t in await dialogs.turns("d1")] == ["turn 0", "turn 1", "turn 2"]


async def test_a_retried_turn_is_stored_once(store):
    dialogs, client = store
    turn = Turn(role="user", text="hello")
    first, inserted = await dialogs.append("d2", turn)
    again, inserted_again = await dialogs.append("d2", turn)
    assert inserted and not inserted_again and again.seq == first.seq
    assert await client.zcard(dialog_key("d2")) == 1


async def test_twenty_concurrent_writers_of_one_turn_leave_one_member(store):
    dialogs, client = store
    turn = Turn(role="user", text="once only")
    results = await asyncio.gather(*(dialogs.append("d3", turn) for _ in range(20)))
    assert sum(inserted for _, inserted in results) == 1
    assert await client.zcard(dialog_key("d3")) == 1


async def test_a_turn_keeps_an_explicit_sequence_number_and_ttl_is_refreshed(store):
    dialogs, client = store
    await dialogs.append("d4", Turn(role="user", text="later", seq=5))
    await dialogs.append("d4", Turn(role="user", text="earlier", seq=2))
    assert [t.seq for t in await dialogs.turns("d4")] == [2, 5]
    assert 890 <= await client.ttl(dialog_key("d4")) <= 900
    assert 890 <= await client.ttl(dialog_key("d4") + ":ids") <= 900


async def test_a_writer_cancelled_in_the_middle_of_a_turn_write_ends(store):
    store, _ = store
    # A call's dialog writer is cancelled when the call ends, whatever Redis command it is in: the
    # cancellation must reach it, or the call's TaskGroup waits for it forever. Cancelled at random
    # moments, some inside a command's round trip.
    rng = random.Random(7)
    for attempt in range(200):

        async def write_forever() -> None:
            while True:
                await store.append("cancelled-writer", Turn(role="user", text=f"turn {attempt}"))

        writer = asyncio.create_task(write_forever())
        await asyncio.sleep(rng.random() * 0.003)
        writer.cancel()
        await asyncio.wait([writer], timeout=2)
        assert writer.cancelled(), f"attempt {attempt}: the writer went on after it was cancelled"
