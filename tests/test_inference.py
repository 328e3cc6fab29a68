"""Inference lanes: a bounded queue refused at once, a deadline to start, one model's backlog never another's.

Jobs are held with threading.Event gates, and the tests wait for outcomes (a result, a
refusal), never for an amount of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from prometheus_client import REGISTRY

from parley.errors import ConfigError
from parley.settings import load_settings
from pipeline.asr import Transcript
from pipeline.config import TurnConfig, VADConfig
from pipeline.end_of_turn import EndOfTurn
from pipeline.errors import ASRBusy, SynthesisError, TranscriptionError, TTSBusy
from pipeline.inference import InferenceConfig, InferenceLane, LaneConfig, Priority, Urgency
from pipeline.partials import PartialTranscripts
from signaling import metrics

# Long enough never to expire in a test that is not about the deadline.
NEVER_MS = 600_000
# A lane that failed to refuse would make its test wait for the gate for ever: it fails after this instead.
GUARD_S = 60


@contextlib.asynccontextmanager
async def held(lane: InferenceLane, jobs: int) -> AsyncIterator[list[asyncio.Task]]:
    """`jobs` jobs in `lane` that each hold a thread until the block ends (the first ones run, the rest wait)."""
    gate = threading.Event()
    tasks = [asyncio.create_task(lane.run(gate.wait), name=f"hold-{lane.name}-{i}") for i in range(jobs)]
    await asyncio.sleep(0)  # each task is admitted (or refused) before its first await
    try:
        async with asyncio.timeout(GUARD_S):
            yield tasks
    finally:
        gate.set()
        # A holder that waited past the lane's deadline was refused; that is not what is tested here.
        await asyncio.gather(*tasks, return_exceptions=True)


def recorder() -> tuple[list[str], Callable[[str], str]]:
    """A job that records its name when it runs, and the record."""
    ran: list[str] = []

    def record(name: str) -> str:
        ran.append(name)
        return name

    return ran, record


async def test_a_full_lane_refuses_at_once_with_its_models_error():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=1, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()
    async with held(lane, 2) as holders:
        assert lane.waiting == 1
        # The thread is held and the deadline far off: only a refusal on arrival can answer now.
        with pytest.raises(ASRBusy, match="asr busy: 1 running and 1 waiting") as refused:
            await lane.run(record, "one too many")
        assert isinstance(refused.value, TranscriptionError)  # the turn loop's asr_failed
        assert not any(task.done() for task in holders)
    assert ran == [] and lane.waiting == 0
    assert (lane.refusals("full"), lane.refusals("deadline")) == (1, 0)
    assert await lane.run(record, "room again") == "room again"


async def test_a_job_that_waited_past_its_deadline_is_refused_and_never_runs():
    lane = InferenceLane("tts", LaneConfig(threads=1, max_waiting=2, max_wait_ms=50), busy=TTSBusy)
    ran, record = recorder()
    async with held(lane, 1) as (holder,):
        with pytest.raises(TTSBusy, match="no thread free within 50 ms") as refused:
            await lane.run(record, "late")
        assert isinstance(refused.value, SynthesisError)  # the turn loop's tts_failed
        assert not holder.done()
        assert lane.waiting == 0  # the refused job left the queue
    # One thread runs jobs in order: had the late job stayed queued, it would have run before this one.
    assert await lane.run(record, "after") == "after"
    assert ran == ["after"]
    assert (lane.refusals("full"), lane.refusals("deadline")) == (0, 1)


async def test_a_job_cancelled_while_it_waits_never_runs_and_frees_its_place():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=1, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()
    async with held(lane, 1):
        waiting = asyncio.create_task(lane.run(record, "cancelled"))
        await asyncio.sleep(0)
        assert lane.waiting == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert lane.waiting == 0
        # Its place is free again: one more may wait without being refused.
        queued = asyncio.create_task(lane.run(record, "queued"))
        await asyncio.sleep(0)
        assert lane.refusals("full") == 0
    assert await queued == "queued"
    assert ran == ["queued"]


async def test_a_backlog_in_the_asr_lane_does_not_hold_up_the_tts_lane():
    asr = InferenceLane("asr", LaneConfig(threads=1, max_waiting=4, max_wait_ms=NEVER_MS), busy=ASRBusy)
    tts = InferenceLane("tts", LaneConfig(threads=1, max_waiting=4, max_wait_ms=NEVER_MS), busy=TTSBusy)
    async with held(asr, 5) as backlog:
        assert asr.waiting == 4
        # With one pool for both, this would wait for the gate, which opens only after it.
        assert await tts.run(lambda: "spoken") == "spoken"
        assert not any(task.done() for task in backlog)


async def test_the_metrics_show_each_lanes_queue_and_its_refusals_by_reason():
    asr = InferenceLane("asr", LaneConfig(threads=1, max_waiting=1, max_wait_ms=NEVER_MS), busy=ASRBusy)
    tts = InferenceLane("tts", LaneConfig(threads=1, max_waiting=1, max_wait_ms=NEVER_MS), busy=TTSBusy)
    metrics.INFERENCE_LANES.watch([asr, tts])

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    async with held(asr, 2):
        with pytest.raises(ASRBusy):
            await asr.run(lambda: None)
        assert sample("parley_inference_queue_depth", model="asr") == 1
        assert sample("parley_inference_queue_depth", model="tts") == 0
    assert sample("parley_inference_refusals_total", model="asr", reason="full") == 1
    assert sample("parley_inference_refusals_total", model="asr", reason="deadline") == 0
    assert sample("parley_inference_refusals_total", model="tts", reason="full") == 0
    assert sample("parley_inference_queue_depth", model="asr") == 0


async def test_the_metrics_count_the_jobs_each_lane_ran_and_the_thread_time_they_took_by_priority():
    asr = InferenceLane("asr", LaneConfig(threads=1, max_waiting=2, max_wait_ms=NEVER_MS), busy=ASRBusy)
    metrics.INFERENCE_LANES.watch([asr])

    def sample(name: str, priority: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"model": "asr", "priority": priority})

    def fail() -> None:
        raise TranscriptionError("corrupt audio")

    held_for = threading.Event()
    async with held(asr, 1):
        ahead = asyncio.create_task(asr.run(held_for.wait, 0.05, priority=Priority.AHEAD))
        waited = asyncio.create_task(asr.run(fail))
        await asyncio.sleep(0)
    await ahead
    with pytest.raises(TranscriptionError):
        await waited
    # The holder and the failed job were waited for; a failed job held its thread like any other.
    assert sample("parley_inference_jobs_total", "waited_for") == 2
    assert sample("parley_inference_jobs_total", "ahead") == 1
    assert sample("parley_inference_jobs_total", "idle") == 0
    assert sample("parley_inference_busy_seconds_total", "ahead") >= 0.04
    assert sample("parley_inference_busy_seconds_total", "idle") == 0


def test_lanes_are_configured_in_models_toml_and_from_the_environment():
    assert load_settings(environ={}).inference == InferenceConfig()  # the file and the defaults agree
    settings = load_settings(environ={"PARLEY_INFERENCE_ASR_MAX_WAITING": "8", "PARLEY_INFERENCE_TTS_THREADS": "2"})
    assert settings.inference.asr == LaneConfig(threads=1, max_waiting=8, max_wait_ms=6000)
    assert settings.inference.tts.threads == 2
    with pytest.raises(ConfigError, match="inference.turn_model_max_wait_ms must be above 0, not 0"):
        load_settings(environ={"PARLEY_INFERENCE_TURN_MODEL_MAX_WAIT_MS": "0"})
    with pytest.raises(ConfigError, match="inference.asr_threads must be at least 1"):
        load_settings(environ={"PARLEY_INFERENCE_ASR_THREADS": "0"})


@pytest.mark.slow
async def test_the_real_asr_refuses_when_its_lane_is_full_while_the_voice_goes_on(transcriber, synthesizer):
    speech = np.zeros(16000, np.int16)
    lane = transcriber.lane.config
    async with held(transcriber.lane, lane.threads + lane.max_waiting) as backlog:
        with pytest.raises(ASRBusy):
            await transcriber.transcribe(speech)
        assert len(await synthesizer.synthesize("The voice is not held up.")) > 0
        assert not backlog[0].done()  # the ASR's thread is still held
    async with held(synthesizer.lane, synthesizer.lane.config.threads + synthesizer.lane.config.max_waiting):
        with pytest.raises(TTSBusy):
            await synthesizer.synthesize("Refused before a word.")
    assert (await transcriber.transcribe(speech)).audio_ms == 1000


@pytest.mark.slow
async def test_a_pause_the_end_of_turn_lane_refuses_is_left_to_silence_alone(turn_model):
    end_of_turn = EndOfTurn(turn_model, vad=VADConfig(), turns=TurnConfig(unjudged_silence_ms=500))

    async def transcript():
        raise AssertionError("an unjudged pause needs no words")

    lane = turn_model.lane.config
    async with held(turn_model.lane, lane.threads + lane.max_waiting):
        judgement = await end_of_turn.judge(b"\0\0" * 16000, transcript)
    assert (judgement.probability, judgement.end_silence_ms) == (None, 500)
    assert turn_model.lane.refusals("full") >= 1


async def test_best_effort_work_runs_only_on_a_free_thread_and_is_not_a_refusal():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=4, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()
    async with held(lane, 1):
        # The one thread is busy and the queue has room: a job that is waited for would queue.
        with pytest.raises(ASRBusy, match="no thread free for best-effort work"):
            await lane.run(record, "periodic partial", priority=Priority.IDLE)
        assert lane.waiting == 0  # it took no place in the queue
    assert ran == []
    assert (lane.refusals("full"), lane.refusals("displaced"), lane.refusals("deadline")) == (0, 0, 0)
    assert await lane.run(record, "idle now", priority=Priority.IDLE) == "idle now"


async def test_waiting_jobs_start_most_urgent_first_then_in_the_order_they_came():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=4, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()
    async with held(lane, 1):
        queued = [
            asyncio.create_task(lane.run(record, "pause of turn 1", priority=Priority.AHEAD)),
            asyncio.create_task(lane.run(record, "pause of turn 2", priority=Priority.AHEAD)),
            asyncio.create_task(lane.run(record, "final of turn 1")),
            asyncio.create_task(lane.run(record, "final of turn 2")),
        ]
        await asyncio.sleep(0)
        assert lane.waiting == 4
    await asyncio.gather(*queued)
    assert ran == ["final of turn 1", "final of turn 2", "pause of turn 1", "pause of turn 2"]


async def test_a_full_lane_turns_away_work_done_ahead_for_work_a_turn_waits_for():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=2, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()
    async with held(lane, 1):
        older = asyncio.create_task(lane.run(record, "older pause", priority=Priority.AHEAD))
        newer = asyncio.create_task(lane.run(record, "newer pause", priority=Priority.AHEAD))
        await asyncio.sleep(0)
        # Full of work done ahead: another such job is refused, as before.
        with pytest.raises(ASRBusy, match="1 running and 2 waiting"):
            await lane.run(record, "a third pause", priority=Priority.AHEAD)
        # A final transcript takes the place of the latest job done ahead, which is refused.
        final = asyncio.create_task(lane.run(record, "final"))
        with pytest.raises(ASRBusy, match="a more urgent job took this one's place"):
            await newer
        assert lane.waiting == 2 and not older.done()
        second_final = asyncio.create_task(lane.run(record, "second final"))
        with pytest.raises(ASRBusy, match="a more urgent job took this one's place"):
            await older
        # Full of jobs as urgent as itself, a final transcript is refused like any job.
        with pytest.raises(ASRBusy, match="1 running and 2 waiting"):
            await lane.run(record, "third final")
    assert await final == "final" and await second_final == "second final"
    assert ran == ["final", "second final"]
    assert (lane.refusals("full"), lane.refusals("displaced"), lane.refusals("deadline")) == (2, 2, 0)


async def test_a_job_hurried_while_it_waits_starts_before_work_done_ahead_and_is_not_displaced():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=3, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()
    async with held(lane, 1):
        first_pause = asyncio.create_task(lane.run(record, "another turn's pause", priority=Priority.AHEAD))
        urgency = Urgency(Priority.AHEAD)
        ended = asyncio.create_task(lane.run(record, "the ended turn's pause", priority=urgency))
        final = asyncio.create_task(lane.run(record, "a later final"))
        await asyncio.sleep(0)
        urgency.hurry()  # its turn ended: the reply waits for it now
        # The lane is full; a final displaces the pause still done ahead, not the hurried one.
        last_final = asyncio.create_task(lane.run(record, "the last final"))
        with pytest.raises(ASRBusy, match="took this one's place"):
            await first_pause
    await asyncio.gather(ended, final, last_final)
    assert ran == ["the ended turn's pause", "a later final", "the last final"]


async def test_when_the_turn_ends_the_transcript_asked_for_at_its_pause_goes_before_other_turns_pauses():
    lane = InferenceLane("asr", LaneConfig(threads=1, max_waiting=4, max_wait_ms=NEVER_MS), busy=ASRBusy)
    ran, record = recorder()

    class Transcriber:  # the audio is its own transcript; the lane records which ran when
        async def transcribe(self, audio, *, priority=Priority.WAITED_FOR):
            text = await lane.run(record, audio.decode(), priority=priority)
            return Transcript(text, 0.0, -0.1, len(audio) / 32, "en")

    said = b"this turn"
    def spawn(work, name):
        return asyncio.create_task(work, name=name)

    partials = PartialTranscripts(Transcriber(), lambda: said, spawn=spawn, interval_s=None)
    runner = asyncio.create_task(partials.run(lambda t: asyncio.sleep(0)))
    async with held(lane, 1):
        other = asyncio.create_task(lane.run(record, "another turn's pause", priority=Priority.AHEAD))
        partials.now(unless_covered=len(said))  # this turn's pause
        waiting = asyncio.create_task(partials.upto(len(said)))
        async with asyncio.timeout(GUARD_S):
            while lane.waiting < 2:  # both pauses' transcriptions are queued, the other first
                await asyncio.sleep(0)
        partials.hurry()  # this turn ended
    assert (await waiting).text == "this turn"
    await other
    runner.cancel()
    assert ran == ["this turn", "another turn's pause"]


def test_every_admitted_call_may_wait_in_the_asr_and_tts_lanes():
    config = InferenceConfig(asr_max_waiting=4, tts_max_waiting=4, turn_model_max_waiting=2)
    assert config.for_calls(2) == config  # a lane of 1 + 4 holds two calls' waits already
    surged = config.for_calls(13)
    assert (surged.asr.max_waiting, surged.tts.max_waiting) == (13, 13)
    # The end-of-turn model's refusal loses no turn (it ends on silence alone): its bound stays.
    assert surged.turn_model == config.turn_model
    assert (surged.asr_max_wait_ms, surged.tts_max_wait_ms) == (config.asr_max_wait_ms, config.tts_max_wait_ms)
