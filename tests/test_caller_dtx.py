"""The caller's DTX: the answer asks for it and changes nothing else; over real WebRTC a caller in
DTX sends a packet every 400 ms, and the server's stream of frames stays whole (the gaps read as
silence, on the clock), while a gap after an ordinary packet is left alone."""

import asyncio

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from media.caller_dtx import DTX_MAX_BYTES, SilenceFill, ask_for_dtx, asks_for_dtx
from media.config import MediaConfig
from media.frames import level_dbfs
from media.loop_decoder import decode_on_loop
from media.sender_dtx import EVERY_FRAMES, HANGOVER_FRAMES
from media.tracks import InboundAudio
from parley.bench.load_call import EncodedMicrophone, EncodedSpeech, _opus_payloads, _silence_payload
from parley.microphone import Microphone
from tests.test_loop_decoder import collect, hang_up
from tests.test_tracks import tone


async def aiortc_answer() -> str:
    """The answer of one aiortc peer to another's offer, as SDP."""
    caller, server = RTCPeerConnection(), RTCPeerConnection()
    try:
        caller.addTrack(Microphone())
        await caller.setLocalDescription(await caller.createOffer())
        await server.setRemoteDescription(caller.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        return server.localDescription.sdp
    finally:
        await caller.close()
        await server.close()


async def test_the_answer_asks_for_dtx_on_opus_and_changes_nothing_else():
    answer = await aiortc_answer()
    asked = ask_for_dtx(answer)
    assert not asks_for_dtx(answer) and asks_for_dtx(asked)
    added = [line for line in asked.split("\r\n") if line not in answer.split("\r\n")]
    assert len(added) == 1 and added[0].startswith("a=fmtp:") and added[0].endswith(" usedtx=1")
    assert [line for line in asked.split("\r\n") if line != added[0]] == answer.split("\r\n")
    assert ask_for_dtx(asked) == asked  # asked once is enough
    # An answer that has an Opus fmtp line keeps its parameters, and gains usedtx.
    chrome_like = "v=0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1" in ask_for_dtx(chrome_like)
    # The caller's side accepts it (aiortc reads the parameter and goes on).
    caller = RTCPeerConnection()
    try:
        caller.addTrack(Microphone())
        await caller.setLocalDescription(await caller.createOffer())
        server = RTCPeerConnection()
        await server.setRemoteDescription(caller.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await caller.setRemoteDescription(RTCSessionDescription(ask_for_dtx(server.localDescription.sdp), "answer"))
        await server.close()
    finally:
        await caller.close()


def test_silence_fills_a_dtx_gap_on_the_clock_and_nothing_after_an_ordinary_packet():
    fill = SilenceFill()
    assert fill.due(10.0, in_dtx=True) == 0  # nothing heard yet: nothing to fill
    assert fill.before_frame(10.0, after_dtx=False) == 0
    # The caller goes quiet by DTX: each tick covers the whole frames since.
    assert fill.due(10.105, in_dtx=True) == 5
    assert fill.due(10.21, in_dtx=True) == 5
    # Its next packet, 400 ms after the last: the rest of the gap before it, the frame itself after.
    assert fill.before_frame(10.4, after_dtx=True) == 9
    assert fill.due(10.41, in_dtx=True) == 0
    # Packets flowing, then a stall of 300 ms after an ordinary packet: not silence, not filled.
    assert fill.before_frame(10.42, after_dtx=True) == 0
    assert fill.due(10.72, in_dtx=False) == 0
    assert fill.before_frame(10.72, after_dtx=False) == 0


async def test_a_caller_in_dtx_sends_few_packets_and_the_server_hears_whole_silence():
    """A tone, then silence sent as libopus sends it in DTX: the server's frames keep pace with the
    clock (silence in the gaps), from a fraction of the packets."""
    caller, server = RTCPeerConnection(), RTCPeerConnection()
    mic = EncodedMicrophone()
    frames: list[bytes] = []
    packets: list[int] = []
    tasks: list[asyncio.Task] = []
    try:
        caller.addTrack(mic)
        await caller.setLocalDescription(await caller.createOffer())
        await server.setRemoteDescription(caller.localDescription)
        (track, decoder), = decode_on_loop(server).items()
        put = decoder.put

        def counted_put(item) -> None:
            if item is not None:
                packets.append(len(item[1].data))
            put(item)

        decoder.put = counted_put
        inbound = InboundAudio(track, dtx=decoder)
        tasks += [asyncio.create_task(inbound.pump()), asyncio.create_task(collect(inbound, frames))]
        await server.setLocalDescription(await server.createAnswer())
        answer = ask_for_dtx(server.localDescription.sdp)
        await caller.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        mic.dtx = asks_for_dtx(answer)
        speech = EncodedSpeech("tone", tuple(_opus_payloads(np.frombuffer(tone(0.4, 48000), np.int16))), 0.0)
        async with asyncio.timeout(20):
            while not frames:  # connected, the first packets heard
                await asyncio.sleep(0.05)
            await mic.say(speech)
            spoke, packets_from = len(frames), len(packets)
            while len(frames) < spoke + 100:  # two seconds of silence heard after the tone
                await asyncio.sleep(0.05)
    finally:
        await hang_up(caller, server, tasks)
    # Silence and DTX packets only: the tone's last packets still came after `say` returned.
    quiet = [size for size in packets[packets_from:] if size <= len(_silence_payload())]
    # Two seconds of silence came as the hangover's ordinary packets and a few DTX packets, and the
    # server's stream still covered the time that passed: the clock filled the rest.
    assert len(quiet) <= HANGOVER_FRAMES + 2 * 50 // EVERY_FRAMES + 1, quiet
    assert any(size <= DTX_MAX_BYTES for size in quiet)
    assert inbound.filled >= 60
    assert level_dbfs(b"".join(frames[spoke + 20:])) < -60  # what was filled is silence


def test_dtx_without_the_loop_decoder_is_refused_at_start():
    # aiortc's decoder thread never shows the packets' sizes: nothing would fill the gaps.
    with pytest.raises(ValueError, match='caller_dtx needs decoder "loop"'):
        MediaConfig(decoder="thread")
    assert not MediaConfig(decoder="thread", caller_dtx=False).caller_dtx
