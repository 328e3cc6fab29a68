"""Admission by capacity through a real server: past its places a newcomer is refused at once,
told when to retry, and nobody admitted is touched."""

import asyncio
import json
import time

import httpx
import pytest
import websockets

from parley.call_client import run_call
from parley.errors import CallRefused
from tests.conftest import own_server
from tests.speech import JFK, JFK_TEXT, wer

pytestmark = pytest.mark.slow


def ws_url(url: str) -> str:
    return url.replace("http", "ws") + "/ws"


async def test_the_call_past_max_calls_is_refused_at_once_and_the_admitted_one_goes_on(shared_redis, proxy, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, PARLEY_ADMISSION_MAX_CALLS="1") as url:
        first = asyncio.create_task(run_call(url, [str(JFK)], out_dir=tmp_path / "first"))
        async with asyncio.timeout(60), httpx.AsyncClient() as http:
            while (await http.get(f"{url}/stats")).json()["voice_calls"] < 1:  # the first call has its place
                await asyncio.sleep(0.05)
        async with websockets.connect(ws_url(url)) as ws:
            assert json.loads(await ws.recv())["type"] == "session"  # a text session still fits
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}))
            received = await _until_closed(ws)
            answered_ms = 1000 * (time.monotonic() - sent)
        (refusal,) = [m for m in received if m["type"] == "error"]
        assert refusal["code"] == "over_capacity" and refusal["kind"] == "call"
        assert refusal["retry_after"] == 5.0 and refusal["reason"] == "replica"
        assert "try again in 5 s" in refusal["message"]
        assert ws.close_code == 1013 and received[-1] is refusal  # nothing after the refusal
        print(f"refused and closed {answered_ms:.0f} ms after the offer")
        # The headless client says the same as an exception with when to retry.
        with pytest.raises(CallRefused) as refused:
            await run_call(url, [str(JFK)], out_dir=tmp_path / "second")
        assert refused.value.code == "over_capacity" and refused.value.retry_after_s == 5.0
        report = await first
        async with httpx.AsyncClient() as http:
            exposition = (await http.get(f"{url}/metrics")).text
    (turn,) = report["turns"]
    assert wer(JFK_TEXT, turn["transcript"]) < 0.2 and turn["reply_text"]
    # The one call filled the replica (load 1): its turn shed what the default ladder sheds at the top.
    shed = {line.split('"')[1]: float(line.split()[-1]) for line in exposition.splitlines()
            if line.startswith("parley_turns_shed_total{")}
    assert shed["partials"] >= 1 and shed["long_replies"] >= 1 and shed["early_judgements"] >= 1
    assert "drafts" not in shed


async def test_the_session_past_max_sessions_is_refused_and_a_place_given_back_is_taken(shared_redis, proxy, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, PARLEY_ADMISSION_MAX_SESSIONS="2") as url:
        held = [await websockets.connect(ws_url(url)) for _ in range(2)]
        for ws in held:
            assert json.loads(await ws.recv())["type"] == "session"
        async with websockets.connect(ws_url(url)) as ws:
            (refusal,) = await _until_closed(ws)
        assert refusal["code"] == "over_capacity" and refusal["kind"] == "session"
        assert ws.close_code == 1013
        await held.pop().close()
        async with asyncio.timeout(10):  # the place comes back as the server sees the close
            while True:
                async with websockets.connect(ws_url(url)) as ws:
                    if json.loads(await ws.recv())["type"] == "session":
                        break
                await asyncio.sleep(0.05)
        for ws in held:
            await ws.close()


async def test_five_hundred_sessions_opened_within_a_second_each_get_a_session_or_a_clear_refusal(
    shared_redis, proxy, tmp_path
):
    # Callers from 500 addresses (127.0.0.0/8 is all loopback), as the per-IP limiter would see them.
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, PARLEY_ADMISSION_MAX_SESSIONS="300") as url:

        async def one(i: int) -> tuple[str, str | None]:
            address = f"127.0.{1 + i // 250}.{1 + i % 250}"
            async with websockets.connect(ws_url(url), local_addr=(address, 0), open_timeout=30) as ws:
                first = json.loads(await ws.recv())
                return first["type"], first.get("code")

        outcomes = await asyncio.gather(*(one(i) for i in range(500)))
    kinds = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert set(kinds) <= {("session", None), ("error", "over_capacity")}, kinds
    assert kinds[("session", None)] >= 300 - 5, kinds  # every place taken (a few freed as others left)


async def _until_closed(ws) -> list[dict]:
    """Every message until the server closes the socket."""
    received = []
    async with asyncio.timeout(10):
        try:
            while True:
                received.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed:
            return received
