import numpy as np
import pytest

from media.audio_file import read_audio
from media.frames import frames_of
from pipeline.config import VADConfig
from pipeline.vad import SpeechLull, SpeechPaused, SpeechStarted, TurnEnded, VoiceActivityDetector, spectral_flatness
from tests.speech import JFK, STEREO, STEREO_TEXT, wer

RATE = 16000


def run(vad: VoiceActivityDetector, samples: np.ndarray) -> list:
    events = [e for f in frames_of(samples.astype(np.int16).tobytes(), RATE) if (e := vad.push(f))]
    if (last := vad.flush()) is not None:
        events.append(last)
    return events


def white_noise(dbfs: float, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(RATE * seconds)) * 10 ** (dbfs / 20) * 32768).clip(-32768, 32767)


# The VAD's mechanics with silence alone ending a turn, as [turns] end_of_turn = "silence" runs it.
SILENCE_ONLY = VADConfig(end_silence_ms=500)


def two_utterances() -> tuple[np.ndarray, int]:
    left, right = read_audio(STEREO, channel=0), read_audio(STEREO, channel=1)
    return np.concatenate([left, np.zeros(RATE, np.int16), right]), left.size


def test_speech_pause_speech_gives_two_turns_where_the_speech_is():
    samples, boundary = two_utterances()
    events = [e for e in run(VoiceActivityDetector(SILENCE_ONLY), samples) if not isinstance(e, SpeechPaused | SpeechLull)]
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded, SpeechStarted, TurnEnded]
    first, second = events[1], events[3]
    boundary_ms = 1000 * boundary / RATE
    assert 0 < first.start_ms < first.end_ms <= boundary_ms
    assert boundary_ms + 1000 <= second.start_ms < second.end_ms
    assert events[0].at_ms == first.start_ms and events[2].at_ms == second.start_ms
    # The turn's audio runs from the pre-roll to the end of the pause.
    assert len(first.audio) / 2 / RATE * 1000 >= first.end_ms - first.start_ms + 500


@pytest.mark.slow
async def test_turn_audio_is_what_was_said(transcriber):
    samples, _ = two_utterances()
    turns = [e for e in run(VoiceActivityDetector(SILENCE_ONLY), samples) if isinstance(e, TurnEnded)]
    texts = [(await transcriber.transcribe(t.audio)).text for t in turns]
    assert wer(STEREO_TEXT[0], texts[0]) <= 0.1
    assert wer(STEREO_TEXT[1], texts[1]) <= 0.1


def test_pure_silence_has_no_speech():
    assert run(VoiceActivityDetector(), np.zeros(RATE * 5, np.int16)) == []


@pytest.mark.parametrize("dbfs", [-30.0, -20.0])
def test_white_noise_has_no_speech(dbfs):
    vad = VoiceActivityDetector()
    assert run(vad, white_noise(dbfs, 5)) == []


def test_white_noise_is_flat_and_speech_is_not():
    speech = read_audio(STEREO, channel=0)[8000:8320]
    assert spectral_flatness(white_noise(-30, 0.02)) > 0.45
    assert spectral_flatness(speech) < 0.3


def test_a_turn_ends_at_max_turn_length_without_a_pause():
    samples, _ = two_utterances()
    config = VADConfig(max_turn_ms=1000)
    ended = [e for e in run(VoiceActivityDetector(config), samples) if isinstance(e, TurnEnded)]
    assert len(ended) >= 3
    assert all(e.end_ms - e.start_ms <= 1000 for e in ended)


def test_frames_of_the_wrong_shape_are_refused():
    vad = VoiceActivityDetector()
    with pytest.raises(ValueError, match="16000 Hz"):
        vad.push(frames_of(bytes(640), 8000)[0])
    with pytest.raises(ValueError, match="20 ms"):
        vad.push(frames_of(bytes(960), 16000, 30)[0])


async def test_events_streams_frames_to_events():
    samples, _ = two_utterances()

    async def frames():
        for frame in frames_of(samples.tobytes(), RATE):
            yield frame

    events = [e async for e in VoiceActivityDetector(SILENCE_ONLY).events(frames()) if not isinstance(e, SpeechPaused | SpeechLull)]
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded, SpeechStarted, TurnEnded]


