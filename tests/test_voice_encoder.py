"""The bot's voice encoded by its own track: silence as one packet made once, speech as Opus that
decodes back to the same sound, and the codec read off a real aiortc answer."""

import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack

from media.tracks import OUT_FRAME_SAMPLES, OUT_RATE, OutboundAudioTrack
from media.voice_encoder import OpusVoice, sends_opus, silence_payload
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
