"""The turn loop on its own, fed frame by frame: the real ASR, TTS, LLM (through a recording proxy) and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from media.audio_file import read_audio, write_wav
from media.frames import frames_of
from media.tracks import OutboundAudioTrack
from pipeline.dialog_store import DialogStore, Turn
from pipeline.events import ReplyDelta, ReplyDone, TranscriptEvent, TurnMetrics
from pipeline.llm_pool import LLMPool
from pipeline.sentences import ends_sentence
from pipeline.shedding import SheddingConfig, plan_for
from pipeline.turns import TurnLoop
from tests.conftest import stored_turns
from tests.speech import STEREO_TEXT, stereo_sentence, wer

pytestmark = pytest.mark.slow


SECOND = "Please tell me how far away it is."


async def _spoken(synthesizer, text: str, folder) -> np.ndarray:
    """`text` in piper's voice, 16 kHz."""
    path = folder / "spoken.wav"
    write_wav(path, await synthesizer.synthesize(text), synthesizer.sample_rate)
    return read_audio(path, 16000)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), np.int16)


async def _until(condition, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _turn_loop(
    settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, events, planner=None,
    store_class=DialogStore,
):
    """A running turn loop, and the queue its audio comes from; it speaks into a track read in real time."""

    async def emit(event) -> None:
        events.append(event)

    redis = aioredis.from_url(shared_redis.url)
    async with LLMPool(dataclasses.replace(llm_config, max_tokens=48), settings.llm_pool, base_url=proxy.base_url) as llm:
        loop = TurnLoop(
            dialog_id=uuid.uuid4().hex, store=store_class(redis), llm=llm, transcriber=transcriber,
            synthesizer=synthesizer, emit=emit, vad_config=settings.vad, config=settings.turns, turn_model=turn_model,
            planner=planner,
        )
        frames: asyncio.Queue = asyncio.Queue()

        async def mic():
            # In real time, as a peer sends them: the end of a turn is judged while its silence goes on.
            while (frame := await frames.get()) is not None:
                yield frame
                await asyncio.sleep(frame.duration_ms / 1000)

        track = OutboundAudioTrack()

        async def listen() -> None:
            while True:
                await track.recv()

        running = asyncio.create_task(loop.run())
        listener = asyncio.create_task(listen())
        try:
            while True:
                try:
                    loop.attach_audio(mic(), track)
                    break
                except RuntimeError:  # run() has not got going yet
                    await asyncio.sleep(0.01)
            yield frames, loop
        finally:
            for task in (running, listener):
                task.cancel()
            await asyncio.gather(running, listener, return_exceptions=True)
            await redis.aclose()


async def test_a_draft_that_reached_the_llm_is_dropped_without_a_trace_when_the_user_goes_on(
    settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, tmp_path
):
    # Two sentences with no pause of their own (the long stereo sentence's comma pause may itself be
    # judged the end of the turn), so the only pause is the one between them.
    first = stereo_sentence(1)
    second = await _spoken(synthesizer, SECOND, tmp_path)
    # One stream of frames, so their timestamps run on: 300 ms lead, a sentence, a 160 ms pause
    # (100 ms drafts a reply; the shortest end of turn is 200 ms), then, once the draft has asked
    # the LLM, the second sentence and the end of the turn.
    head = np.concatenate([_silence(0.3), first, _silence(0.16)])
    frames = frames_of(np.concatenate([head, second, _silence(2.5)]).tobytes(), 16000)
    split = head.size // 320
    events: list = []
    asked_before = len(proxy.requests)
    async with _turn_loop(settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, events) as (mic, _):
        for frame in frames[:split]:
            mic.put_nowait(frame)
        await _until(lambda: len(proxy.requests) > asked_before)  # the draft is at the LLM
        drafted = proxy.requests[-1]["messages"][-1]["content"]
        assert wer(STEREO_TEXT[1], drafted) <= 0.15, drafted
        assert not [e for e in events if isinstance(e, (ReplyDelta, ReplyDone, TurnMetrics))]
        for frame in frames[split:]:
            mic.put_nowait(frame)
        await _until(lambda: any(isinstance(e, ReplyDone) for e in events))
    finals = [e for e in events if isinstance(e, TranscriptEvent) and e.final]
    assert len(finals) == 1
    assert wer(f"{STEREO_TEXT[1]} {SECOND}", finals[0].text) <= 0.15, finals[0].text
    # Only the reply to the whole turn was said: none of the dropped draft's text got out.
    (done,) = [e for e in events if isinstance(e, ReplyDone)]
    assert not done.interrupted
    assert "".join(e.text for e in events if isinstance(e, ReplyDelta)).strip().startswith(done.text)
    asked = [r["messages"][-1]["content"] for r in proxy.requests[asked_before:]]
    assert asked == [drafted, finals[0].text]
    (metrics,) = [e for e in events if isinstance(e, TurnMetrics)]
    assert metrics.stages_ms["draft_lead"] > 0  # the reply said was itself drafted at the last pause


async def test_a_turn_under_full_load_sheds_partials_drafts_and_reply_length_and_is_still_answered(
    settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, tmp_path
):
    # The same turn as above (a sentence, a pause that would draft, a second sentence), begun at
    # the replica's capacity: every rung of the ladder applies.
    ladder = SheddingConfig(
        partials_off_at=0.5, short_replies_at=0.75, drafts_off_at=1.0, early_judgements_off_at=1.0,
        audio_judgements_off_at=1.0,
    )
    plans = []

    def planner():
        plans.append(plan_for(1.0, ladder))
        return plans[-1]

    first = stereo_sentence(1)
    second = await _spoken(synthesizer, SECOND, tmp_path)
    frames = frames_of(np.concatenate([_silence(0.3), first, _silence(0.16), second, _silence(2.5)]).tobytes(), 16000)
    events: list = []
    asked_before = len(proxy.requests)
    async with _turn_loop(
        settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, events, planner
    ) as (mic, _):
        for frame in frames:
            mic.put_nowait(frame)
        await _until(lambda: any(isinstance(e, ReplyDone) for e in events))
    assert plans and all(
        p.shed == ("partials", "drafts", "long_replies", "early_judgements", "audio_judgements") for p in plans
    )
    (final,) = [e for e in events if isinstance(e, TranscriptEvent) and e.final]
    assert wer(f"{STEREO_TEXT[1]} {SECOND}", final.text) <= 0.15, final.text
    # No transcript every 400 ms over ~8 s of speech: only those its pauses asked for.
    partials = [e for e in events if isinstance(e, TranscriptEvent) and not e.final]
    assert len(partials) <= 3, [p.text for p in partials]
    # No draft at the pause: the LLM was asked once, for the whole turn, with the short cap.
    (asked,) = proxy.requests[asked_before:]
    assert asked["messages"][-1]["content"] == final.text
    assert asked["max_tokens"] == ladder.short_reply_tokens
    (done,) = [e for e in events if isinstance(e, ReplyDone)]
    assert done.text and not done.interrupted
    # The words ended a sentence: the turn ended on them, judged finished, unheard by the model.
    (metrics,) = [e for e in events if isinstance(e, TurnMetrics)]
    assert metrics.stages_ms["end_of_turn_silence"] < settings.turns.unjudged_silence_ms
    assert "end_of_turn_model" not in metrics.stages_ms


def _words(text: str) -> list[str]:
    return text.split()


async def test_the_bots_turn_is_stored_as_it_plays_then_whole_when_done(
    settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model
):
    events: list = []

    class RecordingStore(DialogStore):
        """The real store, noting each write and whether the reply was done when it was made."""

        writes: list[tuple[Turn, bool]] = []

        async def put(self, dialog_id, turn, *, fence=None):
            self.writes.append((turn, any(isinstance(e, ReplyDone) for e in events)))
            return await super().put(dialog_id, turn, fence=fence)

    async with _turn_loop(
        settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, events,
        store_class=RecordingStore,
    ) as (_, loop):
        assert loop.submit_text("Tell me a long story about a dragon, a knight and a castle.")
        await _until(lambda: any(isinstance(e, ReplyDone) for e in events), 120)
        (done,) = [e for e in events if isinstance(e, ReplyDone)]
        await _until(lambda: any(t.role == "assistant" and not t.interrupted for t, _ in RecordingStore.writes))
        stored = await stored_turns(shared_redis.url, loop.dialog_id)
    bot = [(t, after_done) for t, after_done in RecordingStore.writes if t.role == "assistant"]
    # While it played, the reply was stored as far as it had been heard (a replica dying then
    # leaves that much), each time a little further, and marked cut short until it was done.
    heard = [t for t, after_done in bot if not after_done]
    assert heard and all(t.interrupted for t in heard), bot
    assert [len(_words(t.text)) for t in heard] == sorted(len(_words(t.text)) for t in heard)
    assert all(_words(done.text)[: len(_words(t.text))] == _words(t.text) for t in heard), (heard, done.text)
    # Then whole, in the same place: one bot turn in Redis.
    assert bot[-1][0].text == done.text and not bot[-1][0].interrupted
    assert [(t.role, t.text, t.interrupted) for t in stored][-1] == ("assistant", done.text, False)
    assert sum(t.role == "assistant" for t in stored) == 1


async def test_a_reply_stopped_at_the_token_cap_ends_on_its_last_whole_sentence(
    settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model
):
    # A story asked for with replies capped at 48 tokens: the LLM is stopped mid-sentence. The bot
    # says its whole sentences only, and the dialog keeps what it said, not "... and the".
    events: list = []
    said: list[str] = []

    class Voice:
        """The real synthesizer, noting each piece of text it is given."""

        sample_rate = synthesizer.sample_rate

        def stream(self, text, **kwargs):
            said.append(text)
            return synthesizer.stream(text, **kwargs)

    async with _turn_loop(settings, llm_config, proxy, shared_redis, transcriber, Voice(), turn_model, events) as (_, loop):
        assert loop.submit_text("Tell me a long story about a dragon, a knight and a castle.")
        await _until(lambda: any(isinstance(e, ReplyDone) for e in events), 120)
        async with asyncio.timeout(30):
            while True:
                stored = await stored_turns(shared_redis.url, loop.dialog_id)
                if any(t.role == "assistant" and not t.interrupted for t in stored):
                    break
                await asyncio.sleep(0.05)
    (done,) = [e for e in events if isinstance(e, ReplyDone)]
    written = "".join(e.text for e in events if isinstance(e, ReplyDelta)).strip()
    assert written.startswith(done.text) and len(written) > len(done.text), (written, done.text)
    assert not done.interrupted and (ends_sentence(done.text) or done.text.endswith(",")), done.text
    assert " ".join(said) == done.text
    assert (stored[-1].role, stored[-1].text) == ("assistant", done.text)


async def test_quiet_waits_for_a_typed_turn_that_is_replacing_the_reply_in_progress(
    settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model
):
    # A replica that drains waits for `quiet` before saying goodbye: a typed turn taken from the
    # queue, while it stops the reply before it, must count as a reply in progress.
    events: list = []
    async with _turn_loop(
        settings, llm_config, proxy, shared_redis, transcriber, synthesizer, turn_model, events
    ) as (_, loop):
        assert loop.submit_text("Tell me a long story about a dragon.")
        await _until(lambda: any(isinstance(e, ReplyDelta) for e in events), 120)
        assert loop.submit_text("What is the capital of France?")
        async with asyncio.timeout(120):
            await loop.quiet()
        done = [e for e in events if isinstance(e, ReplyDone)]
        assert [d.interrupted for d in done] == [True, False], done
