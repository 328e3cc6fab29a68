"""The caller's microphone in `parley call`: audio played in real time, in one fixed format.

A microphone captures at one rate and channel count for its whole life, as a
browser's does, and aiortc's encoder converts that to the codec negotiated (Opus:
48 kHz stereo; PCMU and PCMA: 8 kHz mono), as a browser's WebRTC stack would. So
a file said at 8 kHz, or in stereo, reaches the encoder as it was recorded. The
default, 48 kHz mono, is what a browser's capture usually hands its encoder.
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.tracks import FramePacer


@dataclass(frozen=True, slots=True, kw_only=True)
class MicrophoneFormat:
    """What the microphone captures: `rate` in Hz (a multiple of 50, for whole 20 ms frames) and
    `channels` (1 or 2)."""

    rate: int = 48000
    channels: int = 1

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.rate % 50:
            raise ValueError(f"a microphone's rate must be a positive multiple of 50 Hz, not {self.rate}")
        if self.channels not in (1, 2):
            raise ValueError(f"a microphone has 1 or 2 channels, not {self.channels}")

    @property
    def layout(self) -> str:
        return "mono" if self.channels == 1 else "stereo"


class Microphone(MediaStreamTrack):
    """Sends what `play` queued in 20 ms frames paced by their pts, and silence when nothing is queued.

    `play` waits while more than `max_queued_s` is queued (a caller cannot say
    more than that at once).
    """

    kind = "audio"

    def __init__(self, format: MicrophoneFormat = MicrophoneFormat(), *, max_queued_s: float = 120.0) -> None:
        super().__init__()
        self.format = format
        self._frame_bytes = format.rate // 50 * format.channels * 2
        self._time_base = fractions.Fraction(1, format.rate)
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._max_queued = int(max_queued_s * format.rate * format.channels * 2)
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pacer = FramePacer(format.rate)

    async def play(self, samples: np.ndarray) -> None:
        """Queue int16 samples in the microphone's format: shape (n,) for mono, (n, 2) for stereo."""
        if samples.dtype != np.int16 or samples.reshape(samples.shape[0], -1).shape[1] != self.format.channels:
            raise ValueError(f"the microphone takes int16 samples of {self.format.channels} channel(s)")
        await self._space.wait()
        data = samples.tobytes()
        if not data:
            return
        self._chunks.extend(data[i : i + self._frame_bytes] for i in range(0, len(data), self._frame_bytes))
        self._queued += len(data)
        self._idle.clear()
        if self._queued > self._max_queued:
            self._space.clear()

    async def drained(self) -> None:
        """Wait until everything queued has been sent."""
        await self._idle.wait()

    def interrupt(self) -> None:
        """Drop what has not been sent yet."""
        self._chunks.clear()
        self._queued = 0
        self._space.set()
        self._idle.set()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next_pts()
        chunk = self._chunks.popleft() if self._chunks else b""
        self._queued -= len(chunk)
        if self._queued <= self._max_queued:
            self._space.set()
        if not self._chunks:
            self._idle.set()
        pcm = np.frombuffer(chunk + bytes(self._frame_bytes - len(chunk)), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=self.format.layout)
        frame.pts = pts
        frame.sample_rate = self.format.rate
        frame.time_base = self._time_base
        return frame
