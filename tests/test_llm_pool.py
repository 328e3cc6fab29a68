import asyncio
import dataclasses

import httpx
import pytest

from pipeline.circuit_breaker import BreakerConfig, CircuitBreaker
from pipeline.config import LLMConfig
from pipeline.errors import LLMBusy, LLMCircuitOpen, LLMConnectError, LLMUnavailable
from pipeline.llm_client import PromptUsage
from pipeline.llm_pool import LLMPool, PoolConfig
from tests.fake_openai import CountingServer


def ask(n: int):
    return [{"role": "user", "content": f"question {n}"}]


async def collect(pool: LLMPool, n: int, dialog: str | None = None) -> str:
    return "".join([d async for d in pool.stream_chat(ask(n), dialog_id=dialog)])


@pytest.mark.parametrize("mode", ["concurrent", "prompts"])
async def test_twenty_callers_never_put_more_than_max_inflight_at_the_server(mode):
    async with CountingServer(tokens=5, token_delay_s=0.03).running() as server:
        config = PoolConfig(mode=mode, max_inflight=4, max_batch=4, queue_timeout_ms=10_000)
        async with LLMPool(LLMConfig(base_url=server.base_url), config) as pool:
            replies = await asyncio.gather(*(collect(pool, n) for n in range(20)))
    assert all(len(r.split()) == 5 for r in replies)
    if mode == "concurrent":
        assert server.max_active <= 4 and len(server.requests) == 20
    else:
        # One request carries a batch: never more than 4 prompts in flight at the server.
        assert sum(len(r["prompt"]) for r in server.requests) == 20
        assert max(len(r["prompt"]) for r in server.requests) <= 4
        assert server.max_active <= 4


async def test_requests_arriving_together_while_busy_form_one_prompts_batch():
    async with CountingServer(tokens=10, token_delay_s=0.03).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url), PoolConfig(mode="prompts", max_inflight=8)) as pool:
            first = asyncio.create_task(collect(pool, 0))
            await asyncio.sleep(0.05)  # the first is in flight: the next ones gather for the window
            rest = await asyncio.gather(*(collect(pool, n) for n in range(1, 5)))
            await first
    # A lone request goes as a plain chat request; the four that waited together share one.
    assert "messages" in server.requests[0] and len(server.requests) == 2
    assert len(server.requests[1]["prompt"]) == 4
    assert rest[2].startswith("p2w0")  # each caller gets its own prompt's stream


async def test_a_lone_caller_does_not_wait_for_the_window():
    async with CountingServer(tokens=2, token_delay_s=0.01).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url), PoolConfig(window_ms=5_000)) as pool:
            async with asyncio.timeout(2):  # far below the 5 s window
                assert await collect(pool, 0) == "w0 w1 "


async def test_a_caller_that_gets_no_slot_in_time_is_told_busy():
    async with CountingServer(tokens=20, token_delay_s=0.05).running() as server:
        config = PoolConfig(max_inflight=1, queue_timeout_ms=200)
        async with LLMPool(LLMConfig(base_url=server.base_url), config) as pool:
            slow = asyncio.create_task(collect(pool, 0))
            await asyncio.sleep(0.05)
            with pytest.raises(LLMBusy, match="no LLM slot free within 200 ms"):
                await collect(pool, 1)
            assert await slow
        assert server.max_active == 1


def flaky_transport(fail_first: int, *, after_token: bool = False):
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= fail_first:
            if after_token:
                return httpx.Response(200, content=_broken_stream())
            raise httpx.ConnectError("refused", request=request)
        body = b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}}]}\n\ndata: [DONE]\n\n'
        return httpx.Response(200, content=body)

    return httpx.MockTransport(handler), calls


async def _broken_stream():
    yield b'data: {"choices": [{"index": 0, "delta": {"content": "half"}}]}\n\n'
    raise httpx.RemoteProtocolError("peer closed connection")


async def test_a_connection_error_is_retried_once():
    transport, calls = flaky_transport(1)
    async with LLMPool(LLMConfig(base_url="http://llm.test/v1"), transport=transport) as pool:
        assert await collect(pool, 0) == "ok"
    assert calls["n"] == 2


async def test_no_retry_once_a_token_has_arrived():
    transport, calls = flaky_transport(1, after_token=True)
    async with LLMPool(LLMConfig(base_url="http://llm.test/v1"), transport=transport) as pool:
        with pytest.raises(LLMConnectError):
            await collect(pool, 0)
    assert calls["n"] == 1


