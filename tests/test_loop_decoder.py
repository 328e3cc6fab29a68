"""The caller's audio decoded on the event loop: over real WebRTC on loopback it arrives as the
same sound, for Opus and PCMU; corrupt frames are dropped and the next good one decodes; the track
still ends when the call does; and it refuses to be put in place too late."""

import asyncio

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.loop_decoder import LoopDecoder, decode_on_loop
from media.tracks import InboundAudio
from media.voice_encoder import OpusVoice, silence_payload
from parley.microphone import Microphone
from tests.test_tracks import tone

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


async def collect(inbound: InboundAudio, pcm: list[bytes]) -> None:
    """Keep the PCM of each frame the call's inbound pump makes, until the track ends."""
    async for frame in inbound:
        pcm.append(frame.pcm)


async def hang_up(caller: RTCPeerConnection, server: RTCPeerConnection, tasks: list[asyncio.Task]) -> None:
    """Close both peers and wait for the tasks reading the call's audio."""
    await caller.close()
    await server.close()
    async with asyncio.timeout(10):
        # The receiver's stop ends the track, and with it the pump: nothing hangs.
        await asyncio.gather(*tasks)


async def received_tone(codec: str, *, on_loop: bool) -> tuple[list[str], np.ndarray]:
    """A 300 Hz tone sent from one aiortc peer to another over loopback: the layouts of the
    frames the receiving track gave, and the audio as the call's inbound pump made it (16 kHz)."""
    caller, server = RTCPeerConnection(), RTCPeerConnection()
    layouts: list[str] = []
    pcm: list[bytes] = []
    tasks: list[asyncio.Task] = []

    @server.on("track")
    def on_track(track) -> None:
        recv = track.recv

        async def noted_recv():
            frame = await recv()
            layouts.append(frame.layout.name)
            return frame

        track.recv = noted_recv
        inbound = InboundAudio(track)
        tasks.extend([asyncio.create_task(inbound.pump()), asyncio.create_task(collect(inbound, pcm))])

    mic = Microphone()
    try:
        transceiver = caller.addTransceiver(mic, direction="sendonly")
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([c for c in capabilities if c.mimeType == codec])
        await caller.setLocalDescription(await caller.createOffer())
        await server.setRemoteDescription(caller.localDescription)
        if on_loop:
            decode_on_loop(server)
        await server.setLocalDescription(await server.createAnswer())
        await caller.setRemoteDescription(server.localDescription)
        await mic.play(np.frombuffer(tone(1.0, 48000), dtype=np.int16))
        async with asyncio.timeout(20):
            await mic.drained()
            while sum(len(p) for p in pcm) < 16000 * 2:  # a second of audio at 16 kHz
                await asyncio.sleep(0.05)
    finally:
        await hang_up(caller, server, tasks)
    return layouts, np.frombuffer(b"".join(pcm), dtype=np.int16).astype(np.float64)


@pytest.mark.parametrize("codec", ["audio/opus", "audio/PCMU"])
async def test_a_tone_decoded_on_the_loop_arrives_as_the_same_tone(codec):
    layouts, audio = await received_tone(codec, on_loop=True)
    voiced = audio[np.abs(audio) > 1000]
    assert voiced.size > 8000, "the tone did not arrive"
    start = int(np.argmax(np.abs(audio) > 1000))
    assert abs(dominant_hz(audio[start : start + 8000], 16000) - 300) < 10
    # Opus is decoded to mono on the loop (aiortc's thread decodes stereo); PCMU is mono anyway.
    assert set(layouts) == {"mono"}


async def test_aiortcs_own_decoder_thread_gives_stereo_opus():
    """The check above can fail: without decode_on_loop the frames come from aiortc's thread."""
    layouts, audio = await received_tone("audio/opus", on_loop=False)
    assert set(layouts) == {"stereo"} and (np.abs(audio) > 1000).sum() > 8000


async def test_a_corrupt_or_empty_frame_is_dropped_and_the_next_good_one_decodes():
    out: asyncio.Queue = asyncio.Queue()
    decoder = LoopDecoder(out)
    speech = bytes(OpusVoice().packet(tone(0.02, 48000), 0))
    decoder.put((OPUS, JitterFrame(b"\x03", 0)))  # an Opus TOC that promises frames it lacks
    decoder.put((OPUS, JitterFrame(b"", 960)))  # FFmpeg would take it for the end of the stream
    decoder.put((OPUS, JitterFrame(speech, 1920)))
    decoder.put((OPUS, JitterFrame(silence_payload(), 2880)))
    assert decoder.failed == 1
    frames = [out.get_nowait() for _ in range(out.qsize())]
    assert [f.samples for f in frames] == [960, 960]
    assert np.abs(frames[0].to_ndarray()).max() > 1000  # the speech, not silence


async def test_it_is_refused_once_the_decoder_thread_has_started():
    caller, server = RTCPeerConnection(), RTCPeerConnection()
    connected = asyncio.Event()

    @server.on("connectionstatechange")
    def on_state() -> None:
        if server.connectionState == "connected":
            connected.set()

    try:
        caller.addTrack(Microphone())
        await caller.setLocalDescription(await caller.createOffer())
        await server.setRemoteDescription(caller.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await caller.setRemoteDescription(server.localDescription)
        async with asyncio.timeout(20):
            await connected.wait()
        with pytest.raises(RuntimeError, match="too late"):
            decode_on_loop(server)
    finally:
        await caller.close()
        await server.close()
