import asyncio
import random

import pytest
import redis.asyncio as aioredis

from pipeline.dialog_store import DialogStore, Fence, Turn, dialog_key, reply_turn_id
from pipeline.errors import DialogFenced

pytestmark = pytest.mark.slow


@pytest.fixture
async def store(embedded_redis):
    client = aioredis.from_url(embedded_redis.url)
    yield DialogStore(client, ttl_s=900), client
    await client.aclose()


async def test_turns_read_back_in_sequence_order(store):
    dialogs, _ = store
    for i, role in enumerate(["user", "assistant", "user"]):
        stored, inserted = await dialogs.put("d1", Turn(role=role, text=f"turn {i}"))
        assert inserted and stored.seq == i + 1
    assert [t.text for t in await dialogs.turns("d1")] == ["turn 0", "turn 1", "turn 2"]


async def test_a_retried_turn_is_stored_once(store):
    dialogs, client = store
    turn = Turn(role="user", text="hello")
    first, inserted = await dialogs.put("d2", turn)
    again, inserted_again = await dialogs.put("d2", turn)
    assert inserted and not inserted_again and again.seq == first.seq
    assert await client.zcard(dialog_key("d2")) == 1


async def test_twenty_concurrent_writers_of_one_turn_leave_one_member(store):
    dialogs, client = store
    turn = Turn(role="user", text="once only")
    results = await asyncio.gather(*(dialogs.put("d3", turn) for _ in range(20)))
    assert sum(inserted for _, inserted in results) == 1
    assert await client.zcard(dialog_key("d3")) == 1


async def test_a_turn_written_again_is_updated_in_its_place_and_ttl_is_refreshed(store):
    dialogs, client = store
    first, _ = await dialogs.put("d4", Turn(role="user", text="Please enter your", turn_id="t1"))
    await dialogs.put("d4", Turn(role="assistant", text="reply", turn_id="t1-bot"))
    again, inserted = await dialogs.put("d4", Turn(role="user", text="Please enter your number.", turn_id="t1"))
    assert not inserted and again.seq == first.seq == 1
    assert [(t.seq, t.text) for t in await dialogs.turns("d4")] == [(1, "Please enter your number."), (2, "reply")]
    assert 890 <= await client.ttl(dialog_key("d4")) <= 900
    assert 890 <= await client.ttl(dialog_key("d4") + ":ids") <= 900


async def test_a_turn_written_again_empty_is_void_and_a_later_write_fills_its_place(store):
    dialogs, _ = store
    await dialogs.put("d7", Turn(role="user", text="Hello", turn_id="t1"))
    await dialogs.put("d7", Turn(role="assistant", text="Good morning, how", turn_id=reply_turn_id("t1")))
    await dialogs.put("d7", Turn(role="assistant", text="", turn_id=reply_turn_id("t1")))  # the caller went on
    assert [t.text for t in await dialogs.turns("d7")] == ["Hello"]
    await dialogs.put("d7", Turn(role="user", text="Hello there", turn_id="t1"))
    await dialogs.put("d7", Turn(role="assistant", text="Hi!", turn_id=reply_turn_id("t1")))
    assert [(t.seq, t.text) for t in await dialogs.turns("d7")] == [(1, "Hello there"), (2, "Hi!")]


async def test_two_writers_on_one_dialog_get_distinct_numbers(store):
    dialogs, _ = store
    turns = [Turn(role="user", text=f"writer {i}") for i in range(30)]
    stored = await asyncio.gather(*(dialogs.put("d5", t) for t in turns))
    assert sorted(t.seq for t, _ in stored) == list(range(1, 31))
    assert len(await dialogs.turns("d5")) == 30


async def test_a_fenced_write_lands_only_while_the_writer_owns_the_session(store):
    dialogs, client = store
    await client.hset("sess:s6", "epoch", 2)
    await dialogs.put("d6", Turn(role="user", text="owner"), fence=Fence("sess:s6", 2))
    with pytest.raises(DialogFenced):
        await dialogs.put("d6", Turn(role="user", text="former owner"), fence=Fence("sess:s6", 1))
    await client.delete("sess:s6")  # an expired session has no owner at all
    with pytest.raises(DialogFenced):
        await dialogs.put("d6", Turn(role="user", text="too late"), fence=Fence("sess:s6", 2))
    assert [t.text for t in await dialogs.turns("d6")] == ["owner"]


async def test_a_writer_cancelled_in_the_middle_of_a_turn_write_ends(store):
    store, _ = store
    # A call's dialog writer is cancelled when the call ends, whatever Redis command it is in: the
    # cancellation must reach it, or the call's TaskGroup waits for it forever. Cancelled at random
    # moments, some inside a command's round trip.
    rng = random.Random(7)
    for attempt in range(200):

        async def write_forever() -> None:
            while True:
                await store.put("cancelled-writer", Turn(role="user", text=f"turn {attempt}"))

        writer = asyncio.create_task(write_forever())
        await asyncio.sleep(rng.random() * 0.003)
        writer.cancel()
        await asyncio.wait([writer], timeout=2)
        assert writer.cancelled(), f"attempt {attempt}: the writer went on after it was cancelled"