async def test_the_breaker_opens_and_then_fails_calls_at_once():
    transport, calls = flaky_transport(10**6)
    breaker = CircuitBreaker(BreakerConfig(min_calls=5, window=10))
    async with LLMPool(LLMConfig(base_url="http://llm.test/v1"), breaker=breaker, transport=transport) as pool:
        for n in range(5):
            with pytest.raises(LLMUnavailable):
                await collect(pool, n)
        assert breaker.state == "open"
        before = calls["n"]
        with pytest.raises(LLMCircuitOpen):
            await collect(pool, 99)
        assert calls["n"] == before  # nothing reached the server


async def test_each_dialog_keeps_its_slot_and_hears_what_its_prompt_cost():
    async with CountingServer(tokens=2, token_delay_s=0.01).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url, server_slots=2)) as pool:
            heard: list[PromptUsage] = []
            for dialog in ["a", "b", "a", "b", "a"]:
                reply = [d async for d in pool.stream_chat(ask(0), dialog_id=dialog, on_usage=heard.append)]
                assert reply == ["w0 ", "w1 "]  # the figures are not part of the reply
    slots = [r["id_slot"] for r in server.requests]
    assert slots[0] != slots[1] and slots[0::2] == [slots[0]] * 3 and slots[1::2] == [slots[1]] * 2
    assert all(r["cache_prompt"] and r["timings_per_token"] for r in server.requests)
    # Told once per request (the same figures came with every chunk): 40 tokens, 30 of them cached.
    assert heard == [PromptUsage(40, 30)] * 5 and heard[0].read == 10


async def test_without_server_slots_the_server_places_requests():
    async with CountingServer(tokens=1, token_delay_s=0.01).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url)) as pool:
            await collect(pool, 0)
    assert "id_slot" not in server.requests[0] and "cache_prompt" not in server.requests[0]


async def test_a_caller_that_gives_up_frees_the_server_before_the_first_token():
    # The server takes 30 s to its first token (a long prompt being read): a caller who leaves
    # (barge-in, a dropped draft) must not hold the server's slot, or the pool's, all that time.
    async with CountingServer(tokens=1, first_token_delay_s=30).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url, server_slots=1), PoolConfig(max_inflight=1)) as pool:
            waiting = asyncio.create_task(collect(pool, 0))
            async with asyncio.timeout(10):
                while server.active == 0:
                    await asyncio.sleep(0.01)
            waiting.cancel()
            async with asyncio.timeout(10):  # far less than the 30 s the request would have held it
                while server.active or pool.inflight:
                    await asyncio.sleep(0.01)
            server.first_token_delay_s = 0
            assert await collect(pool, 1) == "w0 "


async def test_a_prime_reads_into_the_dialogs_slot_and_its_next_request_waits_for_it_there():
    async with CountingServer(tokens=1, first_token_delay_s=0.3).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url, server_slots=2)) as pool:
            assert await pool.prime(ask(0), dialog_id="a")
            assert not await pool.prime(ask(0), dialog_id="a")  # one at a time per dialog
            reply = await collect(pool, 0, "a")  # sent while the prime still runs
            assert reply == "w0 "
            assert await pool.prime(ask(1), dialog_id="b")
            async with asyncio.timeout(5):
                while pool.inflight:
                    await asyncio.sleep(0.01)
    prime, asked, other = server.requests
    assert prime["max_tokens"] == 1 and asked["max_tokens"] > 1
    assert prime["id_slot"] == asked["id_slot"] != other["id_slot"]
    assert server.max_active == 1  # the request waited for the prime instead of racing it to another slot


async def test_no_prime_while_the_pool_is_busy_or_without_server_slots():
    async with CountingServer(tokens=1, first_token_delay_s=0.3).running() as server:
        async with LLMPool(LLMConfig(base_url=server.base_url, server_slots=2), PoolConfig(max_inflight=1)) as pool:
            asking = asyncio.create_task(collect(pool, 0, "a"))
            async with asyncio.timeout(5):
                while not pool.inflight:
                    await asyncio.sleep(0.01)
            assert not await pool.prime(ask(1), dialog_id="b")  # a caller's reply comes first
            await asking
        async with LLMPool(LLMConfig(base_url=server.base_url)) as pool:
            assert not await pool.prime(ask(1), dialog_id="b")  # no slot would keep what it read
    assert len(server.requests) == 1


