"""SIGTERM drains a replica: newcomers refused, replies finish, callers sent elsewhere, exit 0."""

import asyncio
import json
import signal

import httpx
import pytest
import websockets

from parley.call_client import CallClient
from parley.server_process import server_child
from tests.conftest import server_env, stored_turns
from tests.messages import messages_until

pytestmark = pytest.mark.slow


async def test_sigterm_lets_replies_finish_then_sends_every_caller_elsewhere_and_exits_0(shared_redis, proxy, tmp_path):
    env = server_env(shared_redis.url, proxy.base_url, tmp_path, PARLEY_SERVER_DRAIN_TIMEOUT_S="4")
    async with server_child(env, log_path=str(tmp_path / "server.log")) as (url, process):
        ws_url = url.replace("http", "ws") + "/ws"
        # A voice call, connected and quiet: it may go on for the drain timeout.
        async with CallClient(url) as call:
            async with websockets.connect(ws_url) as text:
                session = json.loads(await text.recv())
                await text.send(json.dumps({"type": "text", "text": "Tell me about the moon."}))
                await messages_until(text, lambda m: m["type"] == "reply" and "delta" in m)
                process.send_signal(signal.SIGTERM)  # in the middle of the reply

                async with httpx.AsyncClient() as http, asyncio.timeout(10):
                    while (ready := await http.get(f"{url}/readyz")).status_code != 503:
                        await asyncio.sleep(0.02)
                assert ready.json()["status"] == "draining"
                async with websockets.connect(ws_url) as newcomer:
                    refusal = json.loads(await newcomer.recv())
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await newcomer.recv()
                assert (refusal["code"], refusal["reason"]) == ("over_capacity", "draining")
                assert closed.value.rcvd.code == 1013

                # The reply in progress is finished, and only then is the text session sent away.
                rest = await messages_until(text, lambda m: m["type"] == "bye")
                done = [m for m in rest if m["type"] == "reply" and m.get("done")]
                assert done and done[0]["text"] and not done[0]["interrupted"]
                assert rest[-1] == {"type": "bye", "reason": "draining", "reconnect": True}

            # The voice call goes on until the drain timeout, then is sent away too.
            async with asyncio.timeout(30):
                while not any(m["type"] == "bye" for _, m in call.messages):
                    await asyncio.sleep(0.05)
            assert [m for _, m in call.messages if m["type"] == "bye"][0]["reason"] == "draining"
        async with asyncio.timeout(60):
            assert await process.wait() == 0
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].text == done[0]["text"]
