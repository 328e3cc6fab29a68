import asyncio

import pytest
import redis.asyncio as aioredis

from pipeline.dialog_buffer import DialogBuffer
from pipeline.dialog_store import DialogStore, Turn

pytestmark = pytest.mark.slow


async def test_turns_spoken_while_redis_is_down_land_once_and_in_order(embedded_redis):
    client = aioredis.from_url(embedded_redis.url, socket_timeout=1, socket_connect_timeout=1)
    store = DialogStore(client)
    dialog = DialogBuffer(store, "outage")
    writer = asyncio.create_task(dialog.run())
    try:
        await dialog.history()
        dialog.add(Turn(role="user", text="one"))
        dialog.add(Turn(role="assistant", text="two"))
        await asyncio.wait_for(dialog.flushed.wait(), 5)

        await embedded_redis.stop()
        dialog.add(Turn(role="user", text="three"))
        dialog.add(Turn(role="assistant", text="four"))
        await asyncio.sleep(0.5)  # the writer tries, fails, and keeps the turns
        assert dialog.pending == 2
        assert [t.text for t in await dialog.history()] == ["one", "two", "three", "four"]

        await embedded_redis.start()
        await asyncio.wait_for(dialog.flushed.wait(), 10)
        stored = await store.turns("outage")
        assert [(t.seq, t.text) for t in stored] == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
    finally:
        writer.cancel()
        await client.aclose()


async def test_a_dialog_first_written_after_an_outage_follows_what_is_stored(embedded_redis):
    client = aioredis.from_url(embedded_redis.url, socket_timeout=1, socket_connect_timeout=1)
    store = DialogStore(client)
    await store.put("resumed", Turn(role="user", text="earlier call"))
    await store.put("resumed", Turn(role="assistant", text="earlier reply"))
    await embedded_redis.stop()
    dialog = DialogBuffer(store, "resumed")  # this call never read Redis
    dialog.add(Turn(role="user", text="new"))
    await embedded_redis.start()
    assert await dialog.flush(timeout_s=10)
    assert [(t.seq, t.text) for t in await store.turns("resumed")] == [
        (1, "earlier call"), (2, "earlier reply"), (3, "new"),
    ]
    await client.aclose()


async def test_a_turn_updated_before_it_lands_is_written_once_with_its_latest_text(embedded_redis):
    client = aioredis.from_url(embedded_redis.url, socket_timeout=1, socket_connect_timeout=1)
    store = DialogStore(client)
    await embedded_redis.stop()
    dialog = DialogBuffer(store, "updated")
    dialog.add(Turn(role="user", text="Please enter your", turn_id="t1"))
    dialog.add(Turn(role="assistant", text="Sure", turn_id="t1-bot"))
    dialog.add(Turn(role="user", text="Please enter your number.", turn_id="t1"))
    assert dialog.pending == 2
    await embedded_redis.start()
    assert await dialog.flush(timeout_s=10)
    assert [(t.seq, t.text) for t in await store.turns("updated")] == [(1, "Please enter your number."), (2, "Sure")]
    await client.aclose()
