"""WebRTC audio edges: the caller's track in as 16 kHz frames, the bot's voice out as 48 kHz frames.

Inbound audio is converted once (PyAV) to 16 kHz mono 16-bit and cut into 20 ms
frames, in a bounded queue that drops the oldest frame rather than fall behind.
Outbound audio follows aiortc's own tracks: `recv()` hands out 20 ms frames paced
by their pts, silence when there is nothing to say. Once the call is known to send
Opus, they go out as Opus packets the track makes itself, silence encoded once
(media.voice_encoder): a quiet bot then costs next to nothing. With DTX it sends next
to nothing too: `recv` sleeps until the bot speaks or the next DTX packet is due.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.caller_dtx import SilenceFill
from media.frames import AudioFrame, FrameSlicer
from media.loop_decoder import LoopDecoder
from media.resample import Resampler, resample_pcm
from media.voice_encoder import OpusVoice

log = logging.getLogger(__name__)

OUT_RATE = 48000
OUT_FRAME_SAMPLES = OUT_RATE // 50  # 20 ms
_TIME_BASE = fractions.Fraction(1, OUT_RATE)
T = TypeVar("T")


class InboundAudio:
    """Reads a remote audio track; iterate it for 16 kHz mono 20 ms AudioFrames.

    The queue holds `max_frames` (1 s by default); when the consumer falls behind,
    the oldest frames are dropped, so the VAD always works on current audio.
    With `dtx` (the track's LoopDecoder), the gaps of a caller in DTX are filled with
    silence, a tick of `fill_tick_s` at a time (media.caller_dtx); `on_filled` hears the
    seconds of each fill.
    """

    def __init__(
        self, track: MediaStreamTrack, *, sample_rate: int = 16000, max_frames: int = 50,
        dtx: LoopDecoder | None = None, fill_tick_s: float = 0.1, on_filled: Callable[[float], None] | None = None,
    ) -> None:
        self._track = track
        self._resampler = Resampler(sample_rate)
        self._slicer = FrameSlicer(sample_rate, 20)
        self._queue: asyncio.Queue[AudioFrame | None] = asyncio.Queue(maxsize=max_frames)
        self._dtx = dtx
        self._fill = SilenceFill()
        self._fill_tick_s = fill_tick_s
        self._silence = bytes(self._slicer.frame_bytes)
        self._on_filled = on_filled
        self.dropped = 0
        self.filled = 0  # frames of silence that stood for packets not sent (DTX)

    async def pump(self) -> None:
        """Read the track until it ends; run this as a task of the call."""
        try:
            async with asyncio.TaskGroup() as tasks:
                filler = tasks.create_task(self._fill_gaps(self._dtx), name="dtx-fill") if self._dtx else None
                await self._read()
                if filler is not None:
                    filler.cancel()
        finally:
            self._put(None)

    async def _read(self) -> None:
        after_dtx = False
        try:
            while True:
                frame = await self._track.recv()
                if self._dtx is not None:
                    self._put_silence(self._fill.before_frame(time.monotonic(), after_dtx=after_dtx))
                    after_dtx = self._dtx.in_dtx
                for out in self._slicer.push(self._resampler.convert(frame)):
                    self._put(out)
        except MediaStreamError:
            pass  # the remote track ended: the call is over

    async def _fill_gaps(self, dtx: LoopDecoder) -> None:
        """While the caller is in DTX, silence for the time no packet came, every tick."""
        while True:
            await asyncio.sleep(self._fill_tick_s)
            self._put_silence(self._fill.due(time.monotonic(), in_dtx=dtx.in_dtx))

    def _put_silence(self, frames: int) -> None:
        if not frames:
            return
        self.filled += frames
        if self._on_filled is not None:
            self._on_filled(frames * self._fill.frame_s)
        for _ in range(frames):
            for out in self._slicer.push(self._silence):
                self._put(out)

    def _put(self, frame: AudioFrame | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    async def __aiter__(self) -> AsyncIterator[AudioFrame]:
        while (frame := await self._queue.get()) is not None:
            yield frame


class FramePacer:
    """The pts of each outgoing 20 ms frame, handed out when that frame is due (as aiortc's own
    tracks pace): the first at once, each next one frame's time after the one before, without
    drift; `next_to_send` jumps over frames that send nothing."""

    def __init__(self, rate: int = OUT_RATE) -> None:
        self.rate = rate
        self.samples = rate // 50
        self._start: float | None = None
        self._pts = 0

    async def next_pts(self) -> int:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self.samples
            wait = self._start + self._pts / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self._pts

    async def next_to_send(
        self, make: Callable[[int], T | None], next_sent: Callable[[int], int], wake: asyncio.Event
    ) -> tuple[int, T]:
        """The next frame that sends something, and what: `make(pts)` makes a frame's packet, or
        None for a frame that sends nothing (a sender in DTX). Then, rather than wake every 20 ms,
        sleep until the frame `next_sent(pts)` says goes out next, or until `wake` is set (there
        may be speech to send)."""
        pts = await self.next_pts()
        while (made := make(pts)) is None:
            wake.clear()
            pts = await self._skip_until(next_sent(pts + self.samples), wake)
        return pts, made

    async def _skip_until(self, pts: int, wake: asyncio.Event) -> int:
        """Frames before `pts` send nothing: sleep until `pts` is due or `wake` is set, whichever
        comes first, and hand out `pts`, or, woken, the frame due now (`next_pts` follows either)."""
        assert self._start is not None, "a skip before next_pts started the clock"
        try:
            async with asyncio.timeout(max(0.0, self._start + pts / self.rate - time.monotonic())):
                await wake.wait()
        except TimeoutError:
            # `pts` itself, even when the loop woke late: as `next_pts`, the pacer never skips a
            # frame it was not told to (the frames after it follow at once, until they catch up).
            self._pts = max(self._pts, pts)
            return self._pts
        now = int((time.monotonic() - self._start) * self.rate) // self.samples * self.samples
        self._pts = max(self._pts, min(now, pts))
        return self._pts


@dataclass(slots=True)
class _Segment:
    pcm: bytes  # 48 kHz mono s16
    text: str
    offset: int = 0  # bytes already sent

    def played_text(self) -> str:
        """The words of `text` in proportion to the audio already sent (rounded down)."""
        words = self.text.split()
        return " ".join(words[: len(words) * self.offset // max(1, len(self.pcm))])


class OutboundAudioTrack(MediaStreamTrack):
    """The bot's voice: queue speech with `play`, stop it with `interrupt`.

    `play` waits while more than `max_queued_s` of audio is queued (backpressure on
    the TTS); `recv` is paced by pts like aiortc's AudioStreamTrack.
    """

    kind = "audio"

    def __init__(self, *, max_queued_s: float = 30.0) -> None:
        super().__init__()
        self._segments: deque[_Segment] = deque()
        self._queued_bytes = 0
        self._max_queued_bytes = int(max_queued_s * OUT_RATE * 2)
        self._played: list[str] = []
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pacer = FramePacer()
        self._held = False
        self._segment_played = asyncio.Event()
        self._opus: OpusVoice | None = None
        # Set when there may be speech to send: wakes a `recv` that DTX put to sleep.
        self._speech_queued = asyncio.Event()

    def send_opus(self, *, dtx: bool = False) -> None:
        """Hand out Opus packets from now on instead of frames for aiortc to encode: call it once the
        answer has chosen Opus for this track (its first codec), before media flows. With `dtx`
        (the far end asked for it), a quiet bot sends as libopus does in DTX (media.sender_dtx)."""
        self._opus = OpusVoice(dtx=dtx)

    @property
    def packets_sent(self) -> int | None:
        """Packets handed out (None: aiortc encodes the frames)."""
        return None if self._opus is None else self._opus.sent

    @property
    def frames_encoded(self) -> int | None:
        """Frames this track encoded itself (None: aiortc encodes them all)."""
        return None if self._opus is None else self._opus.encoded

    @property
    def speaking(self) -> bool:
        return bool(self._segments)

    def hold(self) -> None:
        """Pause at once (silence goes out, or DTX's, nothing queued is lost) until `resume` or `interrupt`."""
        self._held = True

    def resume(self) -> None:
        """Go on from where `hold` paused."""
        self._held = False
        self._speech_queued.set()

    async def play(self, pcm: bytes, sample_rate: int, text: str) -> None:
        """Queue mono 16-bit PCM at any rate; `text` is what it says."""
        await self._space.wait()
        data = resample_pcm(pcm, sample_rate, OUT_RATE)
        if not data:
            return
        self._segments.append(_Segment(data, text))
        self._queued_bytes += len(data)
        self._idle.clear()
        self._speech_queued.set()
        if self._queued_bytes > self._max_queued_bytes:
            self._space.clear()

    def interrupt(self) -> str:
        """Drop what has not been sent yet; return the text sent since the last interrupt or drain."""
        if self._segments and self._segments[0].offset:
            self._played.append(self._segments[0].played_text())
        self._segments.clear()
        self._queued_bytes = 0
        self._held = False
        self._space.set()
        self._idle.set()
        return self._take_played()

    async def drained(self) -> str:
        """Wait until all queued audio has been sent; return its text."""
        await self._idle.wait()
        return self._take_played()

    async def next_heard(self) -> str:
        """Wait until one more queued segment has been sent to its end; return all the text sent
        since the last interrupt or drain (it stays to be returned by those)."""
        self._segment_played.clear()
        await self._segment_played.wait()
        return " ".join(t for t in self._played if t)

    def _take_played(self) -> str:
        text = " ".join(t for t in self._played if t)
        self._played.clear()
        return text

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._opus is not None:
            opus = self._opus
            _, packet = await self._pacer.next_to_send(
                lambda pts: opus.packet(self._next_chunk() or None, pts), opus.next_sent, self._speech_queued
            )
            return packet
        pts = await self._pacer.next_pts()
        chunk = self._next_chunk()
        samples = np.frombuffer(chunk or bytes(OUT_FRAME_SAMPLES * 2), dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.pts = pts
        frame.sample_rate = OUT_RATE
        frame.time_base = _TIME_BASE
        return frame

    def _next_chunk(self) -> bytes:
        """The next 20 ms of queued speech, padded with silence at its end; empty when nothing was queued."""
        need = OUT_FRAME_SAMPLES * 2
        out = bytearray()
        while self._segments and len(out) < need and not self._held:
            head = self._segments[0]
            take = head.pcm[head.offset : head.offset + need - len(out)]
            out += take
            head.offset += len(take)
            self._queued_bytes -= len(take)
            if head.offset >= len(head.pcm):
                self._played.append(head.text)
                self._segments.popleft()
                self._segment_played.set()
        if self._queued_bytes <= self._max_queued_bytes:
            self._space.set()
        if not self._segments:
            self._idle.set()
        return bytes(out) + bytes(need - len(out)) if out else b""