@pytest.mark.slow
async def test_after_a_prime_of_the_words_so_far_the_reply_reads_only_the_rest(llm_config):
    # The real llama-server: a dialog's prompt read up to the caller's partial transcript while
    # they talk; the reply's prompt then reads only what came after.
    config = dataclasses.replace(llm_config, server_slots=llm_config.server_slots if llm_config.server_slots > 0 else 4)
    history = [
        {"role": "user", "content": "Hello, I need some help with my travel plans for next week."},
        {"role": "assistant", "content": "Of course. Where are you travelling to?"},
    ]
    said = "I am flying to Boston on Tuesday and I need a hotel near the airport for two nights"
    partial = " ".join(said.split()[:-4])
    read: dict[str, PromptUsage] = {}
    async with LLMPool(config) as pool:
        for dialog, primed in (("cold", False), ("primed", True)):
            messages = pool.with_system_prompt([*history, {"role": "user", "content": "Hi."}])
            await collect_usage(pool, messages, dialog, read, "warm-" + dialog)  # the dialog so far, cached
            turn = [*history, {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
            if primed:
                assert await pool.prime(pool.with_system_prompt([*turn, {"role": "user", "content": partial}]), dialog_id=dialog)
            await collect_usage(pool, pool.with_system_prompt([*turn, {"role": "user", "content": said}]), dialog, read, dialog)
    assert read["primed"].read + 12 <= read["cold"].read, read
    assert read["primed"].cached > read["cold"].cached


async def collect_usage(pool: LLMPool, messages, dialog: str, read: dict, key: str) -> None:
    async for _ in pool.stream_chat(messages, dialog_id=dialog, on_usage=lambda u: read.__setitem__(key, u), max_tokens=4):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["concurrent", "prompts"])
async def test_a_reply_stopped_at_its_token_cap_is_told_so(llm_config, mode):
    # The real llama-server, in both of the pool's modes: a story capped at 6 tokens is stopped
    # there, and the caller hears so; an answer that ends within its cap is not.
    capped: list[str] = []
    async with LLMPool(llm_config, PoolConfig(mode=mode)) as pool:
        for key, question, cap in (("story", "Tell me a long story about a dragon.", 6), ("short", "Say yes.", 48)):
            messages = pool.with_system_prompt([{"role": "user", "content": question}])
            deltas = [d async for d in pool.stream_chat(messages, max_tokens=cap, on_capped=lambda k=key: capped.append(k))]
            assert "".join(deltas).strip(), key
    assert capped == ["story"]


async def test_dialogs_spread_over_the_servers_and_each_stays_on_its_own():
    # [llm] base_url naming two servers (the bundled LLM with [llm_server] instances = 2): a new
    # dialog goes to the server with fewer dialogs; every later request of it goes back there,
    # where its prompt is cached, to the same slot.
    async with CountingServer(tokens=1, token_delay_s=0.01).running() as one, \
            CountingServer(tokens=1, token_delay_s=0.01).running() as two:
        config = LLMConfig(base_url=f"{one.base_url},{two.base_url}", server_slots=2)
        async with LLMPool(config) as pool:
            for dialog in ["a", "b", "c", "a", "b", "a", "d", "c"]:
                await collect(pool, 0, dialog)
    # a and c on the first server, b and d on the second.
    assert len(one.requests) == 5 and len(two.requests) == 3
    assert [r["id_slot"] for r in one.requests] == [0, 1, 0, 0, 1]
    assert [r["id_slot"] for r in two.requests] == [0, 0, 1]


async def test_requests_aside_a_dialog_go_to_the_next_server_and_leave_the_dialogs_spread():
    # A copy's re-ask (pipeline.copy_guard) is kept apart from its dialog, on the other server,
    # where it can run while the dialog's reply streams. It counts as no dialog there: with each
    # dialog's re-ask asked after it, the dialogs alternate as before. Asking whether a server is
    # idle places no dialog.
    async with CountingServer(tokens=1, token_delay_s=0.01).running() as one, \
            CountingServer(tokens=1, token_delay_s=0.01).running() as two:
        config = LLMConfig(base_url=f"{one.base_url},{two.base_url}", server_slots=4)
        async with LLMPool(config) as pool:
            assert pool.has_idle_server("never asked") and pool.has_idle_server(pool.aside("never asked"))
            for dialog in "abcd":
                await collect(pool, 0, dialog)
                await collect(pool, 1, pool.aside(dialog))
    # a and c on the first server, their re-asks (question 1) on the second; b and d the other way round.
    assert [r["messages"][-1]["content"] for r in one.requests] == ["question 0", "question 1"] * 2
    assert [r["messages"][-1]["content"] for r in two.requests] == ["question 1", "question 0"] * 2
    assert [r["id_slot"] for r in one.requests] == [r["id_slot"] for r in two.requests] == [0, 1, 2, 3]


async def test_a_reasks_prompt_is_the_first_given_up_and_its_prime_gives_up_no_dialogs():
    async with CountingServer(tokens=1, token_delay_s=0.01).running() as one, \
            CountingServer(tokens=1, token_delay_s=0.01).running() as two:
        config = LLMConfig(base_url=f"{one.base_url},{two.base_url}", server_slots=1)
        async with LLMPool(config) as pool:
            await collect(pool, 0, "a")  # the first server's slot
            assert await pool.prime(ask(1), dialog_id=pool.aside("a"))  # the second's, nobody's yet
            await collect(pool, 1, pool.aside("a"))  # read there, after the prime
            await collect(pool, 2, "b")  # b's prompt takes the second server's slot from a's re-ask
            # No re-ask's prime takes a slot from a dialog, whose whole prompt would be read again,
            # nor does a re-ask beside a reply (no room on an idle server).
            assert not await pool.prime(ask(1), dialog_id=pool.aside("a"))
            assert not await pool.prime(ask(3), dialog_id=pool.aside("b"))
            assert not pool.has_idle_server(pool.aside("a")) and pool.has_idle_server("a")
    assert [r["messages"][-1]["content"] for r in two.requests] == ["question 1", "question 1", "question 2"]
    assert two.requests[0]["max_tokens"] == 1 and len(one.requests) == 1


async def test_a_server_is_idle_while_it_has_no_request_in_flight():
    # Work that may be thrown away (a copy's re-ask beside the reply) goes only to an idle server.
    async with CountingServer(tokens=1, first_token_delay_s=0.5).running() as one, \
            CountingServer(tokens=1, first_token_delay_s=0.5).running() as two:
        config = LLMConfig(base_url=f"{one.base_url},{two.base_url}", server_slots=1)
        async with LLMPool(config, PoolConfig(max_inflight=1)) as pool:
            assert pool.has_idle_server()
            replies = [asyncio.create_task(collect(pool, 0, "a"))]
            async with asyncio.timeout(5):
                while pool.inflight < 1:
                    await asyncio.sleep(0.01)
            assert pool.has_idle_server()  # the other server
            # Asked of a dialog's server: a's is busy; the server of requests aside a is not.
            assert not pool.has_idle_server("a") and pool.has_idle_server(pool.aside("a"))
            replies.append(asyncio.create_task(collect(pool, 1, "b")))
            async with asyncio.timeout(5):
                while pool.inflight < 2:
                    await asyncio.sleep(0.01)
            assert not pool.has_idle_server()
            await asyncio.gather(*replies)
            assert pool.has_idle_server()


async def test_a_full_server_does_not_hold_up_a_request_for_another():
    # max_inflight is per server: the first server busy with a long reply, a dialog kept on the
    # second is answered at once, and the first's next caller waits for its slot.
    async with CountingServer(tokens=1, first_token_delay_s=3).running() as slow, \
            CountingServer(tokens=1, token_delay_s=0.01).running() as quick:
        config = LLMConfig(base_url=f"{slow.base_url},{quick.base_url}", server_slots=1)
        async with LLMPool(config, PoolConfig(max_inflight=1, queue_timeout_ms=10_000)) as pool:
            held = asyncio.create_task(collect(pool, 0, "a"))  # to the slow server
            async with asyncio.timeout(5):
                while not slow.active:
                    await asyncio.sleep(0.01)
            behind = asyncio.create_task(collect(pool, 1, "a"))  # waits for the slow server's slot
            async with asyncio.timeout(1.5):  # well before the slow reply's 3 s
                assert await collect(pool, 2, "b") == "w0 "
            assert not held.done() and not behind.done() and pool.inflight == 1
            await asyncio.gather(held, behind)
    assert slow.max_active == 1 and len(slow.requests) == 2 and len(quick.requests) == 1


async def test_warming_reads_the_system_prompt_into_every_slot_of_every_server():
    async with CountingServer(tokens=1, token_delay_s=0.01).running() as one, \
            CountingServer(tokens=1, token_delay_s=0.01).running() as two:
        config = LLMConfig(base_url=f"{one.base_url},{two.base_url}", server_slots=2, system_prompt="Be brief.")
        async with LLMPool(config) as pool:
            assert await pool.warm() == 4
        async with LLMPool(dataclasses.replace(config, server_slots=0)) as pool:
            assert await pool.warm() == 0  # servers that place requests themselves: nothing to warm
    for server in (one, two):
        assert sorted(r["id_slot"] for r in server.requests) == [0, 1]
        assert all(r["messages"] == [{"role": "system", "content": "Be brief."}] and r["max_tokens"] == 1
                   for r in server.requests)
