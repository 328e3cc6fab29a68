"""A whole call: the real server process, models, Redis and llama-server, WebRTC over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

import httpx
import numpy as np
import pytest
import websockets

from media.audio_file import read_audio, write_wav
from media.frames import level_dbfs
from parley.call_client import CallClient, run_call
from tests.conftest import own_server, stored_turns
from tests.speech import JFK, JFK_TEXT, STEREO_TEXT, stereo_sentence, wer

pytestmark = pytest.mark.slow


async def test_a_call_with_jfk_through_the_command_line(server, transcriber, tmp_path):
    report_path = tmp_path / "report.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.cli", "call", str(JFK), "--server", server,
        "--out", str(tmp_path), "--json", str(report_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(report_path.read_text())
    (turn,) = report["turns"]
    assert report["session_id"] and report["dialog_id"]
    assert wer(JFK_TEXT, turn["transcript"]) <= 0.10, turn["transcript"]
    assert turn["reply_text"].strip()
    assert turn["voice_to_voice_ms"] > 0
    assert {"asr", "llm_first_token", "tts_first_audio", "end_of_turn_to_first_audio"} <= set(turn["stages_ms"])
    # JFK pauses after "Americans," and after "for you,": the turn is judged unfinished there, so the
    # whole sentence is one turn, and the bot never talks while he does.
    assert turn["server_turns"] == 1
    assert turn["overlap_ms"] == 0
    assert turn["stages_ms"]["end_of_turn_silence"] >= 200
    reply = read_audio(turn["reply_audio"])
    assert max(level_dbfs(reply[i : i + 320]) for i in range(0, reply.size - 320, 320)) > -30
    heard = (await transcriber.transcribe(reply)).text
    assert wer(turn["reply_text"], heard) <= 0.20, (turn["reply_text"], heard)


async def test_a_reply_drafted_at_a_pause_is_dropped_when_the_user_goes_on(server, proxy, tmp_path):
    # Two sentences 180 ms apart: the pause (100 ms) drafts a reply to the first, the second
    # sentence drops it before even a finished turn could end (200 ms), and the end of the turn
    # releases a draft answering both.
    first, second = stereo_sentence(0), stereo_sentence(1)
    gap, lead = np.zeros(int(16000 * 0.18), np.int16), np.zeros(int(16000 * 0.3), np.int16)
    path = tmp_path / "two-sentences.wav"
    write_wav(path, np.concatenate([lead, first, gap, second]), 16000)
    async with CallClient(server) as client:
        seen = len(client.messages)
        report, _ = await client.talk(str(path), out_dir=tmp_path, index=1)
        messages = [m for _, m in client.messages[seen:]]
    # One turn. The first sentence's own comma pause ("the wizard, | who", 400 ms, which Whisper
    # writes "the wizard.") may be judged finished and the turn ended there, then continued when the
    # speaker goes on: the turn keeps its id and its final transcript is replaced by the whole.
    finals = [m for m in messages if m["type"] == "transcript" and m["final"]]
    assert finals and {m["turn_id"] for m in finals} == {finals[-1]["turn_id"]}, finals
    final = finals[-1]
    assert wer(f"{STEREO_TEXT[0]} {STEREO_TEXT[1]}", final["text"]) <= 0.15, final["text"]
    replies = [m for m in messages if m["type"] in ("reply", "metrics")]
    assert replies and {m["turn_id"] for m in replies} == {final["turn_id"]}
    done = [m for m in replies if m.get("done")]
    assert done == [replies[-1]] and replies[-1]["text"] == report.reply_text and not done[0].get("interrupted")
    assert report.overlap_ms == 0  # nothing of a dropped reply was heard
    # The reply was the released draft: it began before the turn ended, and was asked for once.
    assert report.stages_ms["draft_lead"] > 0
    asked = [r for r in proxy.requests if r["messages"][-1]["content"] == final["text"]]
    assert len(asked) == 1


async def test_a_short_finished_sentence_is_answered_after_a_short_silence(server, tmp_path):
    path = tmp_path / "short.wav"
    write_wav(path, np.concatenate([np.zeros(4800, np.int16), stereo_sentence(1), np.zeros(16000, np.int16)]), 16000)
    async with CallClient(server) as client:
        report, _ = await client.talk(str(path), out_dir=tmp_path, index=1)
    assert wer(STEREO_TEXT[1], report.transcript) <= 0.2, report.transcript
    assert report.reply_text and report.overlap_ms == 0 and report.server_turns == 1
    # Judged finished at its pause: the turn ended once the judgement was in (at least the 200 ms of
    # [vad] end_silence_ms), not after the 2 s of a turn judged unfinished. How soon is a timing, for
    # `parley bench turns`; here only the decision is checked.
    assert 200 <= report.stages_ms["end_of_turn_silence"] < 2000, report.stages_ms


async def test_the_second_turn_is_prompted_with_the_first(server, proxy, shared_redis, speakers, tmp_path):
    report = await run_call(server, speakers, out_dir=tmp_path)
    first, second = report["turns"]
    assert wer(STEREO_TEXT[0], first["transcript"]) <= 0.15
    assert wer(STEREO_TEXT[1], second["transcript"]) <= 0.15
    assert first["reply_text"] and second["reply_text"]
    # The reply's request (the last: a draft made at an earlier pause may have asked too).
    prompt = proxy.prompts_answering(second["transcript"])[-1]
    assert first["transcript"] in prompt and first["reply_text"] in prompt
    turns = await stored_turns(shared_redis.url, report["dialog_id"])
    assert [(t.role, t.text) for t in turns] == [
        ("user", first["transcript"]),
        ("assistant", first["reply_text"]),
        ("user", second["transcript"]),
        ("assistant", second["reply_text"]),
    ]
    assert [t.seq for t in turns] == [1, 2, 3, 4]


async def test_barge_in_stops_the_bot_and_keeps_what_was_played(server, shared_redis, speakers, tmp_path):
    report = await run_call(server, speakers, out_dir=tmp_path, barge_in_after_s=0.8)
    first, second = report["turns"]
    assert first["interrupted"], first
    assert first["barge_in_stop_ms"] is not None
    assert len(first["reply_text"]) < len(first["reply_generated"].strip())
    # The recording of the first reply falls silent once the bot has stopped.
    reply = read_audio(first["reply_audio"], 48000)
    tail = reply[-int(48000 * 0.4):]
    assert level_dbfs(tail) < -50
    assert wer(STEREO_TEXT[1], second["transcript"]) <= 0.15, second["transcript"]
    assert second["reply_text"] and not second["interrupted"]
    print(f"barge-in: the bot fell silent {first['barge_in_stop_ms']} ms after the user began")
    turns = await stored_turns(shared_redis.url, report["dialog_id"])
    bot = [t for t in turns if t.role == "assistant"][0]
    assert bot.interrupted and bot.text == first["reply_text"]
    assert len(bot.text) < len(first["reply_generated"].strip())


@pytest.mark.parametrize("kind", ["white-noise", "silence"])
async def test_noise_or_silence_makes_no_turn(server, proxy, tmp_path, kind):
    rng = np.random.default_rng(1)
    if kind == "white-noise":
        audio = (rng.standard_normal(16000 * 3) * 10 ** (-30 / 20) * 32768).astype(np.int16)
    else:
        audio = np.zeros(16000 * 3, np.int16)
    path = tmp_path / f"{kind}.wav"
    write_wav(path, audio, 16000)
    requests_before = len(proxy.requests)
    report = await run_call(server, [str(path)], out_dir=tmp_path, reply_timeout_s=4)
    (turn,) = report["turns"]
    assert turn["transcript"] == "" and turn["reply_text"] == ""
    assert turn["voice_to_voice_ms"] is None
    assert len(proxy.requests) == requests_before


async def test_text_without_webrtc_gets_reply_events(server):
    async with websockets.connect(server.replace("http", "ws") + "/ws") as ws:
        session = json.loads(await ws.recv())
        assert session["type"] == "session" and session["resume_token"]
        await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
        deltas, done = [], None
        async with asyncio.timeout(60):
            while done is None:
                message = json.loads(await ws.recv())
                if message["type"] == "reply":
                    if message.get("done"):
                        done = message
                    else:
                        deltas.append(message["delta"])
        # The whole reply, or (stopped at the token cap mid-sentence) its whole sentences.
        assert deltas and "".join(deltas).strip().startswith(done["text"])
        assert "paris" in done["text"].lower()


async def packets_received(client: CallClient) -> int:
    """The bot's audio packets the client's peer connection has received."""
    stats = await client._pc.getStats()
    return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")


async def test_a_quiet_bot_sends_dtx_to_a_caller_that_asks_and_every_packet_to_one_that_does_not(server):
    received: dict[bool, tuple[int, int]] = {}
    for asks in (True, False):
        async with CallClient(server, bot_dtx=asks) as client:
            recorder = client._recorder
            while not recorder.frames:  # the bot's first packet heard
                await asyncio.sleep(0.05)
            packets, frames = await packets_received(client), len(recorder.frames)
            # Two seconds of the bot's quiet, recorded (with DTX, the gaps as silence).
            while len(recorder.frames) < frames + 100:
                await asyncio.sleep(0.05)
            received[asks] = (await packets_received(client) - packets, len(recorder.frames) - frames)
    # A quiet bot: up to the hangover's 10 packets while it settles, then one every 20 frames, against
    # a packet a frame.
    (dtx_packets, dtx_frames), (all_packets, all_frames) = received[True], received[False]
    assert dtx_packets <= 10 + dtx_frames // 20 + 2, received
    assert all_packets >= 0.9 * all_frames, received


async def test_bad_messages_get_errors_and_the_socket_stays_usable(server):
    async with websockets.connect(server.replace("http", "ws") + "/ws", max_size=None) as ws:
        await ws.recv()
        replies = []
        bad = {
            "{oops": "invalid_json",
            "[" * 30_000 + "]" * 30_000: "invalid_json",
            '{"type": "teleport"}': "unknown_type",
            '{"type": "ice", "candidate": "x"}': "out_of_order",
            '{"type": "offer", "sdp": "v=0\\r\\nm=audio 9 X 0\\r\\n"}': "invalid_offer",
            '{"type": "offer", "sdp": "m=audio\\r\\n"}': "invalid_offer",  # aiortc asserted on this one
        }
        for raw in bad:
            await ws.send(raw)
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert [r["code"] for r in replies] == list(bad.values())
        await ws.send('{"type": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd.code == 1009


async def test_unusable_ice_candidates_after_a_real_offer_get_errors_and_the_call_goes_on(server):
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with websockets.connect(server.replace("http", "ws") + "/ws") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
            async with asyncio.timeout(15):
                while (answer := json.loads(await ws.recv()))["type"] != "answer":
                    pass
            bad = [
                {"type": "ice", "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host"},  # no mid, no index
                {"type": "ice", "candidate": "candidate:garbage", "sdpMid": "0"},
                {"type": "ice", "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host", "sdpMLineIndex": 7},
            ]
            for message in bad:
                await ws.send(json.dumps(message))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply["type"] == "error" and reply["code"] == "invalid_message", (message, reply)
            await ws.send('{"type": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
            assert answer["sdp"]
    finally:
        await pc.close()


def close_code_from(raw: bytes) -> int | None:
    """The code of the first close frame in unmasked server-to-client WebSocket bytes."""
    i = 0
    while i + 2 <= len(raw):
        opcode, length = raw[i] & 0x0F, raw[i + 1] & 0x7F
        header = 2
        if length == 126:
            length, header = int.from_bytes(raw[i + 2 : i + 4], "big"), 4
        if opcode == 0x8:
            return int.from_bytes(raw[i + header : i + header + 2], "big")
        i += header + length
    return None


async def test_keepalive_drops_a_client_that_stops_answering(shared_redis, proxy, tmp_path):
    keepalive = {"PARLEY_SIGNALING_PING_INTERVAL_S": "1", "PARLEY_SIGNALING_PONG_TIMEOUT_S": "1"}
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, **keepalive) as url:
        async with httpx.AsyncClient() as http:
            baseline = (await http.get(f"{url}/stats")).json()
            port = int(url.rsplit(":", 1)[1])
            # A client that does the WebSocket handshake and then never reads or answers again,
            # like a phone whose network vanished.
            dead = socket.create_connection(("127.0.0.1", port))
            dead.sendall(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            dead.settimeout(5)
            response = dead.recv(4096)
            assert response.startswith(b"HTTP/1.1 101")
            received = response.split(b"\r\n\r\n", 1)[1]  # frames that came with the response
            started = time.monotonic()
            while (await http.get(f"{url}/stats")).json()["active_calls"] != 1:
                assert time.monotonic() - started < 5, "the call never started"
                await asyncio.sleep(0.05)
            started = time.monotonic()
            while (await http.get(f"{url}/stats")).json()["active_calls"] != 0:
                assert time.monotonic() - started < 10, "the dead client's call was not torn down"
                await asyncio.sleep(0.1)
            dead.settimeout(1)
            try:
                while chunk := dead.recv(65536):
                    received += chunk
            except TimeoutError:
                pass
            dead.close()
            assert close_code_from(received) == 1011
            await asyncio.sleep(0.5)
            assert (await http.get(f"{url}/stats")).json()["tasks"] <= baseline["tasks"]


async def test_the_servers_log_holds_neither_what_the_caller_said_nor_their_resume_token(shared_redis, proxy, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path) as url:
        async with CallClient(url) as client:
            turn, _ = await client.talk(JFK, out_dir=tmp_path, index=1)
            token = client.session["resume_token"]
    assert wer(JFK_TEXT, turn.transcript) <= 0.3, turn.transcript  # the words were heard
    logged = (tmp_path / "server.log").read_text().lower()
    assert "turn " in logged and "pause judged" in logged  # the turn's course is logged
    assert token.lower() not in logged
    for phrase in ("ask not", "your country", "fellow americans"):
        assert phrase not in logged, phrase


async def test_a_resume_socket_refuses_any_first_message_but_a_resume_and_logs_no_traceback(shared_redis, proxy, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        firsts = {
            b'{"type": "resume"}': "invalid_message",  # binary: read as text, it raised a KeyError
            '{"type": "resume", "session_id": "\\udc8a", "resume_token": "t"}': "invalid_message",
            '{"type": "resume", "session_id": "s", "resume_token": "t", "n": ' + "9" * 5000 + "}": "invalid_json",
            '{"type": "ping"}': "out_of_order",
        }
        for first, code in firsts.items():
            async with websockets.connect(ws_url + "?resume") as ws:
                await ws.send(first)
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == code, first
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10)
                assert info.value.rcvd.code == 1008
        async with websockets.connect(ws_url + "?resume") as ws:
            await ws.send("x" * (64 * 1024 + 1))  # the client gone before saying which session
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1009
        async with websockets.connect(ws_url) as ws:
            session = json.loads(await ws.recv())
            # In the middle of a session a resume is out of order (it went unanswered), and the socket goes on.
            await ws.send(json.dumps({"type": "resume", "session_id": session["session_id"],
                                      "resume_token": session["resume_token"], "last_event_id": None}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == "out_of_order"
            await ws.send('{"type": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
    assert "Traceback" not in (tmp_path / "server.log").read_text()
