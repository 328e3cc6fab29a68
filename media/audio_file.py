"""Reading audio files of any format PyAV knows (wav, flac, mp3, ...) and writing WAV."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np

from media.errors import AudioFileError
from media.resample import Resampler


def read_audio(path: str | Path, sample_rate: int = 16000, *, channel: int | None = None) -> np.ndarray:
    """Decode the file's first audio stream to mono int16 samples at `sample_rate`.

    All channels are mixed down, unless `channel` picks one (0 is the left).

    Raises AudioFileError, with a one-line reason, for a missing, empty or non-audio file.
    """
    if channel is None:
        return _decode(path, sample_rate, "mono")[:, 0]
    samples = _decode(path, sample_rate, None, channel=channel)
    return samples[:, channel].copy()


def read_audio_channels(path: str | Path, sample_rate: int, channels: int) -> np.ndarray:
    """Decode the file's first audio stream to int16 samples of shape (n, channels), 1 or 2, at
    `sample_rate`: stereo stays stereo (a mono file is doubled), mono mixes down.

    Raises AudioFileError as `read_audio` does.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    return _decode(path, sample_rate, "mono" if channels == 1 else "stereo")


def _decode(path: str | Path, sample_rate: int, layout: str | None, *, channel: int | None = None) -> np.ndarray:
    """The samples as (n, channels) in `layout` (None: the file's own), checking `channel` exists."""
    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: the file is empty")
    chunks: list[bytes] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.layout.nb_channels
            if channel is not None and not 0 <= channel < channels:
                raise AudioFileError(f"{path}: has {channels} channel(s), no channel {channel}")
            resampler = Resampler(sample_rate, layout or stream.codec_context.layout.name)
            for frame in container.decode(stream):
                chunks.append(resampler.convert(frame))
            chunks.append(resampler.convert(None))
    except av.FFmpegError as exc:
        raise AudioFileError(f"{path}: not a readable audio file ({exc.strerror or type(exc).__name__})") from exc
    samples = np.frombuffer(b"".join(chunks), dtype=np.int16)
    if samples.size == 0:
        raise AudioFileError(f"{path}: contains no audio samples")
    return samples.reshape(-1, resampler.channels)


def write_wav(path: str | Path, pcm: bytes | np.ndarray, sample_rate: int, *, channels: int = 1) -> None:
    """Write 16-bit PCM as a WAV file: mono, or `channels` interleaved (an array of shape (n, channels))."""
    data = pcm.astype(np.int16).tobytes() if isinstance(pcm, np.ndarray) else pcm
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(data)
