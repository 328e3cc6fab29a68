"""The bot's voice encoded by its own track: silence as one packet made once (or, with DTX, as libopus
sends it in DTX), speech as Opus that decodes back to the same sound, and the codec read off a real
aiortc answer."""

import asyncio

import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack

from media.caller_dtx import ask_for_dtx, asks_for_dtx
from media.frames import level_dbfs
from media.jitter_buffer import set_audio_jitter_buffer
from media.sender_dtx import EVERY_FRAMES, HANGOVER_FRAMES
from media.tracks import OUT_FRAME_SAMPLES, OUT_RATE, OutboundAudioTrack
from media.voice_encoder import OpusVoice, sends_opus, silence_payload
from parley.call_client import DEFAULT_JITTER_PACKETS, Recorder
from tests.test_tracks import tone


def decoded(packets) -> np.ndarray:
    """The packets as aiortc's receiver decodes them, one channel of its stereo."""
    decoder = OpusDecoder()
    frames = [f.to_ndarray().reshape(-1)[::2] for p in packets for f in decoder.decode(JitterFrame(bytes(p), p.pts))]
    return np.concatenate(frames).astype(np.float64)


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / OUT_RATE)[spectrum.argmax()])


async def test_a_quiet_track_sends_the_silence_packet_made_once_and_encodes_nothing():
    track = OutboundAudioTrack()
    track.send_opus()
    packets = [await track.recv() for _ in range(10)]
    assert [p.pts for p in packets] == [i * OUT_FRAME_SAMPLES for i in range(10)]
    assert {bytes(p) for p in packets} == {silence_payload()}
    assert track.frames_encoded == 0
    assert np.abs(decoded(packets)).max() <= 2  # the last bit at most: -84 dBFS


async def test_speech_is_encoded_into_opus_that_decodes_to_the_same_sound():
    track = OutboundAudioTrack()
    track.send_opus()
    await track.play(tone(0.5, OUT_RATE), OUT_RATE, "A tone.")
    packets = [await track.recv() for _ in range(25)]
    assert track.frames_encoded == 25
    assert silence_payload() not in {bytes(p) for p in packets}
    audio = decoded(packets)[OUT_RATE // 10 :]  # past the codec's start-up
    sent = np.frombuffer(tone(0.5, OUT_RATE), dtype=np.int16).astype(np.float64)
    assert abs(dominant_hz(audio) - 300) < 10
    assert 0.9 < np.sqrt((audio**2).mean()) / np.sqrt((sent**2).mean()) < 1.1
    # Then silence again, without a call to encode it.
    assert {bytes(await track.recv()) for _ in range(5)} == {silence_payload()}
    assert track.frames_encoded == 25


async def test_speech_after_a_silence_starts_from_a_fresh_encoder():
    chunk = tone(0.02, OUT_RATE)
    voice = OpusVoice()
    for pts in range(0, 20 * OUT_FRAME_SAMPLES, OUT_FRAME_SAMPLES):
        voice.packet(chunk, pts)  # an earlier sentence
    for pts in range(20 * OUT_FRAME_SAMPLES, 30 * OUT_FRAME_SAMPLES, OUT_FRAME_SAMPLES):
        voice.packet(None, pts)
    after_silence = bytes(voice.packet(chunk, 30 * OUT_FRAME_SAMPLES))
    assert after_silence == bytes(OpusVoice().packet(chunk, 0))
    # Within a sentence the encoder goes on (its packets are predicted from the ones before).
    assert bytes(voice.packet(chunk, 31 * OUT_FRAME_SAMPLES)) != after_silence


async def test_held_speech_goes_out_as_silence_packets_and_resumes_encoded():
    track = OutboundAudioTrack()
    track.send_opus()
    await track.play(tone(0.1, OUT_RATE), OUT_RATE, "Five frames.")
    assert bytes(await track.recv()) != silence_payload()
    track.hold()
    assert {bytes(await track.recv()) for _ in range(3)} == {silence_payload()}
    track.resume()
    assert silence_payload() not in {bytes(await track.recv()) for _ in range(4)}


async def answer_for(codecs: list[str]) -> tuple[str, str]:
    """A real aiortc offer limited to `codecs`, answered the way the server answers: (sdp, mid)."""
    caller, server = RTCPeerConnection(), RTCPeerConnection()
    try:
        transceiver = caller.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        offered = [c for name in codecs for c in capabilities if c.mimeType == name]
        transceiver.setCodecPreferences(offered)
        await caller.setLocalDescription(await caller.createOffer())
        await server.setRemoteDescription(caller.localDescription)
        sender = server.addTrack(OutboundAudioTrack())
        await server.setLocalDescription(await server.createAnswer())
        mid = next(t.mid for t in server.getTransceivers() if t.sender is sender)
        return server.localDescription.sdp, mid
    finally:
        await caller.close()
        await server.close()


async def test_the_answer_says_whether_the_call_sends_opus():
    assert sends_opus(*await answer_for(["audio/opus", "audio/PCMU"]))
    assert not sends_opus(*await answer_for(["audio/PCMU"]))
    assert not sends_opus(*await answer_for(["audio/PCMA", "audio/opus"]))
    sdp, _ = await answer_for(["audio/opus"])
    assert not sends_opus(sdp, "no-such-mid")


async def test_with_dtx_a_quiet_track_sends_a_toc_byte_every_400_ms_and_speech_wakes_it_at_once():
    track = OutboundAudioTrack()
    track.send_opus(dtx=True)
    frame = OUT_FRAME_SAMPLES
    # Quiet from the start, as libopus: the hangover's silence packets, then a DTX packet, the next
    # 20 frames later, nothing between.
    start = [await track.recv() for _ in range(HANGOVER_FRAMES + 2)]
    assert [bytes(p) for p in start] == [silence_payload()] * HANGOVER_FRAMES + [silence_payload()[:1]] * 2
    assert [p.pts for p in start] == [i * frame for i in range(HANGOVER_FRAMES + 1)] + [
        (HANGOVER_FRAMES + EVERY_FRAMES) * frame
    ]
    second = start[-1]
    # Speech queued while the track sleeps goes out at once, before the next DTX packet was due.
    receiving = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.02)
    await track.play(tone(0.1, OUT_RATE), OUT_RATE, "Five frames.")
    speech = [await receiving] + [await track.recv() for _ in range(4)]
    assert second.pts < speech[0].pts < second.pts + EVERY_FRAMES * frame
    assert silence_payload() not in {bytes(p) for p in speech}
    assert [p.pts - speech[0].pts for p in speech] == [i * frame for i in range(5)]
    # After speech: libopus's hangover of ordinary silence packets, then DTX every 20 frames.
    after = [await track.recv() for _ in range(HANGOVER_FRAMES + 2)]
    assert [bytes(p) for p in after] == [silence_payload()] * HANGOVER_FRAMES + [silence_payload()[:1]] * 2
    end = speech[-1].pts + frame
    assert [p.pts - end for p in after] == (
        [i * frame for i in range(HANGOVER_FRAMES + 1)] + [(HANGOVER_FRAMES + EVERY_FRAMES) * frame]
    )
    assert track.packets_sent == 2 * (HANGOVER_FRAMES + 2) + 5 and track.frames_encoded == 5


