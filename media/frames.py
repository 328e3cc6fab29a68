"""PCM audio frames, and cutting a stream of arbitrary chunks into fixed-length frames."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SAMPLE_WIDTH = 2  # bytes per sample: signed 16-bit little-endian, everywhere in Parley


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Mono signed 16-bit PCM.

    pts: the first sample's position in its stream, in samples at `sample_rate`.
    """

    pcm: bytes
    sample_rate: int
    pts: int = 0

    @property
    def samples(self) -> int:
        return len(self.pcm) // SAMPLE_WIDTH

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.samples / self.sample_rate

    def array(self) -> np.ndarray:
        """The samples as int16 (a read-only view, no copy)."""
        return np.frombuffer(self.pcm, dtype=np.int16)


def level_dbfs(pcm: bytes | np.ndarray) -> float:
    """RMS level of 16-bit PCM in dB relative to full scale; -inf for digital silence."""
    samples = np.frombuffer(pcm, dtype=np.int16) if isinstance(pcm, bytes) else pcm
    if samples.size == 0:
        return float("-inf")
    # One dot product rather than square, mean and sqrt: this runs on every 20 ms frame of every
    # call, where numpy's per-call overhead, not the arithmetic, is the cost.
    x = samples.astype(np.float64).ravel()  # any shape: a PyAV frame's array is (channels, samples)
    mean_square = float(x @ x) / x.size
    return 10.0 * math.log10(mean_square / 32768.0**2) if mean_square > 0 else float("-inf")


class FrameSlicer:
    """Cuts PCM arriving in chunks of any size into frames of exactly `frame_ms`.

    The remainder waits for the next chunk; pts counts samples from the first chunk.
    """

    def __init__(self, sample_rate: int, frame_ms: int = 20) -> None:
        self.sample_rate = sample_rate
        self.frame_bytes = sample_rate * frame_ms // 1000 * SAMPLE_WIDTH
        self._buffer = bytearray()
        self._pts = 0

    def push(self, pcm: bytes) -> Iterator[AudioFrame]:
        """Add a chunk; yield every whole frame now available."""
        self._buffer += pcm
        while len(self._buffer) >= self.frame_bytes:
            chunk = bytes(self._buffer[: self.frame_bytes])
            del self._buffer[: self.frame_bytes]
            yield AudioFrame(chunk, self.sample_rate, self._pts)
            self._pts += self.frame_bytes // SAMPLE_WIDTH

    def flush(self) -> Iterator[AudioFrame]:
        """The leftover partial frame, padded with silence, if any."""
        if self._buffer:
            yield from self.push(bytes(self.frame_bytes - len(self._buffer)))


def frames_of(pcm: bytes, sample_rate: int, frame_ms: int = 20) -> list[AudioFrame]:
    """All of `pcm` as frames of `frame_ms`, the last one padded with silence."""
    slicer = FrameSlicer(sample_rate, frame_ms)
    return [*slicer.push(pcm), *slicer.flush()]
