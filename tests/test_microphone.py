"""The call client's microphone: files played in a fixed format, silence between them."""

from __future__ import annotations

import numpy as np
import pytest

from media.audio_file import read_audio_channels, write_wav
from parley.microphone import Microphone, MicrophoneFormat
from tests.speech import STEREO


async def test_a_stereo_microphone_at_44k_sends_20_ms_stereo_frames_then_silence():
    mic = Microphone(MicrophoneFormat(rate=44100, channels=2))
    left = np.full(882 * 2, 1000, np.int16)
    await mic.play(np.stack([left, -left], axis=1))
    frames = [await mic.recv() for _ in range(3)]
    assert [(f.sample_rate, f.layout.name, f.samples) for f in frames] == [(44100, "stereo", 882)] * 3
    assert [f.pts for f in frames] == [0, 882, 1764]
    first = frames[0].to_ndarray().reshape(-1, 2)
    assert (first[:, 0] == 1000).all() and (first[:, 1] == -1000).all()
    assert not frames[2].to_ndarray().any()  # nothing queued: silence
    await mic.drained()


async def test_samples_of_the_wrong_shape_or_type_are_refused():
    mic = Microphone(MicrophoneFormat(rate=8000, channels=1))
    with pytest.raises(ValueError):
        await mic.play(np.zeros((160, 2), np.int16))
    with pytest.raises(ValueError):
        await mic.play(np.zeros(160, np.float32))


@pytest.mark.parametrize("rate, channels", [(44000 + 1, 1), (8000, 3), (0, 1)])
def test_impossible_formats_are_refused(rate, channels):
    with pytest.raises(ValueError):
        MicrophoneFormat(rate=rate, channels=channels)


def test_a_file_is_read_with_its_channels_apart_and_written_back(tmp_path):
    stereo = read_audio_channels(STEREO, 16000, 2)
    assert stereo.shape == (80000, 2) and not np.array_equal(stereo[:, 0], stereo[:, 1])
    write_wav(tmp_path / "copy.wav", stereo, 16000, channels=2)
    assert np.array_equal(read_audio_channels(tmp_path / "copy.wav", 16000, 2), stereo)
    mono = read_audio_channels(STEREO, 8000, 1)
    assert mono.shape == (40000, 1)
