"""Converting audio of any layout and rate to mono signed 16-bit PCM at one rate, with PyAV."""

from __future__ import annotations

import av
import numpy as np
import av.audio.resampler


class Resampler:
    """Wraps av.AudioResampler: any av.AudioFrame in, interleaved s16 PCM bytes at `sample_rate` out.

    The layout is mono unless asked otherwise. It keeps filter state between
    frames, so use one per stream.
    """

    def __init__(self, sample_rate: int, layout: str = "mono") -> None:
        self.sample_rate = sample_rate
        self.channels = av.AudioLayout(layout).nb_channels
        self._resampler = av.audio.resampler.AudioResampler(format="s16", layout=layout, rate=sample_rate)

    def convert(self, frame: av.AudioFrame | None) -> bytes:
        """Resample one frame (None flushes what the filter still holds)."""
        out = self._resampler.resample(frame)
        # A plane can be padded past the last sample; keep only the samples.
        return b"".join(bytes(f.planes[0])[: f.samples * 2 * self.channels] for f in out)


def resample_pcm(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Resample a whole buffer of mono 16-bit PCM (one utterance) in one go."""
    if from_rate == to_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = from_rate
    resampler = Resampler(to_rate)
    return resampler.convert(frame) + resampler.convert(None)
