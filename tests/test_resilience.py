"""A dead LLM and a dead Redis during a call: the call goes on and nothing is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import httpx
import pytest
import websockets

from parley.call_client import CallClient
from parley.server_process import free_port
from parley.services.llm_server import EmbeddedLLMServer
from parley.services.redis_server import private_redis
from tests.conftest import own_server, stored_turns

pytestmark = pytest.mark.slow

FALLBACK = "Sorry, I can't answer that right now. Please try again in a moment."


async def ask(ws, text: str) -> tuple[dict, list[dict]]:
    """Send a text turn; return its `reply done` and the errors that came with it."""
    await ws.send(json.dumps({"type": "text", "text": text}))
    errors = []
    async with asyncio.timeout(60):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "error":
                errors.append(message)
            if message["type"] == "reply" and message.get("done"):
                return message, errors


async def test_a_dead_llm_opens_the_breaker_and_a_restarted_one_closes_it(settings, shared_redis, tmp_path):
    # After the restart the server's prompt cache is cold and the whole dialog is read again:
    # two threads read it well inside the first-token deadline, even on a loaded machine.
    llm_config = dataclasses.replace(settings.llm_server, port=free_port(), threads_batch=2)
    llm = EmbeddedLLMServer(llm_config, log_dir=tmp_path)
    await llm.start()
    try:
        async with own_server(shared_redis.url, llm.base_url, tmp_path, PARLEY_LLM_BREAKER_OPEN_S="2") as url:
            async with websockets.connect(url.replace("http", "ws") + "/ws") as ws, httpx.AsyncClient() as http:
                await ws.recv()
                done, errors = await ask(ws, "Say hello.")
                assert done["text"] and done["text"] != FALLBACK and not errors

                await llm.stop()
                for i in range(20):  # the breaker's minimum number of calls, all failing
                    done, errors = await ask(ws, f"Are you there? ({i})")
                    assert done["text"] == FALLBACK
                    assert [e["code"] for e in errors] == ["llm_unavailable"]
                ready = (await http.get(f"{url}/readyz")).json()
                assert ready["llm_breaker"] == "open"

                started = time.monotonic()
                done, errors = await ask(ws, "Still there?")
                fail_fast_ms = 1000 * (time.monotonic() - started)
                assert done["text"] == FALLBACK and "resume in" in errors[0]["message"]
                print(f"fallback while open: {fail_fast_ms:.0f} ms from the question to the reply")

                llm = EmbeddedLLMServer(llm_config, log_dir=tmp_path)
                await llm.start()
                async with asyncio.timeout(10):  # open_s: the breaker turns half-open
                    while (await http.get(f"{url}/readyz")).json()["llm_breaker"] == "open":
                        await asyncio.sleep(0.1)
                for _ in range(3):  # the probes
                    done, errors = await ask(ws, "What is the capital of France?")
                    assert done["text"] != FALLBACK and not errors, errors
                assert (await http.get(f"{url}/readyz")).json()["llm_breaker"] == "closed"
    finally:
        await llm.stop()


async def test_turns_spoken_while_redis_is_down_are_stored_once_and_in_order(llm_server, speakers, tmp_path):
    async with private_redis() as redis_server:
        async with own_server(redis_server.url, llm_server.base_url, tmp_path) as url:
            async with CallClient(url) as client:
                first, _ = await client.talk(speakers[0], out_dir=tmp_path, index=1)
                assert first.reply_text
                await redis_server.stop()
                second, _ = await client.talk(speakers[1], out_dir=tmp_path, index=2)
                assert second.reply_text  # the call went on without Redis
                await redis_server.start()
                dialog_id = client.session["dialog_id"]
                async with asyncio.timeout(15):
                    while len(await stored_turns(redis_server.url, dialog_id)) < 4:
                        await asyncio.sleep(0.2)
        turns = await stored_turns(redis_server.url, dialog_id)
        assert [(t.seq, t.role, t.text) for t in turns] == [
            (1, "user", first.transcript),
            (2, "assistant", first.reply_text),
            (3, "user", second.transcript),
            (4, "assistant", second.reply_text),
        ]
        assert len({t.turn_id for t in turns}) == 4


async def test_the_rate_limit_answers_429_and_refuses_new_calls_but_never_cuts_one(shared_redis, proxy, tmp_path):
    # A bucket of 2 that never refills: the page and one call fit; nothing more from this client.
    limits = {"PARLEY_RATE_LIMIT_PER_IP_RATE": "0", "PARLEY_RATE_LIMIT_PER_IP_BURST": "2"}
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, **limits) as url:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/")).status_code == 200
            async with websockets.connect(url.replace("http", "ws") + "/ws") as admitted:
                assert json.loads(await admitted.recv())["type"] == "session"
                refused_page = await http.get(f"{url}/")
                assert refused_page.status_code == 429 and int(refused_page.headers["Retry-After"]) >= 1
                assert (await http.get(f"{url}/healthz")).status_code == 200  # probes are never limited
                async with websockets.connect(url.replace("http", "ws") + "/ws") as refused:
                    error = json.loads(await refused.recv())
                    assert error["code"] == "rate_limited" and error["retry_after"] >= 1
                    with pytest.raises(websockets.ConnectionClosed) as info:
                        await refused.recv()
                    assert info.value.rcvd.code == 1013
                # The call admitted before the bucket ran dry goes on.
                done, errors = await ask(admitted, "Say hello.")
                assert done["text"] and not errors
