import asyncio
import fractions

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.tracks import OUT_FRAME_SAMPLES, OUT_RATE, InboundAudio, OutboundAudioTrack


def tone(seconds: float, rate: int, amplitude: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 300 * t) * amplitude).astype(np.int16).tobytes()


async def test_outbound_sends_paced_20ms_frames_of_silence_when_idle():
    track = OutboundAudioTrack()
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = [await track.recv() for _ in range(10)]
    elapsed = loop.time() - start
    assert [f.pts for f in frames] == [i * OUT_FRAME_SAMPLES for i in range(10)]
    assert all(f.samples == OUT_FRAME_SAMPLES and f.sample_rate == OUT_RATE for f in frames)
    assert all(not f.to_ndarray().any() for f in frames)
    assert elapsed >= 9 * 0.02 * 0.9  # paced by pts, not sent as fast as possible


async def test_played_text_is_what_was_sent_before_an_interrupt():
    track = OutboundAudioTrack()
    await track.play(tone(0.2, 22050), 22050, "First sentence here.")
    await track.play(tone(0.4, 22050), 22050, "one two three four")
    assert track.speaking
    frames = [await track.recv() for _ in range(20)]  # 0.4 s: all of the first, half of the second
    assert any(f.to_ndarray().any() for f in frames)
    assert track.interrupt() == "First sentence here. one two"
    assert not track.speaking
    assert not (await track.recv()).to_ndarray().any()  # silence straight after the interrupt
    assert track.interrupt() == ""


async def test_drained_waits_for_the_audio_to_be_sent():
    track = OutboundAudioTrack()
    await track.play(tone(0.1, 48000), 48000, "Short.")
    drained = asyncio.create_task(track.drained())
    await asyncio.sleep(0)
    assert not drained.done()
    for _ in range(6):
        await track.recv()
    assert await asyncio.wait_for(drained, 1) == "Short."


async def test_next_heard_follows_each_piece_played_to_its_end_and_takes_nothing():
    track = OutboundAudioTrack()
    await track.play(tone(0.1, 48000), 48000, "One.")
    await track.play(tone(0.1, 48000), 48000, "Two.")
    heard = asyncio.create_task(track.next_heard())
    for _ in range(5):  # 0.1 s: the first piece, to its end
        await track.recv()
    assert await asyncio.wait_for(heard, 1) == "One."
    heard = asyncio.create_task(track.next_heard())
    for _ in range(3):  # half of the second: not yet heard whole
        await track.recv()
    await asyncio.sleep(0)
    assert not heard.done()
    for _ in range(2):
        await track.recv()
    assert await asyncio.wait_for(heard, 1) == "One. Two."
    assert await track.drained() == "One. Two."  # still there for the drain to take


class FakeMicrophone(MediaStreamTrack):
    """48 kHz stereo frames of a tone, as a browser's Opus decoder hands them to aiortc."""

    kind = "audio"

    def __init__(self, frames: int) -> None:
        super().__init__()
        self._left = frames
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self._left == 0:
            raise MediaStreamError
        self._left -= 1
        mono = np.frombuffer(tone(0.02, 48000), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._pts, fractions.Fraction(1, 48000)
        self._pts += 960
        return frame


async def test_inbound_audio_becomes_16k_mono_20ms_frames():
    inbound = InboundAudio(FakeMicrophone(25))
    pump = asyncio.create_task(inbound.pump())
    frames = [f async for f in inbound]
    await pump
    assert 23 <= len(frames) <= 25
    assert all(f.sample_rate == 16000 and f.samples == 320 for f in frames)
    assert [f.pts for f in frames] == [i * 320 for i in range(len(frames))]
    assert np.abs(frames[5].array()).max() > 4000


async def test_inbound_audio_drops_the_oldest_frames_when_the_reader_falls_behind():
    inbound = InboundAudio(FakeMicrophone(100), max_frames=10)
    await inbound.pump()  # nobody reads meanwhile
    frames = [f async for f in inbound]
    assert inbound.dropped > 80
    assert len(frames) == 9  # the queue's 10 slots, one of them the end marker
    assert frames[-1].pts > 80 * 320  # what is kept is the newest audio


async def test_hold_sends_silence_keeps_the_audio_and_resume_goes_on():
    track = OutboundAudioTrack()
    await track.play(tone(0.1, 48000), 48000, "Five frames of speech.")
    assert (await track.recv()).to_ndarray().any()
    track.hold()
    assert not any([(await track.recv()).to_ndarray().any() for _ in range(3)])
    assert track.speaking  # nothing was dropped
    track.resume()
    assert all([(await track.recv()).to_ndarray().any() for _ in range(4)])
    assert await asyncio.wait_for(track.drained(), 1) == "Five frames of speech."
