import asyncio
import dataclasses
import threading

import pytest

from media.audio_file import read_audio, write_wav
from media.frames import level_dbfs
from pipeline.asr import SAMPLE_RATE
from pipeline.errors import TTSBusy
from pipeline.inference import InferenceLane, LaneConfig, Priority, Urgency
from pipeline.tts import Synthesizer
from tests.speech import wer

pytestmark = pytest.mark.slow

SENTENCES = [
    "The weather today is sunny and warm.",
    "Please call me back after lunch.",
    "My favorite color is green.",
]


async def test_speech_streams_one_chunk_per_sentence(synthesizer):
    chunks = [chunk async for chunk in synthesizer.stream(" ".join(SENTENCES))]
    assert synthesizer.sample_rate == 22050
    assert len(chunks) == 3
    for chunk in chunks:
        seconds = len(chunk) / 2 / synthesizer.sample_rate
        assert 0.8 < seconds < 6
        assert level_dbfs(chunk) > -35


async def test_say_then_transcribe_round_trips_three_sentences(synthesizer, transcriber, tmp_path):
    # The fixture's voice has no sampling noise: with it, Whisper tiny once heard "color is green"
    # as "color screen".
    for i, sentence in enumerate(SENTENCES):
        path = tmp_path / f"sentence-{i}.wav"
        write_wav(path, await synthesizer.synthesize(sentence), synthesizer.sample_rate)
        # Read back through PyAV, which resamples 22.05 kHz to the ASR's 16 kHz.
        heard = (await transcriber.transcribe(read_audio(path, SAMPLE_RATE))).text
        assert wer(sentence, heard) <= 0.10, (sentence, heard)


async def test_the_voice_runs_with_our_threads_and_they_do_not_spin(settings, transcriber, tmp_path):
    synthesizer = Synthesizer(dataclasses.replace(settings.tts.without_noise(), threads=1))
    options = synthesizer._voice.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    path = tmp_path / "sentence.wav"
    write_wav(path, await synthesizer.synthesize(SENTENCES[1]), synthesizer.sample_rate)
    heard = (await transcriber.transcribe(read_audio(path, SAMPLE_RATE))).text
    assert wer(SENTENCES[1], heard) <= 0.10, heard


async def test_each_sentence_starts_with_its_first_sound_not_the_voice_s_silence(settings, synthesizer):
    # The fixture keeps the configured lead-in (5 ms); the same voice without the cut shows what was cut.
    assert synthesizer.config.lead_in_ms == 5
    uncut = Synthesizer(dataclasses.replace(synthesizer.config, lead_in_ms=-1))
    for sentence in SENTENCES:
        cut, whole = await synthesizer.synthesize(sentence), await uncut.synthesize(sentence)
        removed_ms = 1000 * (len(whole) - len(cut)) / 2 / synthesizer.sample_rate
        assert 15 <= removed_ms <= 80, (sentence, removed_ms)
        assert whole.endswith(cut)  # only silence went: not one sample of the voice changed
        assert level_dbfs(whole[: len(whole) - len(cut)]) < -60
        five_ms = synthesizer.sample_rate // 200 * 2
        assert level_dbfs(cut[:five_ms]) < -60 < level_dbfs(cut[five_ms : 4 * five_ms])


async def test_a_sentence_asked_ahead_of_need_that_waits_past_the_deadline_is_asked_again(synthesizer):
    """The lane turns away a job still waiting at its deadline; one asked ahead of need is asked
    again as waited for (it never ran), so the reply loses no sentence."""
    lane = InferenceLane("tts", LaneConfig(threads=1, max_waiting=2, max_wait_ms=200), busy=TTSBusy)
    own_lane, synthesizer.lane = synthesizer.lane, lane
    try:
        free = threading.Event()
        blocker = asyncio.create_task(lane.run(free.wait))  # the lane's thread is taken until `free`
        ahead = asyncio.create_task(_chunks(synthesizer.stream(SENTENCES[0], urgency=lambda: Urgency(Priority.AHEAD))))
        async with asyncio.timeout(10):
            while lane.refusals("deadline") < 1:  # turned away once ...
                await asyncio.sleep(0.02)
        free.set()
        chunks = await ahead
        await blocker
        assert len(chunks) == 1 and level_dbfs(chunks[0]) > -35  # ... and still spoken
        # Waited for, the same wait is a failure: that reply's sentence is reported lost.
        free.clear()
        blocker = asyncio.create_task(lane.run(free.wait))
        with pytest.raises(TTSBusy):
            await _chunks(synthesizer.stream(SENTENCES[0]))
        free.set()
        await blocker
    finally:
        synthesizer.lane = own_lane


async def _chunks(stream) -> list[bytes]:
    return [chunk async for chunk in stream]