def test_a_pause_is_announced_before_the_turn_ends_and_speech_bytes_stop_at_the_last_word():
    samples, _ = two_utterances()
    events = run(VoiceActivityDetector(VADConfig(pause_ms=100, end_silence_ms=500)), samples)
    ended = [i for i, e in enumerate(events) if isinstance(e, TurnEnded)]
    for i in ended:
        pause = events[i - 1]
        assert isinstance(pause, SpeechPaused)
        assert pause.at_ms == events[i].end_ms + 100
        assert pause.speech_bytes == events[i].speech_bytes  # what a reply drafted at the pause covers
        lull = events[i - 2]  # the words are transcribed from here on
        assert isinstance(lull, SpeechLull)
        assert lull.at_ms == events[i].end_ms + 40 and lull.speech_bytes == pause.speech_bytes
        turn = events[i]
        speech_ms = 1000 * turn.speech_bytes / 2 / RATE
        assert len(turn.audio) - turn.speech_bytes == 2 * RATE * 500 // 1000  # the end-of-turn silence
        assert turn.silence_ms == 500
        assert speech_ms >= turn.end_ms - turn.start_ms


def test_a_lull_as_long_as_the_pause_is_the_pause():
    samples, _ = two_utterances()
    events = run(VoiceActivityDetector(VADConfig(pause_ms=100, transcribe_ms=100, end_silence_ms=500)), samples)
    with_lulls = run(VoiceActivityDetector(VADConfig(pause_ms=100, transcribe_ms=40, end_silence_ms=500)), samples)
    assert not any(isinstance(e, SpeechLull) for e in events)
    assert sum(isinstance(e, SpeechLull) for e in with_lulls) >= sum(isinstance(e, SpeechPaused) for e in events) >= 2
    assert [e for e in with_lulls if not isinstance(e, SpeechLull)] == events
    with pytest.raises(ValueError, match="transcribe_ms"):
        VADConfig(pause_ms=100, transcribe_ms=120)
    with pytest.raises(ValueError, match="transcribe_ms"):
        VADConfig(transcribe_ms=30)


def test_the_silence_that_ends_a_turn_can_be_changed_while_it_runs():
    """The turn loop lengthens it at speech start and shortens it when a pause is judged finished."""
    samples, _ = two_utterances()
    vad = VoiceActivityDetector(VADConfig(end_silence_ms=200))
    frames = frames_of(samples.astype(np.int16).tobytes(), RATE)
    events = []
    for frame in frames:
        event = vad.push(frame)
        if isinstance(event, SpeechStarted):
            vad.end_silence_ms = 3000  # longer than the 1 s between the two sentences
        if event is not None:
            events.append(event)
    events.append(vad.flush())
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ended) == 1 and ended[0].silence_ms == 0  # one turn over both, ended by the stream
    vad = VoiceActivityDetector(VADConfig(end_silence_ms=200))
    silences = []
    for frame in frames:
        event = vad.push(frame)
        if isinstance(event, SpeechPaused):
            vad.end_silence_ms = 200  # judged finished at the pause
        elif isinstance(event, SpeechStarted):
            vad.end_silence_ms = 3000
        elif isinstance(event, TurnEnded):
            silences.append(event.silence_ms)
    assert silences and all(s == 200 for s in silences)


def test_a_continued_turn_counts_the_speech_it_carries_toward_max_turn_ms():
    # The first stretch of JFK's speech is ~1.9 s long: with 1.5 s carried from the stretch it
    # continues, a 2 s limit cuts it (no silence ended it) well before its own end.
    samples = read_audio(JFK, 16000)
    whole = run(VoiceActivityDetector(VADConfig(max_turn_ms=2000)), samples)
    vad = VoiceActivityDetector(VADConfig(max_turn_ms=2000))
    events = []
    for frame in frames_of(samples.tobytes(), 16000):
        event = vad.push(frame)
        if isinstance(event, SpeechStarted) and not events:
            vad.carried_ms = 1500
        if event is not None:
            events.append(event)
    first = next(e for e in events if isinstance(e, TurnEnded))
    assert first.silence_ms == 0 and first.end_ms - first.start_ms <= 600
    uncarried = next(e for e in whole if isinstance(e, TurnEnded))
    assert uncarried.end_ms - uncarried.start_ms > 1500
    assert vad.carried_ms == 0  # the next turn carries nothing unless told
