import numpy as np
import pytest

from media.audio_file import read_audio, write_wav
from media.errors import AudioFileError
from tests.speech import JFK, STEREO


def test_flac_at_44k_stereo_is_decoded_to_16k_mono():
    samples = read_audio(JFK, 16000)
    assert samples.dtype == np.int16
    assert abs(samples.size / 16000 - 11.0) < 0.05
    assert np.abs(samples).max() > 10000


def test_a_single_channel_can_be_picked():
    left, right = read_audio(STEREO, channel=0), read_audio(STEREO, channel=1)
    assert left.size == right.size == 80000
    assert not np.array_equal(left, right)
    with pytest.raises(AudioFileError, match="no channel 2"):
        read_audio(STEREO, channel=2)


def test_wav_round_trip_at_another_rate(tmp_path):
    tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 10000).astype(np.int16)
    write_wav(tmp_path / "tone.wav", tone, 22050)
    back = read_audio(tmp_path / "tone.wav", 16000)
    assert abs(back.size - 16000) <= 32
    assert 0.6 < np.abs(back).max() / 10000 < 1.1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("not audio at all\n" * 50), "not a readable audio file"),
    ],
)
def test_bad_files_raise_a_one_line_error(tmp_path, make, message):
    path = tmp_path / "input.wav"
    make(path)
    with pytest.raises(AudioFileError, match=message) as info:
        read_audio(path)
    assert "\n" not in str(info.value)
