import asyncio
import threading

import pytest

from media.audio_file import read_audio
from pipeline.asr import Transcript
from pipeline.errors import ASRBusy, TranscriptionGivenUp
from pipeline.inference import Priority
from pipeline.partials import PartialTranscripts
from tests.speech import JFK, JFK_TEXT, wer

pytestmark = pytest.mark.slow


def spawn(work, name):
    return asyncio.create_task(work, name=name)


def hold_first_before_encoder(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold the next transcription in its thread just before Whisper's encoder (where a given-up one
    stops): `began` is set once it is held, and it goes on when `release` is set."""
    import faster_whisper.transcribe as fw_transcribe

    began, release = threading.Event(), threading.Event()
    pad_or_trim = fw_transcribe.pad_or_trim

    def held(*args, **kwargs):
        if not began.is_set():
            began.set()
            release.wait(30)
        return pad_or_trim(*args, **kwargs)

    monkeypatch.setattr(fw_transcribe, "pad_or_trim", held)
    return began, release


async def test_partials_grow_with_the_utterance_and_the_last_one_is_the_final(transcriber):
    samples = read_audio(JFK).tobytes()
    received = 0

    def utterance() -> bytes:
        # Each look, the user has said 1.5 s more.
        nonlocal received
        received = min(len(samples), received + 16000 * 2 * 3 // 2)
        return samples[:received]

    partials = PartialTranscripts(transcriber, utterance, spawn=spawn, interval_s=0.05)
    seen = []
    done = asyncio.Event()

    async def on_partial(transcript):
        seen.append(transcript)
        if received == len(samples):
            done.set()

    runner = asyncio.create_task(partials.run(on_partial))
    await asyncio.wait_for(done.wait(), 60)
    runner.cancel()
    lengths = [p.audio_ms for p in seen]
    assert lengths == sorted(lengths) and len(seen) >= 3
    assert len(seen[0].text.split()) < len(seen[-1].text.split())
    final = await partials.covering(len(samples))
    assert final is seen[-1] and wer(JFK_TEXT, final.text) <= 0.10
    assert await partials.covering(len(samples) + 1) is None


async def test_a_pause_transcribes_at_once_and_an_unfinished_one_is_awaited(transcriber):
    samples = read_audio(JFK).tobytes()
    partials = PartialTranscripts(transcriber, lambda: samples, spawn=spawn, interval_s=3600)
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))
    partials.now()
    await asyncio.sleep(0.05)  # the transcription has started, and is not done
    runner.cancel()  # the turn ends; the transcription under way goes on
    final = await partials.covering(len(samples) - 1000)
    assert final is not None and wer(JFK_TEXT, final.text) <= 0.10


async def test_upto_waits_for_the_pause_transcript_to_begin_and_gives_up_when_partials_stop(transcriber):
    samples = read_audio(JFK).tobytes()
    partials = PartialTranscripts(transcriber, lambda: samples, spawn=spawn, interval_s=3600)
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))
    waiting = asyncio.create_task(partials.upto(len(samples)))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nothing asked for a transcript yet
    partials.now()
    final = await asyncio.wait_for(waiting, 60)
    assert final is not None and wer(JFK_TEXT, final.text) <= 0.10
    late = asyncio.create_task(partials.upto(len(samples) + 1))  # more than was ever said
    await asyncio.sleep(0.05)
    runner.cancel()
    assert await asyncio.wait_for(late, 5) is None


async def test_the_transcript_begun_at_a_lull_serves_the_pause_and_more_speech_needs_another(transcriber):
    samples = read_audio(JFK).tobytes()
    speech, silence = samples[: 16000 * 2 * 3], bytes(16000 * 2 // 25)  # 3 s said, then 40 ms of silence
    said = [speech + silence]
    started = []

    class Counting:
        async def transcribe(self, audio, *, priority=Priority.WAITED_FOR):
            started.append(len(audio))
            return await transcriber.transcribe(audio)

    partials = PartialTranscripts(Counting(), lambda: said[0], spawn=spawn, interval_s=3600)
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))
    partials.now()  # the lull
    await asyncio.sleep(0.02)  # a frame later
    said[0] += silence  # the silence goes on to the pause
    partials.now(unless_covered=len(speech))  # the pause: the lull's transcript covers every word
    final = await asyncio.wait_for(partials.upto(len(speech)), 60)
    assert started == [len(speech) + len(silence)]
    assert final is not None and wer(" ".join(final.text.split()[:6]), " ".join(JFK_TEXT.split()[:6])) <= 0.2
    said[0] = samples  # the caller went on: the next pause needs the words after the lull
    partials.now(unless_covered=len(samples))
    later = await asyncio.wait_for(partials.upto(len(samples)), 60)
    runner.cancel()
    assert started == [len(speech) + len(silence), len(samples)]
    assert later is not None and wer(JFK_TEXT, later.text) <= 0.10


async def test_periodic_partials_the_asr_turns_away_do_not_hold_up_the_pauses_transcript(transcriber):
    # The ASR is busy with other calls' final transcripts: every periodic partial is turned away
    # (idle-only), and the one the pause asks for, made ahead of the turn's end, serves the turn.
    samples = read_audio(JFK).tobytes()
    asked = []

    class BusyForBestEffort:
        async def transcribe(self, audio, *, priority=Priority.WAITED_FOR):
            asked.append(getattr(priority, "priority", priority))  # an Urgency, or a Priority
            if asked[-1] is Priority.IDLE:
                raise ASRBusy("asr busy: no thread free for best-effort work")
            return await transcriber.transcribe(audio)

    partials = PartialTranscripts(BusyForBestEffort(), lambda: samples, spawn=spawn, interval_s=0.01)
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))
    waiting = asyncio.create_task(partials.upto(len(samples)))
    async with asyncio.timeout(60):
        while Priority.IDLE not in asked:  # a periodic one was tried and turned away
            await asyncio.sleep(0.01)
    assert not waiting.done()  # a turned-away partial is not a transcript, nor the lack of one
    partials.now(unless_covered=len(samples))  # the pause
    final = await asyncio.wait_for(waiting, 60)
    runner.cancel()
    assert final is not None and wer(JFK_TEXT, final.text) <= 0.10
    assert asked.count(Priority.AHEAD) == 1 and Priority.WAITED_FOR not in asked


@pytest.mark.parametrize("give_way", [True, False])
async def test_a_periodic_partial_under_way_gives_way_to_the_one_a_pause_asks_for(transcriber, give_way, monkeypatch):
    samples = read_audio(JFK).tobytes()
    said = [samples[: 16000 * 2 * 3]]  # 3 s so far
    # The periodic partial is held in its thread just before Whisper's encoder until the pause has come.
    began, release = hold_first_before_encoder(monkeypatch)
    ended: list[str] = []
    shown: list[float] = []

    class Noting:
        async def transcribe(self, audio, *, priority=Priority.WAITED_FOR):
            kind = "periodic" if priority.priority is Priority.IDLE else "pause"
            try:
                transcript = await transcriber.transcribe(audio, priority=priority)
            except TranscriptionGivenUp:
                ended.append(f"{kind} given up")
                raise
            ended.append(kind)
            return transcript

    async def on_partial(transcript):
        shown.append(transcript.audio_ms)

    partials = PartialTranscripts(Noting(), lambda: said[0], spawn=spawn, interval_s=0.01, give_way=give_way)
    runner = asyncio.create_task(partials.run(on_partial))
    async with asyncio.timeout(10):
        while not began.is_set():
            await asyncio.sleep(0.01)
    said[0] = samples  # the caller said the rest, then paused
    partials.now(unless_covered=len(samples))
    release.set()
    final = await asyncio.wait_for(partials.upto(len(samples)), 60)
    runner.cancel()
    assert final is not None and wer(JFK_TEXT, final.text) <= 0.10
    if give_way:
        assert ended == ["periodic given up", "pause"]
        assert 3000.0 not in shown  # the periodic one's words never came
    else:
        assert ended == ["periodic", "pause"]


class Timed:
    """A stand-in ASR whose periodic transcriptions take `periodic_s`; it notes every one asked for."""

    def __init__(self, periodic_s: float) -> None:
        self.periodic_s = periodic_s
        self.asked: list[tuple[Priority, int]] = []

    async def transcribe(self, audio, *, priority=Priority.WAITED_FOR):
        self.asked.append((priority.priority, len(audio)))
        if priority.priority is Priority.IDLE:
            await asyncio.sleep(self.periodic_s)
        return Transcript(text="words", no_speech_prob=0.0, avg_logprob=0.0, audio_ms=len(audio) / 32, language="en")


@pytest.mark.parametrize("max_periodic_ms, more_periodic", [(20, False), (500, True)])
async def test_a_periodic_partial_slower_than_allowed_ends_the_turns_periodic_partials(max_periodic_ms, more_periodic):
    asr = Timed(periodic_s=0.06)
    said = [bytes(16000)]  # 0.5 s, growing 0.2 s each time it is read

    def utterance() -> bytes:
        said[0] += bytes(6400)
        return said[0]

    partials = PartialTranscripts(asr, utterance, spawn=spawn, interval_s=0.01, max_periodic_ms=max_periodic_ms)
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))

    def periodic() -> list[int]:
        return [n for p, n in asr.asked if p is Priority.IDLE]

    if more_periodic:
        async with asyncio.timeout(10):
            while len(periodic()) < 3:
                await asyncio.sleep(0.01)
    else:
        await asyncio.sleep(0.5)  # time for about six at 60 ms each, had they gone on
        assert len(periodic()) == 1, periodic()
    assert partials.periodic is more_periodic  # the turn loop then skips the transcripts at lulls too
    partials.now()  # a pause still gets its transcript
    assert await asyncio.wait_for(partials.upto(len(said[0])), 5) is not None
    runner.cancel()
    assert asr.asked[-1][0] is Priority.AHEAD


@pytest.mark.parametrize("periodic", [False, True])
async def test_a_pause_talked_through_gives_up_its_words_unless_partials_are_shown(transcriber, periodic, monkeypatch):
    samples = read_audio(JFK).tobytes()
    said = [samples[: 16000 * 2 * 3]]  # 3 s, then a pause
    # The pause's transcription is held in its thread just before Whisper's encoder until the caller has gone on.
    began, release = hold_first_before_encoder(monkeypatch)
    ended: list[tuple[int, str]] = []
    shown: list[float] = []

    class Noting:
        async def transcribe(self, audio, *, priority=Priority.WAITED_FOR):
            try:
                transcript = await transcriber.transcribe(audio, priority=priority)
            except TranscriptionGivenUp:
                ended.append((len(audio), "given up"))
                raise
            ended.append((len(audio), "done"))
            return transcript

    async def on_partial(transcript):
        shown.append(transcript.audio_ms)

    # Shed under load: no periodic partials (interval_s None); else one an hour, never due here.
    partials = PartialTranscripts(Noting(), lambda: said[0], spawn=spawn, interval_s=3600 if periodic else None)
    runner = asyncio.create_task(partials.run(on_partial))
    first = len(said[0])
    partials.now(unless_covered=first)  # the pause
    async with asyncio.timeout(10):
        while not began.is_set():
            await asyncio.sleep(0.01)
    partials.talked_through()  # the caller went on ...
    release.set()
    said[0] = samples  # ... said the rest, and paused again
    partials.now(unless_covered=len(samples))
    final = await asyncio.wait_for(partials.upto(len(samples)), 60)
    async with asyncio.timeout(60):
        while len(ended) < 2:
            await asyncio.sleep(0.01)
    runner.cancel()
    assert final is not None and wer(JFK_TEXT, final.text) <= 0.10
    assert sorted(ended) == [(first, "done" if periodic else "given up"), (len(samples), "done")]
    # Shown while the turn runs only when partials are: given up, its words never came.
    assert (first / 32 in shown) is periodic


async def test_no_periodic_partial_while_the_caller_is_silent():
    # After a pause the utterance grows by silence only: a periodic partial would transcribe the
    # same words again, on the CPU the reply's synthesis needs. New words bring them back.
    asr = Timed(periodic_s=0.0)
    said, spoken = [bytes(16000)], [16000]  # 0.5 s of words, then silence growing 0.2 s a read

    def utterance() -> bytes:
        said[0] += bytes(6400)
        return said[0]

    partials = PartialTranscripts(asr, utterance, spawn=spawn, interval_s=0.01, spoken=lambda: spoken[0])
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))

    def periodic() -> list[int]:
        return [n for p, n in asr.asked if p is Priority.IDLE]

    async with asyncio.timeout(10):
        while not periodic():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # about thirty intervals of silence
    assert len(periodic()) == 1, periodic()
    spoken[0] = len(said[0])  # the caller goes on
    async with asyncio.timeout(10):
        while len(periodic()) < 2:
            await asyncio.sleep(0.01)
    assert periodic()[1] >= spoken[0]
    partials.now()  # a pause still gets its transcript, words or not
    assert await asyncio.wait_for(partials.upto(len(said[0])), 5) is not None
    runner.cancel()


async def test_a_transcription_that_came_to_nothing_does_not_hide_a_longer_one_under_way():
    """A shorter transcription turned away (None) and not yet published, a longer one under way:
    the longer one is waited for. Returning None for the shorter one sent `upto` round again at
    once, forever, without yielding: one core spinning and every call on the server stuck."""
    loop = asyncio.get_running_loop()
    partials = PartialTranscripts(object(), lambda: b"", spawn=spawn, interval_s=None)
    said = Transcript("hello there", 0.01, -0.2, 125.0, "en")
    nothing = loop.create_future()
    nothing.set_result(None)
    for ask in (partials.covering, partials.upto):
        longer = loop.create_future()
        partials._running = {1000: nothing, 2000: longer}
        loop.call_later(0.05, longer.set_result, said)
        assert await asyncio.wait_for(ask(1000), 5) is said, ask
