"""The turn loop's turn-taking with stand-ins for ASR, LLM, TTS and Redis: fast, no models, no network.

The caller's audio is real speech (its voiced frames are what the VAD hears); everything the
loop asks of a model answers at once, so these tests are about who has the floor, not about
what is said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from media.audio_file import read_audio
from media.frames import AudioFrame, frames_of
from media.tracks import OutboundAudioTrack
from pipeline.asr import Transcript
from pipeline.config import TurnConfig, VADConfig
from pipeline.dialog_store import DialogStore, Turn
from pipeline.events import ReplyDelta, ReplyDone, TranscriptEvent
from pipeline.inference import Priority
from pipeline.turns import TurnLoop

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "audio" / "jfk.flac"
FRAME_BYTES = 640  # 20 ms at 16 kHz


@dataclass(frozen=True)
class _ASRConfig:
    partial_interval_ms: int = 300
    partials_give_way: bool = True
    pauses_give_way: bool = True
    partial_max_ms: int = 0  # the slow stand-in takes 400 ms: its periodic partials go on regardless


class _Transcriber:
    config = _ASRConfig()

    async def transcribe(self, audio: bytes, *, priority: Priority = Priority.WAITED_FOR) -> Transcript:
        return Transcript("and so my fellow americans", 0.0, -0.1, len(audio) / 32, "en")


class _SlowTranscriber(_Transcriber):
    """Takes a while, and runs on when its caller is cancelled, as a transcription in a thread does."""

    def __init__(self) -> None:
        self.heard: list[bytes] = []
        self._running: set[asyncio.Task[Transcript]] = set()

    async def transcribe(self, audio: bytes, *, priority: Priority = Priority.WAITED_FOR) -> Transcript:
        self.heard.append(bytes(audio))
        work = asyncio.ensure_future(self._slowly(audio))
        self._running.add(work)
        work.add_done_callback(self._running.discard)
        return await asyncio.shield(work)

    async def _slowly(self, audio: bytes) -> Transcript:
        await asyncio.sleep(0.4)
        return await super().transcribe(audio)


class _LLM:
    """Answers a typed message at length (so it is still speaking when the caller's turn ends)."""

    def with_system_prompt(self, messages):
        return list(messages)

    def __init__(self) -> None:
        self.asked: list[tuple[str, list]] = []  # ("prime" or "chat", messages), in order

    async def prime(self, messages, *, dialog_id):
        self.asked.append(("prime", list(messages)))
        return True

    async def stream_chat(
        self, messages, *, dialog_id=None, on_usage=None, max_tokens=None, on_capped=None
    ) -> AsyncIterator[str]:
        self.asked.append(("chat", list(messages)))
        said = messages[-1]["content"]
        answer = "One. Two. Three. Four. Five. Six." if said.startswith("typed") else "Spoken answer."
        for word in answer.split(" "):
            await asyncio.sleep(0)
            yield word + " "


class _Synthesizer:
    sample_rate = 16000

    async def stream(self, text: str, *, urgency=None) -> AsyncIterator[bytes]:
        await asyncio.sleep(0.1)  # synthesis takes a while: the caller's frames go on meanwhile
        yield bytes(16000)  # half a second of silence a sentence


class _Store(DialogStore):
    """The dialog in memory."""

    def __init__(self) -> None:
        self.ttl_s = 900
        self._turns: dict[str, Turn] = {}

    async def put(self, dialog_id, turn, *, fence=None):
        inserted = turn.turn_id not in self._turns
        self._turns[turn.turn_id] = turn
        return turn, inserted

    async def turns(self, dialog_id):
        return [t for t in self._turns.values() if t.text]


async def _until(condition, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def _speech_frames() -> list[AudioFrame]:
    return frames_of(read_audio(SPEECH, 16000).tobytes(), 16000)


@contextlib.asynccontextmanager
async def _call(
    events: list,
    *,
    config: TurnConfig = TurnConfig(end_of_turn="silence"),
    llm: _LLM | None = None,
    transcriber: _Transcriber | None = None,
    vad_config: VADConfig = VADConfig(),
    store: _Store | None = None,
):
    """A running turn loop; frames put in the queue reach it in real time, silence in between."""

    async def emit(event) -> None:
        events.append(event)

    loop = TurnLoop(
        dialog_id="d", store=store or _Store(), llm=llm or _LLM(), transcriber=transcriber or _Transcriber(),
        synthesizer=_Synthesizer(), emit=emit, config=config, vad_config=vad_config,
    )
    said: asyncio.Queue[AudioFrame] = asyncio.Queue()

    async def microphone():
        pts = 0
        while True:
            frame = said.get_nowait() if not said.empty() else AudioFrame(bytes(FRAME_BYTES), 16000)
            yield AudioFrame(frame.pcm, 16000, pts)
            pts += len(frame.pcm) // 2
            await asyncio.sleep(0.02)

    track = OutboundAudioTrack()

    async def listen() -> None:
        while True:
            await track.recv()

    running = asyncio.create_task(loop.run())
    listener = asyncio.create_task(listen())
    try:
        await _until(lambda: loop._tasks is not None)
        loop.attach_audio(microphone(), track)
        yield said, loop
    finally:
        for task in (running, listener):
            task.cancel()
        await asyncio.gather(running, listener, return_exceptions=True)


def _done(events: list) -> list[ReplyDone]:
    return [e for e in events if isinstance(e, ReplyDone)]


async def test_a_reply_starting_just_after_a_voiced_frame_following_the_last_one_is_heard():
    # A voiced frame after a reply has ended must not pause the idle speaker: the next reply,
    # begun before the hold would have been released, was never heard.
    events: list = []
    voiced = [f for f in _speech_frames()[16:112]]
    async with _call(events) as (said, loop):
        assert loop.submit_text("typed: first")
        await _until(lambda: len(_done(events)) == 1)
        for frame in voiced[:3]:  # a cough: too short to be a turn
            said.put_nowait(frame)
        await _until(said.empty)
        assert loop.submit_text("typed: second")
        await _until(lambda: len(_done(events)) == 2)
    assert [d.interrupted for d in _done(events)] == [False, False]
    assert _done(events)[1].text == "One. Two. Three. Four. Five. Six."


async def test_a_typed_reply_is_stopped_before_the_spoken_turn_it_overlapped_is_answered():
    # One reply at a time: a message typed while the caller talks is answered, and stopped
    # when their spoken turn ends, before that turn's reply begins.
    events: list = []
    frames = _speech_frames()[:112]  # the first stretch of speech, then the microphone's silence
    async with _call(events) as (said, loop):
        for frame in frames:
            said.put_nowait(frame)
        await _until(lambda: said.qsize() < len(frames) - 40)  # the caller is well into the turn
        assert loop.submit_text("typed: while talking")
        await _until(lambda: any(isinstance(e, ReplyDelta) for e in events))
        await _until(lambda: len(_done(events)) == 2)
    typed, spoken = _done(events)
    assert typed.interrupted and not spoken.interrupted
    assert spoken.text == "Spoken answer."
    # The typed reply was over before a word of the spoken turn's reply went out.
    first_spoken = next(i for i, e in enumerate(events) if isinstance(e, ReplyDelta) and e.turn_id == spoken.turn_id)
    assert events.index(typed) < first_spoken


async def test_barge_in_stops_the_only_reply_and_the_next_turn_is_answered():
    events: list = []
    speech = _speech_frames()
    async with _call(events) as (said, loop):
        assert loop.submit_text("typed: long answer")
        await _until(lambda: any(isinstance(e, ReplyDelta) for e in events))
        for frame in speech[16:112]:
            said.put_nowait(frame)
        await _until(lambda: len(_done(events)) == 2)
    barged, answered = _done(events)
    assert barged.interrupted and not answered.interrupted
    assert answered.text == "Spoken answer."


@pytest.mark.parametrize("prime", [True, False])
async def test_the_llm_reads_the_dialog_as_the_turn_begins_and_the_words_so_far_at_each_partial_only_when_asked(
    prime,
):
    events: list = []
    llm = _LLM()
    config = TurnConfig(end_of_turn="silence", prime_llm=prime)
    async with _call(events, config=config, llm=llm) as (said, _):
        for frame in _speech_frames()[:150]:  # 3 s of speech: partials every 300 ms
            said.put_nowait(frame)
        await _until(lambda: _done(events))
    kinds = [kind for kind, _ in llm.asked]
    if not prime:
        assert kinds == ["chat"]
        return
    assert kinds[0] == "prime" and "chat" in kinds
    primes = [messages for kind, messages in llm.asked if kind == "prime"]
    assert primes[0][-1] == {"role": "user", "content": ""}  # as the turn began, before any word
    assert primes[-1][-1] == {"role": "user", "content": "and so my fellow americans"}
    chat = llm.asked[kinds.index("chat")][1]
    assert chat[:-1] == primes[0][:-1] == primes[-1][:-1]  # the same prompt up to the caller's words


async def test_a_turn_cut_for_its_length_while_the_caller_talks_on_is_transcribed_once_and_kept():
    # The caller talks past max_turn_ms: each stretch is ended there, its reply talked over at
    # once; its transcription, already under way, finishes and stands as the caller's turn
    # rather than being begun again (a 25 s one costs the ASR seconds), and the last is answered.
    events: list = []
    transcriber, store = _SlowTranscriber(), _Store()
    vad = VADConfig(max_turn_ms=1000, end_silence_ms=1500)
    config = TurnConfig(end_of_turn="silence", speculative=False)
    async with _call(events, config=config, transcriber=transcriber, vad_config=vad, store=store) as (said, _):
        for frame in _speech_frames()[16:260]:  # ~5 s of JFK, none of his pauses 1.5 s long
            said.put_nowait(frame)
        await _until(lambda: _done(events))
    finals = [e for e in events if isinstance(e, TranscriptEvent) and e.final]
    assert len(finals) >= 2, finals  # cut at least once
    # No audio transcribed twice (the lengths of what was, in order).
    assert len(set(transcriber.heard)) == len(transcriber.heard), [len(a) for a in transcriber.heard]
    stored = [t.turn_id for t in await store.turns("d") if t.role == "user"]
    assert sorted(stored) == sorted({f.turn_id for f in finals})
    (answered,) = _done(events)
    assert not answered.interrupted and answered.turn_id == finals[-1].turn_id


class _ShortIsNoise(_Transcriber):
    """Hears words only in audio over a second long: a short burst is a cough."""

    async def transcribe(self, audio: bytes, *, priority: Priority = Priority.WAITED_FOR) -> Transcript:
        if len(audio) <= 32000:
            return Transcript("", 0.9, -1.0, len(audio) / 32, "en")
        return await super().transcribe(audio)


class _RatedSilence(_Transcriber):
    """Rates every utterance more likely silence than speech (0.87), as Whisper may rate long real
    speech: a short one it hears as a stock phrase, a longer one as the words it says."""

    async def transcribe(self, audio: bytes, *, priority: Priority = Priority.WAITED_FOR) -> Transcript:
        text = "Thank you." if len(audio) <= 32000 else "and so my fellow americans ask not"
        return Transcript(text, 0.87, -0.5, len(audio) / 32, "en")


async def test_words_rated_likely_silence_are_a_turn_unless_they_are_few(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.turns")
    events: list = []
    config = TurnConfig(end_of_turn="silence", speculative=False)
    async with _call(events, transcriber=_RatedSilence(), config=config) as (said, _):
        for frame in _speech_frames()[40:52]:  # 240 ms voiced, heard as "Thank you.": no turn
            said.put_nowait(frame)
        await _until(lambda: any(r.getMessage().startswith("no turn") for r in caplog.records))
        for frame in _speech_frames()[16:112]:  # two seconds, heard as seven words: a turn
            said.put_nowait(frame)
        await _until(lambda: _done(events))
    finals = [e.text for e in events if isinstance(e, TranscriptEvent) and e.final]
    assert finals == ["and so my fellow americans ask not"], finals
    assert len(_done(events)) == 1


class _SlowFirstAnswer(_LLM):
    """Thinks for seconds before its first answer, at once after."""

    async def stream_chat(
        self, messages, *, dialog_id=None, on_usage=None, max_tokens=None, on_capped=None
    ) -> AsyncIterator[str]:
        if not any(kind == "chat" for kind, _ in self.asked):
            self.asked.append(("chat", list(messages)))
            await asyncio.sleep(5)
        async for word in super().stream_chat(messages, dialog_id=dialog_id, on_usage=on_usage, max_tokens=max_tokens):
            yield word


async def test_a_cough_that_stops_a_reply_before_it_is_heard_does_not_swallow_it():
    # The caller's turn ends; while the reply is still being thought (nothing heard yet), past the
    # window in which more speech would continue the turn, they cough. The cough stops the reply
    # as a new turn would, and is no speech: the turn it stopped is answered after all.
    events: list = []
    llm = _SlowFirstAnswer()
    config = TurnConfig(end_of_turn="silence", speculative=False)  # no draft asks the LLM at a pause
    async with _call(events, llm=llm, transcriber=_ShortIsNoise(), config=config) as (said, _):
        for frame in _speech_frames()[16:112]:
            said.put_nowait(frame)
        # The turn ended (its final transcript is out); its reply thinks.
        await _until(
            lambda: any(kind == "chat" for kind, _ in llm.asked)
            and any(isinstance(e, TranscriptEvent) and e.final for e in events)
        )
        await asyncio.sleep(2.0)  # past [turns] continuation_window_ms (1.5 s)
        for frame in _speech_frames()[40:52]:  # 240 ms voiced: a turn begins, and is no speech
            said.put_nowait(frame)
        await _until(lambda: any(not d.interrupted for d in _done(events)), timeout=15)
    (spoken,) = {e.turn_id for e in events if isinstance(e, TranscriptEvent) and e.final}
    assert len(_done(events)) == 2, [e for e in events if type(e).__name__ != "ReplyDelta"]
    stopped, answered = _done(events)
    assert stopped.interrupted and stopped.turn_id == spoken and stopped.text == ""
    assert answered.turn_id == spoken and answered.text == "Spoken answer."
