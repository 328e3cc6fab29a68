"""Admission by capacity through a real server: past its places a newcomer is refused at once,
told when to retry, and nobody admitted is touched."""

import asyncio
import contextlib
import json
import time

import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection

from parley.call_client import run_call
from parley.errors import CallRefused
from tests.conftest import own_database, own_server
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


async def test_a_caller_waiting_in_line_is_told_its_place_and_takes_the_next_free_line(shared_redis, proxy, tmp_path):
    # The place is held for a minute: the caller comes back well within it, however slow the machine.
    # A database of its own: another test's server would be a replica with free lines beside this one.
    async with own_server(own_database(shared_redis.url, 10), proxy.base_url, tmp_path,
                          PARLEY_ADMISSION_MAX_CALLS="1", PARLEY_ADMISSION_LINE_HOLD_S="60") as url:
        async with contextlib.AsyncExitStack() as stack:
            pcs = [RTCPeerConnection() for _ in range(3)]
            for pc in pcs:
                stack.push_async_callback(pc.close)
            holder = await stack.enter_async_context(websockets.connect(ws_url(url)))
            assert json.loads(await holder.recv())["type"] == "session"
            await holder.send(json.dumps({"type": "offer", "sdp": await _offer(pcs[0])}))
            assert (await _next_of(holder, {"answer"}))["type"] == "answer"  # the one line is taken

            # A caller who asks to wait in line is told its place, and how many wait.
            async with websockets.connect(ws_url(url)) as waiting:
                session = json.loads(await waiting.recv())
                await waiting.send(json.dumps({"type": "offer", "sdp": await _offer(pcs[1]), "wait_in_line": True}))
                (refusal,) = [m for m in await _until_closed(waiting) if m["type"] == "error"]
            assert (refusal["code"], refusal["reason"], refusal["position"], refusal["waiting"]) == (
                "over_capacity", "replica", 1, 1,
            )
            assert "you are number 1 in line" in refusal["message"] and waiting.close_code == 1013

            await holder.send(json.dumps({"type": "bye"}))  # the line comes free
            async with asyncio.timeout(30), httpx.AsyncClient() as http:
                while (await http.get(f"{url}/stats")).json()["voice_calls"] > 0:
                    await asyncio.sleep(0.05)
            # It is the waiting caller's: a newcomer is refused, though the replica has room.
            async with websockets.connect(ws_url(url)) as newcomer:
                assert json.loads(await newcomer.recv())["type"] == "session"
                await newcomer.send(json.dumps({"type": "offer", "sdp": await _offer(pcs[2])}))
                (late,) = [m for m in await _until_closed(newcomer) if m["type"] == "error"]
            assert (late["code"], late["reason"], late.get("position")) == ("over_capacity", "line", None)
            # The waiting caller comes back on its session and is taken.
            async with websockets.connect(ws_url(url) + "?resume") as back:
                await back.send(json.dumps(
                    {"type": "resume", "session_id": session["session_id"], "resume_token": session["resume_token"]}
                ))
                assert (await _next_of(back, {"session"}))["resumed"] is True
                await back.send(json.dumps({"type": "offer", "sdp": await _offer(pcs[1]), "wait_in_line": True}))
                assert (await _next_of(back, {"answer", "error"}))["type"] == "answer"
                await back.send(json.dumps({"type": "bye"}))


async def _offer(pc: RTCPeerConnection) -> str:
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def _next_of(ws, kinds: set[str]) -> dict:
    async with asyncio.timeout(30):
        while (message := json.loads(await ws.recv()))["type"] not in kinds:
            pass
    return message


async def _until_closed(ws) -> list[dict]:
    """Every message until the server closes the socket."""
    received = []
    async with asyncio.timeout(10):
        try:
            while True:
                received.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed:
            return received
