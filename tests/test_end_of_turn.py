"""The end-of-turn policy and the judgement of a pause, with a model whose answer the test sets."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.asr import Transcript
from pipeline.config import TurnConfig, TurnModelConfig, VADConfig
from pipeline.end_of_turn import EndOfTurn, silence_to_end
from pipeline.errors import TurnModelError

VAD = VADConfig(end_silence_ms=200)
TURNS = TurnConfig(incomplete_silence_ms=2000, unjudged_silence_ms=500)


def policy(probability, unfinished):
    return silence_to_end(probability, unfinished, threshold=0.5, vad=VAD, turns=TURNS)


def test_a_turn_that_sounds_finished_and_may_end_there_ends_after_the_short_silence():
    assert policy(0.9, False) == 200
    assert policy(0.5, None) == 200  # no words to read: the audio decides


def test_a_turn_that_sounds_unfinished_or_stops_on_a_hanging_word_waits_long():
    assert policy(0.2, False) == 2000
    assert policy(0.99, True) == 2000  # "... followed by the", said with a falling voice


def test_a_failed_model_leaves_the_turn_to_silence_alone():
    assert policy(None, False) == 500


class SetModel:
    """Answers what the test set, or raises; counts its calls."""

    def __init__(
        self, probability: float | None, *, after_words: bool = True, at_pause: bool = False, log: list[str] | None = None
    ) -> None:
        self.probability = probability
        self.config = TurnModelConfig(after_words=after_words, at_pause=at_pause)
        self.heard: list[bytes] = []
        self.log = [] if log is None else log

    async def complete_probability(self, pcm: bytes) -> float:
        self.heard.append(pcm)
        self.log.append("model")
        if self.probability is None:
            raise TurnModelError("end-of-turn model failed: test")
        return self.probability

    def is_complete(self, probability: float) -> bool:
        return probability >= self.config.threshold


def said(text: str):
    async def transcript() -> Transcript:
        return Transcript(text, no_speech_prob=0.01, avg_logprob=-0.2, audio_ms=1000, language="en")

    return transcript


async def test_the_judgement_reads_the_words_only_when_the_turn_sounds_finished():
    end_of_turn = EndOfTurn(SetModel(0.9), vad=VAD, turns=TURNS)
    finished = await end_of_turn.judge(b"\0\0" * 1600, said("Please enter your number followed by the pound key."))
    assert (finished.end_silence_ms, finished.unfinished_text, finished.probability) == (200, False, 0.9)
    hanging = await end_of_turn.judge(b"\0\0" * 1600, said("Please enter your number followed by the"))
    assert (hanging.end_silence_ms, hanging.unfinished_text) == (2000, True)

    never = asyncio.Event()

    async def transcript_never_needed():
        await never.wait()

    # The model heard beside the transcription: an unfinished-sounding turn never waits for its words.
    beside = SetModel(0.1, after_words=False)
    unsure = await EndOfTurn(beside, vad=VAD, turns=TURNS).judge(b"\0\0", transcript_never_needed)
    assert (unsure.end_silence_ms, unsure.unfinished_text) == (2000, None)


async def test_after_words_the_model_hears_the_pause_once_its_words_are_transcribed():
    log: list[str] = []
    words_done = asyncio.Event()

    async def transcript():
        await asyncio.sleep(0.05)  # the transcription under way
        log.append("words")
        words_done.set()
        return Transcript("I would like", no_speech_prob=0.01, avg_logprob=-0.2, audio_ms=1000, language="en")

    unsure = await EndOfTurn(SetModel(0.2, log=log), vad=VAD, turns=TURNS).judge(b"\0\0", transcript)
    assert log == ["words", "model"]
    assert (unsure.end_silence_ms, unsure.words) == (2000, None)  # made, but an unfinished sound needs no reading

    log.clear()
    finished = await EndOfTurn(SetModel(0.9, log=log), vad=VAD, turns=TURNS).judge(b"\0\0", said("The pound key."))
    assert log == ["model"] and (finished.end_silence_ms, finished.words) == (200, "The pound key.")

    async def failing_transcript():
        raise RuntimeError("the transcription failed")

    with pytest.raises(RuntimeError, match="transcription failed"):
        await EndOfTurn(SetModel(0.9), vad=VAD, turns=TURNS).judge(b"\0\0", failing_transcript)


async def test_at_the_pause_the_model_hears_the_turn_beside_the_transcription_and_again_after_it():
    log: list[str] = []

    async def transcript():
        await asyncio.sleep(0.05)  # the transcription under way
        log.append("words")
        return Transcript("The pound key.", no_speech_prob=0.01, avg_logprob=-0.2, audio_ms=1000, language="en")

    # Sounds finished at once: the judgement waits only for the words.
    finished = await EndOfTurn(SetModel(0.9, at_pause=True, log=log), vad=VAD, turns=TURNS).judge(b"\0\0", transcript)
    assert log == ["model", "words"] and (finished.end_silence_ms, finished.words) == (200, "The pound key.")

    # Sounds unfinished at once: heard again once the words are in, with more silence behind it.
    log.clear()
    unsure = SetModel(0.2, at_pause=True, log=log)
    assert (await EndOfTurn(unsure, vad=VAD, turns=TURNS).judge(b"\0\0", transcript)).end_silence_ms == 2000
    assert log == ["model", "words", "model"]

    # A pause judged again (or a turn shedding the early hearing) is heard once, after its words.
    log.clear()
    await EndOfTurn(SetModel(0.2, at_pause=True, log=log), vad=VAD, turns=TURNS).judge(b"\0\0", transcript, at_once=False)
    assert log == ["words", "model"]


async def test_a_failing_model_or_transcript_still_gives_a_judgement():
    failing = await EndOfTurn(SetModel(None), vad=VAD, turns=TURNS).judge(b"\0\0", said("Hello."))
    assert (failing.end_silence_ms, failing.probability) == (500, None)

    async def no_transcript():
        return None

    unread = await EndOfTurn(SetModel(0.8), vad=VAD, turns=TURNS).judge(b"\0\0", no_transcript)
    assert (unread.end_silence_ms, unread.unfinished_text) == (200, None)


def test_silence_alone_needs_no_model_and_the_model_setting_needs_one():
    silence = EndOfTurn(None, vad=VAD, turns=TurnConfig(end_of_turn="silence", unjudged_silence_ms=500))
    assert not silence.judges and silence.silence_before_judgement() == 500
    judged = EndOfTurn(SetModel(0.5), vad=VAD, turns=TURNS)
    assert judged.judges and judged.silence_before_judgement() == 2000  # until a pause is judged
    with pytest.raises(ValueError, match="needs the end-of-turn model"):
        EndOfTurn(None, vad=VAD, turns=TurnConfig(end_of_turn="model"))


async def test_only_a_judgement_by_the_audio_alone_is_worth_asking_again():
    unsure = await EndOfTurn(SetModel(0.2), vad=VAD, turns=TURNS).judge(b"\0\0", said("I would like"))
    assert unsure.by_audio_alone  # the words were never read: more silence may change the model's mind
    hanging = await EndOfTurn(SetModel(0.9), vad=VAD, turns=TURNS).judge(b"\0\0", said("followed by the"))
    assert not hanging.by_audio_alone  # the words hang: asking again would not change them
    finished = await EndOfTurn(SetModel(0.9), vad=VAD, turns=TURNS).judge(b"\0\0", said("The pound key."))
    assert not finished.by_audio_alone

    async def no_transcript():
        return None

    unread = await EndOfTurn(SetModel(0.9), vad=VAD, turns=TURNS).judge(b"\0\0", no_transcript)
    assert not unread.by_audio_alone  # it sounded finished: there is nothing to ask again


async def test_a_judgement_cancelled_while_it_waits_for_the_words_stops_waiting_for_them():
    waiting, gone = asyncio.Event(), asyncio.Event()

    async def transcript():
        waiting.set()
        try:
            await asyncio.Event().wait()  # the words never come
        finally:
            gone.set()

    judging = asyncio.create_task(EndOfTurn(SetModel(0.9), vad=VAD, turns=TURNS).judge(b"\0\0", transcript))
    await waiting.wait()
    judging.cancel()  # the caller went on
    with pytest.raises(asyncio.CancelledError):
        await judging
    async with asyncio.timeout(10):  # a wait left behind would never end: fail instead of hanging
        await gone.wait()  # the wait for the words was cancelled with the judgement


async def test_the_model_hears_the_turn_as_it_is_when_it_runs_after_the_words():
    grown = bytearray(b"\1\0" * 1600)  # the turn at the pause

    async def transcript() -> Transcript:
        grown.extend(b"\0\0" * 3200)  # silence goes on coming in while the words are transcribed
        return Transcript("The pound key.", no_speech_prob=0.01, avg_logprob=-0.2, audio_ms=1000, language="en")

    model = SetModel(0.9)
    finished = await EndOfTurn(model, vad=VAD, turns=TURNS).judge(lambda: bytes(grown), transcript)
    assert finished.end_silence_ms == 200
    assert model.heard == [bytes(grown)] and len(model.heard[0]) == 2 * 4800


async def test_shedding_the_model_a_pause_whose_words_end_a_sentence_ends_on_them_alone():
    log: list[str] = []

    def transcript(text: str):
        async def words() -> Transcript:
            log.append("words")
            return Transcript(text, no_speech_prob=0.01, avg_logprob=-0.2, audio_ms=1000, language="en")

        return words

    end_of_turn = EndOfTurn(SetModel(0.1, at_pause=True, log=log), vad=VAD, turns=TURNS)
    # The model would call it unfinished; it is never asked.
    ended = await end_of_turn.judge(b"\0\0", transcript("I need a new flight."), by_words=True)
    assert log == ["words"]
    assert (ended.end_silence_ms, ended.probability, ended.words, ended.unfinished_text) == (
        200, None, "I need a new flight.", False,
    )
    assert ended.by_words_alone and not ended.by_audio_alone

    # Words that leave the turn in doubt: the model hears it, after them, as without the rung.
    log.clear()
    doubtful = await end_of_turn.judge(b"\0\0", transcript("I need a new"), by_words=True)
    assert log == ["words", "model"]
    assert (doubtful.end_silence_ms, doubtful.probability) == (2000, 0.1)
    assert doubtful.by_audio_alone and not doubtful.by_words_alone  # asked again with more silence

    # Words that end a sentence but the model is not asked: a failed model changes nothing.
    unjudged = await EndOfTurn(SetModel(None), vad=VAD, turns=TURNS).judge(
        b"\0\0", transcript("Who should I talk to?"), by_words=True
    )
    assert (unjudged.end_silence_ms, unjudged.by_words_alone) == (200, True)
