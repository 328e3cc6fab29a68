import numpy as np
import pytest

from media.audio_file import read_audio
from pipeline.asr import Transcriber, window_seconds
from tests.speech import JFK, JFK_TEXT, STEREO, STEREO_TEXT, wer

pytestmark = pytest.mark.slow


async def test_jfk_is_transcribed_within_10_percent_wer(transcriber):
    transcript = await transcriber.transcribe(read_audio(JFK))
    assert wer(JFK_TEXT, transcript.text) <= 0.10, transcript.text
    assert transcript.language == "en"
    assert abs(transcript.audio_ms - 11000) < 50
    assert transcript.no_speech_prob < 0.5


@pytest.mark.parametrize("channel", [0, 1])
async def test_each_stereo_channel_within_10_percent_wer(transcriber, channel):
    transcript = await transcriber.transcribe(read_audio(STEREO, channel=channel))
    assert wer(STEREO_TEXT[channel], transcript.text) <= 0.10, transcript.text


async def test_silence_gives_no_text_or_a_high_no_speech_probability(transcriber):
    transcript = await transcriber.transcribe(np.zeros(16000 * 2, np.int16))
    assert transcript.text == "" or transcript.no_speech_prob > 0.5


def test_window_is_at_least_10s_and_2s_past_the_audio():
    assert window_seconds(1.0) == 10
    assert window_seconds(8.5) == 15
    assert window_seconds(11.0) == 15
    assert window_seconds(13.5) == 20
    assert window_seconds(40.0) == 30


async def test_the_multilingual_base_model_assembles_and_transcribes(settings):
    import dataclasses

    base = Transcriber(dataclasses.replace(settings.asr, model="base", language=""))
    transcript = await base.transcribe(read_audio(JFK))
    assert transcript.language == "en"
    assert wer(JFK_TEXT, transcript.text) <= 0.10, transcript.text