async def test_with_dtx_a_held_bot_goes_quiet_and_resume_wakes_it():
    track = OutboundAudioTrack()
    track.send_opus(dtx=True)
    await track.play(tone(1.0, OUT_RATE), OUT_RATE, "A second of tone.")
    assert bytes(await track.recv()) != silence_payload()
    track.hold()
    held = [await track.recv() for _ in range(HANGOVER_FRAMES + 1)]
    assert [bytes(p) for p in held] == [silence_payload()] * HANGOVER_FRAMES + [silence_payload()[:1]]
    receiving = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.02)
    track.resume()
    resumed = await receiving
    assert bytes(resumed) not in (silence_payload(), silence_payload()[:1])
    assert resumed.pts < held[-1].pts + EVERY_FRAMES * OUT_FRAME_SAMPLES  # woken, not at the next DTX packet


async def test_over_webrtc_a_quiet_bot_in_dtx_sends_few_packets_and_the_callers_recording_stays_whole():
    """The bot says a tone, then is quiet for two seconds, sending as libopus does in DTX to a caller
    that asked for it: `parley call`'s Recorder hears the tone and, in the gaps, silence that keeps
    pace with the clock, as a browser plays it."""
    caller, server = RTCPeerConnection(), RTCPeerConnection()
    bot = OutboundAudioTrack()
    recorder = Recorder()
    tasks: list[asyncio.Task] = []
    try:
        caller.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        set_audio_jitter_buffer(caller, DEFAULT_JITTER_PACKETS)  # as `parley call` receives
        caller.on("track", lambda track: tasks.append(asyncio.create_task(recorder.record(track))))
        await caller.setLocalDescription(await caller.createOffer())
        offer = ask_for_dtx(caller.localDescription.sdp)
        await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        server.addTrack(bot)
        await server.setLocalDescription(await server.createAnswer())
        bot.send_opus(dtx=asks_for_dtx(offer))
        await caller.setRemoteDescription(server.localDescription)
        async with asyncio.timeout(20):
            while not recorder.frames:  # connected: the first DTX packet heard
                await asyncio.sleep(0.05)
            await bot.play(tone(0.4, OUT_RATE), OUT_RATE, "A tone.")
            await bot.drained()
            sent_then = bot.packets_sent
            while not any(loud for _, _, loud in recorder.frames):  # the tone heard
                await asyncio.sleep(0.05)
            heard_then = len(recorder.frames)
            # Two seconds of the recording after the tone: silence, from the gaps' timestamps.
            while len(recorder.frames) < heard_then + 100:
                await asyncio.sleep(0.05)
            quiet_frames = len(recorder.frames) - heard_then
            quiet_packets = bot.packets_sent - sent_then
    finally:
        await caller.close()
        await server.close()
        await asyncio.gather(*tasks)
    # The quiet came as the hangover's packets and a DTX packet every 20 frames, not a packet a frame.
    assert quiet_packets <= HANGOVER_FRAMES + quiet_frames // EVERY_FRAMES + 2, (quiet_packets, quiet_frames)
    voiced = [i for i, (_, _, loud) in enumerate(recorder.frames) if loud]
    assert 15 <= len(voiced) <= 25  # the tone: 20 frames
    assert max(level_dbfs(pcm) for _, pcm, _ in recorder.frames[voiced[-1] + 2 :]) < -60
