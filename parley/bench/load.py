"""`parley bench load`: many calls at once over real WebRTC, from one process: ramp, spike, soak.

Every caller is a `LoadCall` (pre-encoded Opus, so a client call costs a fraction of the
server's) from an address of its own in 127.0.0.0/8, as the per-IP limiter would see real
callers. It says the benchmark's two human sentences in turn, each after the previous reply is done.
- `ramp`: 1, 2, 3, 4, 6, 8 … calls at once (their starts spread over a few seconds); per step
  voice-to-voice p50/p95/max, refusals, failures and the CPU both sides used. The server admits
  them all (its cap is lifted). The capacity is the most calls with p95 ≤ 1.5 s and no failure.
- `spike`: the server as configured (its `max_calls`), calls arriving at a steady rate, then 27×
  that rate for 10 s, then the steady rate again: admitted calls' p95 before, during and after;
  refusals, whether each said when to retry, admitted calls dropped. Then the same for text
  sessions: 100 arriving over 10 s, then 2,700 over 10 s, each held a while.
- `soak`: N calls talking for M minutes: the server's RSS, asyncio tasks, open file descriptors
  and Redis keys, sampled through the run, must stay flat; no call may fail.
- `line`: callers at a full server waiting for a line, in the service's line or not
  (parley/bench/line.py).
Figures merge into bench/results/load.json by mode (and `--json PATH`), a row per mode in
load.md, plots in load_ramp.png and load_spike.png.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

from parley.bench.load_call import EncodedSpeech, LoadCall, TurnOutcome, encode_speech
from parley.bench.results import (
    BENCH_ENV, RESULTS, ms, percentile, server_log, speaker_files, stage_medians, write_results,
)
from parley.errors import CallFailed, CallRefused
from parley.server_process import server_child
from parley.services.redis_server import private_redis

GOAL_P95_MS = 1500.0
SPIKE_FACTOR = 27
# Ramp steps go on while p95 stays below this (past it, larger steps only take longer to say so).
RAMP_GIVE_UP_MS = 4 * GOAL_P95_MS
MIN_STEP_TURNS = 8
# The slowest turns a ramp step lists with their stages (load.json): what its p95 stands on.
SLOWEST_TURNS = 3
# A second capacity: the most calls whose p95 stays within this factor of one call's alone.
LONE_CALL_MARGIN = 1.2
# The ramp's variants: rungs of the shedding ladder applied at every load (a mark of 0 always
# applies, one of 2 never), so each rung's worth shows side by side in one run. `ladder` is the
# default ladder's rungs all applied (what a replica does at its top); `no_drafts` adds the rung
# the default ladder leaves out, because it cost more than it saved (bench/results/load.md).
NEVER, ALWAYS = "2", "0"


def _rungs(partials: str, drafts: str, short: str, early: str = NEVER, audio: str = NEVER) -> dict[str, str]:
    return {"PARLEY_SHEDDING_PARTIALS_OFF_AT": partials, "PARLEY_SHEDDING_DRAFTS_OFF_AT": drafts,
            "PARLEY_SHEDDING_SHORT_REPLIES_AT": short, "PARLEY_SHEDDING_EARLY_JUDGEMENTS_OFF_AT": early,
            "PARLEY_SHEDDING_AUDIO_JUDGEMENTS_OFF_AT": audio}


# Every rung shed except the drafts, as models.toml's ladder does at a full replica.
LADDER = _rungs(ALWAYS, NEVER, ALWAYS, ALWAYS)
RAMP_VARIANTS: dict[str, dict[str, str]] = {
    "full": _rungs(NEVER, NEVER, NEVER),
    "no_partials": _rungs(ALWAYS, NEVER, NEVER),
    "ladder": LADDER,
    "no_drafts": _rungs(ALWAYS, ALWAYS, NEVER),
    # The ladder with aiortc encoding the bot's voice, every frame and silence too (the old way).
    "ladder_aiortc_voice": {**LADDER, "PARLEY_MEDIA_VOICE_ENCODER": "aiortc"},
    # The ladder with two transcriptions at once, a core each, instead of one on both cores. No gain
    # measured (2026-11-28: 4 calls p95 992 against 1046 ms, 6 calls 3749 against 3489), so not the default.
    "ladder_asr_lanes": {**LADDER, "PARLEY_INFERENCE_ASR_THREADS": "2",
                         "PARLEY_ASR_CPU_THREADS": "1"},
    # The ladder with every piece of speech synthesised in the order asked, none ahead of need
    # ([turns] synthesis_slack_s = 0): a reply's later sentences before another's first.
    "ladder_no_slack": {**LADDER, "PARLEY_TURNS_SYNTHESIS_SLACK_S": "0"},
    # The ladder without a copy's re-ask primed while the caller talks ([llm] copy_reask_primed).
    "ladder_reask_unprimed": {**LADDER, "PARLEY_LLM_COPY_REASK_PRIMED": "false"},
    # The ladder with a pause's transcription carried on when the caller talks through the pause
    # ([asr] pauses_give_way = false), though the next pause transcribes the words again.
    "ladder_pauses_kept": {**LADDER, "PARLEY_ASR_PAUSES_GIVE_WAY": "false"},
    # The ladder with one thread for each synthesis instead of one per core: fewer threads than
    # jobs wanting the two cores at once.
    "ladder_tts_1_thread": {**LADDER, "PARLEY_TTS_THREADS": "1"},
    # The ladder with two syntheses at once, one core each, instead of one at a time on both
    # cores: turns end together under load, and a first piece waited in the TTS lane (8 calls:
    # first audio p50 352 ms against 150 alone).
    "ladder_tts_lanes": {**LADDER, "PARLEY_INFERENCE_TTS_THREADS": "2", "PARLEY_TTS_THREADS": "1"},
    # Both: two transcriptions and two syntheses at once, a core each.
    "ladder_lanes": {**LADDER, "PARLEY_INFERENCE_ASR_THREADS": "2", "PARLEY_ASR_CPU_THREADS": "1",
                     "PARLEY_INFERENCE_TTS_THREADS": "2", "PARLEY_TTS_THREADS": "1"},
    # The ladder with two threads for each transcription, the default until one measured better
    # under load ([asr] cpu_threads in models.toml).
    "ladder_asr_2_threads": {**LADDER, "PARLEY_ASR_CPU_THREADS": "2"},
    # The ladder with four slots a llama-server ([llm_server] parallel), the default until 2026-12-07:
    # at 8 calls the two servers' eight slots held the eight dialogs and nothing else, so a copy's
    # re-ask or a prime pushed some dialog's cached prompt out, and its next turn read 70-130 tokens
    # again (0.5-0.9 s, the slowest turns' wait). `ladder_slots_8` was that ladder with eight.
    "ladder_slots_4": {**LADDER, "PARLEY_LLM_SERVER_PARALLEL": "4", "PARLEY_LLM_SERVER_CTX_SIZE": "8192"},
    # The ladder keeping the end-of-turn model's early hearing of a pause, beside its transcription
    # ([turn_model] at_pause; [shedding] early_judgements_off_at).
    "ladder_early_judgements_kept": {**LADDER, "PARLEY_SHEDDING_EARLY_JUDGEMENTS_OFF_AT": NEVER},
    # The ladder with a pause whose words end a sentence ending the turn on them alone, unheard by
    # the end-of-turn model ([shedding] audio_judgements_off_at). Not kept: the silence before
    # answering fell, the wait for the draft's first audio grew as much (2026-12-07, load.md).
    "ladder_words_decide": {**LADDER, "PARLEY_SHEDDING_AUDIO_JUDGEMENTS_OFF_AT": ALWAYS},
    # The ladder with short replies capped at 20 tokens instead of 40: with a reply stopped at its
    # cap said up to its last whole sentence, about one sentence (or its first clause). No gain
    # measured (2026-11-29, p50/p95 ms against the ladder: 4 calls 780/1179 against 849/1128, 6
    # calls 1141/3484 against 1042/1753, 8 calls 1654/3379 against 2228/3787), so not the default.
    "ladder_short_20": {**LADDER, "PARLEY_SHEDDING_SHORT_REPLY_TOKENS": "20"},
    # The ladder with llama-server on two threads that sleep when idle instead of one that spins
    # ([llm_server] threads, poll): under load the LLM's first token is the longest wait (p50 0.7 s
    # at 8 calls) while the server's processes use about half of the two cores. Not kept: one
    # interleaved ramp (2026-11-29), p50/p95 ms against the ladder: 4 calls 843/1497 against
    # 820/1243, 6 calls 2641/4815 against 1352/2887, 8 calls 3241/4008 against 2237/3400.
    "ladder_llm_2_threads": {**LADDER, "PARLEY_LLM_SERVER_THREADS": "2", "PARLEY_LLM_SERVER_POLL": "0"},
    "ladder_llm_2_threads_slots_8": {**LADDER, "PARLEY_LLM_SERVER_THREADS": "2", "PARLEY_LLM_SERVER_POLL": "0",
                                     "PARLEY_LLM_SERVER_PARALLEL": "8"},
    # The ladder with llama-server reading prompts on two threads ([llm_server] threads_batch) and
    # writing on one: the slowest turns under load wait for prompts read (a turn's new words and
    # the reply before them, 70-150 tokens at 8 calls, 0.5-1.2 s each) while a quarter of the two
    # cores stays idle. Not kept: 8 calls (2026-12-07) p50/p95 4110/13909 ms against 1701/3887.
    "ladder_prompt_2_threads": {**LADDER, "PARLEY_LLM_SERVER_THREADS_BATCH": "2"},
    # Short replies of 20 tokens and a llama-server slot for each of 8 calls: less decoding shared
    # among the streams, and no dialog's cached prompt pushed out (read again whole) by another's.
    # Not kept: 8 calls, 8 sentences each, one interleaved run (2026-11-29): p50/p95 1379/4640 ms
    # against the ladder's 1986/3762 (sooner mostly, but a longer tail).
    "ladder_short_20_slots_8": {**LADDER, "PARLEY_SHEDDING_SHORT_REPLY_TOKENS": "20", "PARLEY_LLM_SERVER_PARALLEL": "8",
                                "PARLEY_LLM_POOL_MAX_INFLIGHT": "8"},
    # The ladder with one llama-server (one thread, [llm_server] parallel slots) or two, each dialog kept on one
    # ([llm_server] instances; two since 2026-12-06: p95 lower at 6, 8 and 10 calls in two runs).
    "ladder_llm_1_server": {**LADDER, "PARLEY_LLM_SERVER_INSTANCES": "1"},
    "ladder_llm_2_servers": {**LADDER, "PARLEY_LLM_SERVER_INSTANCES": "2"},
    # The ladder with a pause heard (judged, and its words transcribed) after 140 ms of silence
    # instead of 60 ([vad] pause_ms): fewer transcriptions of pauses the caller talks through
    # (about 1.8 a turn under load), each a slice of the ASR every turn's end waits on.
    "ladder_pause_140": {**LADDER, "PARLEY_VAD_PAUSE_MS": "140"},
    # The ladder with at most two requests at each llama-server instead of four ([llm_pool]
    # max_inflight): one server thread decoding four streams at once makes fewer tokens a second
    # in all than decoding one, so a third and fourth request might do better waiting their turn.
    # Not kept: one interleaved ramp (2026-12-06 19:21), p95 ms against the ladder: 6 calls 774
    # against 746, 8 calls 919 against 927, 10 calls 1895 against 1342 (one turn unanswered).
    "ladder_inflight_2": {**LADDER, "PARLEY_LLM_POOL_MAX_INFLIGHT": "2"},
    # The ladder with numpy's OpenBLAS on a thread per core, its own default, instead of one
    # ([server] blas_threads): its idle threads spin after each call.
    "ladder_blas_default": {**LADDER, "PARLEY_SERVER_BLAS_THREADS": "0"},
    # The ladder with the bot's voice sent whole while it is quiet, 50 packets a second, instead of
    # in DTX ([media] bot_dtx): each caller (the harness, on the same cores) receives them all.
    "ladder_bot_dtx_off": {**LADDER, "PARLEY_MEDIA_BOT_DTX": "false"},
}


class CallerAddresses:
    """Source addresses in 127.0.0.0/8, one per caller, never 127.0.0.1 (the server's own)."""

    def __init__(self, first: int = 2) -> None:
        self._next = first

    def take(self) -> str:
        n, self._next = self._next, self._next + 1
        return f"127.{1 + n // 62500}.{1 + n // 250 % 250}.{1 + n % 250}"


@dataclass(slots=True)
class CallRecord:
    """One caller's outcome: refused (with what it was told), failed, dropped after admission, or its turns."""

    offered_at: float
    admitted: bool = False
    refused: str | None = None
    retry_after_s: float | None = None
    failure: str | None = None
    dropped: bool = False
    turns: list[TurnOutcome] = field(default_factory=list)

    @property
    def v2v(self) -> list[float]:
        return [t.voice_to_voice_ms for t in self.turns if t.voice_to_voice_ms is not None]

    @property
    def unanswered(self) -> int:
        return sum(t.voice_to_voice_ms is None for t in self.turns)

    @property
    def failed(self) -> bool:
        return self.failure is not None or self.dropped


async def place_call(
    url: str, address: str, speeches: list[EncodedSpeech], *, keep_going: Callable[[int], bool] | None = None
) -> CallRecord:
    """One caller: connect from `address`, say the sentences (or go on while `keep_going(turns so far)`)."""
    record = CallRecord(time.monotonic())
    try:
        async with LoadCall(url, local_address=address, reply_timeout_s=20.0) as call:
            record.admitted = True
            index = 0
            while (keep_going(index) if keep_going else index < len(speeches)):
                record.turns.append(await call.say(speeches[index % len(speeches)]))
                index += 1
                if call.dropped:
                    record.dropped = True
                    break
    except CallRefused as refused:
        record.refused, record.retry_after_s = refused.code, refused.retry_after_s
    except CallFailed as failed:
        record.failure = str(failed)
        record.dropped = record.admitted
    except (OSError, websockets.WebSocketException) as exc:
        record.failure = f"{type(exc).__name__}: {exc}"
        record.dropped = record.admitted
    return record


class CpuMeter:
    """CPU seconds used by the server's process tree (llama-server and Redis included) and by this process."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self._seen: dict[int, float] = {}

    def server_seconds(self) -> float:
        # Children that exit take their time with them; the largest figure seen per process is kept.
        for proc in [self.server, *self.server.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self._seen[proc.pid] = max(self._seen.get(proc.pid, 0.0), times.user + times.system)
        return sum(self._seen.values())

    @staticmethod
    def client_seconds() -> float:
        return time.process_time()

    @contextlib.contextmanager
    def measure(self, into: dict[str, Any]) -> Any:
        """Puts `server_cores` and `client_cores` (mean cores busy) into `into` for the block's time."""
        wall, server, client = time.monotonic(), self.server_seconds(), self.client_seconds()
        yield
        elapsed = max(1e-6, time.monotonic() - wall)
        into["server_cores"] = round((self.server_seconds() - server) / elapsed, 2)
        into["client_cores"] = round((self.client_seconds() - client) / elapsed, 2)


async def lane_use(url: str) -> dict[tuple[str, str, str], float]:
    """From /metrics, so far: each inference lane's jobs run and thread seconds, keyed (metric, model,
    priority), and the event loop's lag histogram, keyed (sample, "", bucket bound or "")."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    use = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("parley_inference_jobs_total", "parley_inference_busy_seconds_total"):
                use[(sample.name, sample.labels["model"], sample.labels["priority"])] = sample.value
            elif sample.name.startswith("parley_event_loop_lag_seconds"):
                use[(sample.name, "", sample.labels.get("le", ""))] = sample.value
    return use


def _loop_lag_figures(before: dict, after: dict) -> dict[str, Any]:
    """How late the server's event loop ran its timers over the step: mean lag (ms) and the share
    of wake-ups held past 20 ms (a frame's time: media ran late for every call)."""
    def grew(name: str, le: str = "") -> float:
        key = (f"parley_event_loop_lag_seconds_{name}", "", le)
        return after.get(key, 0.0) - before.get(key, 0.0)
    count = grew("count")
    if not count:
        return {}
    return {
        "mean_ms": round(1000 * grew("sum") / count, 1),
        "over_20ms": round(1 - grew("bucket", "0.02") / count, 3),
    }


def _lane_figures(before: dict, after: dict, *, turns: int, elapsed_s: float) -> dict[str, Any]:
    """Per model: jobs a turn by priority, and how busy the lane was (thread seconds a second)."""
    grew = {key: value - before.get(key, 0.0) for key, value in after.items()}
    figures: dict[str, Any] = {}
    for model in sorted({model for _, model, _ in grew if model}):
        jobs = {p: n for (name, m, p), n in grew.items() if m == model and name == "parley_inference_jobs_total"}
        busy = sum(s for (name, m, _), s in grew.items() if m == model and name == "parley_inference_busy_seconds_total")
        figures[model] = {
            "jobs_per_turn": {p: round(n / max(1, turns), 2) for p, n in jobs.items() if n},
            "busy": round(busy / max(1e-6, elapsed_s), 2),
        }
    return figures


def turn_figures(records: list[CallRecord]) -> dict[str, Any]:
    """What the callers got: voice-to-voice p50/p95/max, turns, calls failed, turns unanswered."""
    v2v = [v for r in records for v in r.v2v]
    return {
        "p50_ms": percentile(v2v, 50), "p95_ms": percentile(v2v, 95), "max_ms": max(v2v, default=None),
        "turns": sum(len(r.turns) for r in records),
        "failed": sum(r.failed for r in records),
        "unanswered": sum(r.unanswered for r in records),
        "unanswered_missing": dict(collections.Counter(t.missing for r in records for t in r.turns if t.missing)),
    }


async def ramp(url: str, meter: CpuMeter, speeches: list[EncodedSpeech], steps: list[int], sentences: int) -> dict:
    """Each step: that many calls at once, each saying `sentences` sentences (more when the calls
    are few, so every step's percentiles stand on at least MIN_STEP_TURNS turns)."""
    return (await ramps({"": (url, meter)}, speeches, steps, sentences))[""]


async def ramps(
    servers: dict[str, tuple[str, CpuMeter]], speeches: list[EncodedSpeech], steps: list[int], sentences: int
) -> dict[str, dict]:
    """`ramp` against each of `servers` (name: url and meter), taken step by step: every server
    takes a step before any takes the next (the first first at odd steps, last at even ones), so
    each step of every server meets the machine as it is within minutes of the others. A server
    stops after a step past RAMP_GIVE_UP_MS."""
    addresses = CallerAddresses()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for index, calls in enumerate(steps):
        going = [name for name, done in results.items() if not done or (done[-1]["p95_ms"] or 0) <= RAMP_GIVE_UP_MS]
        for name in going if index % 2 == 0 else reversed(going):
            url, meter = servers[name]
            figures = await ramp_step(url, meter, speeches, calls, sentences, addresses)
            results[name].append(figures)
            print(" ".join(filter(None, ("ramp", name, f"{calls} calls:"))), figures)
    return {name: ramp_summary(done) for name, done in results.items()}


async def ramp_step(
    url: str, meter: CpuMeter, speeches: list[EncodedSpeech], calls: int, sentences: int, addresses: CallerAddresses
) -> dict[str, Any]:
    """One step of a ramp: `calls` calls at once, started over 3 s; what callers got and where the time went."""
    says = max(sentences, -(-MIN_STEP_TURNS // calls))
    figures: dict[str, Any] = {"calls": calls, "sentences_per_call": says}
    lanes_before, began = await lane_use(url), time.monotonic()
    with meter.measure(figures):
        records = await asyncio.gather(*(
            _after(3.0 * i / calls, place_call(url, addresses.take(), rotated(speeches, i), keep_going=lambda n: n < says))
            for i in range(calls)
        ))
    figures.update(turn_figures(records), refused=sum(r.refused is not None for r in records))
    # Where the time went: how often each model ran a turn, and how busy its lane was.
    lanes_after = await lane_use(url)
    figures["lanes"] = _lane_figures(lanes_before, lanes_after, turns=figures["turns"],
                                     elapsed_s=time.monotonic() - began)
    figures["loop_lag"] = _loop_lag_figures(lanes_before, lanes_after)
    figures["stages_p50_ms"] = stage_medians(turn.stages_ms for r in records for turn in r.turns)
    figures["slowest_turns"] = slowest_turns(records)
    return figures


def slowest_turns(records: list[CallRecord], count: int = SLOWEST_TURNS) -> list[dict[str, float]]:
    """The `count` slowest turns answered, slowest first: voice-to-voice and the server's ms per
    stage for each, since a step's p95 stands on its few slowest turns, not on its medians."""
    answered = sorted(((t.voice_to_voice_ms, t.stages_ms) for r in records for t in r.turns
                       if t.voice_to_voice_ms is not None), key=lambda pair: pair[0], reverse=True)
    return [{"voice_to_voice_ms": v2v, **stages} for v2v, stages in answered[:count]]


def ramp_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A ramp's steps and the capacities they show."""
    def capacity(limit_ms: float | None) -> int:
        within = [s["calls"] for s in results if limit_ms and s["p95_ms"] is not None and s["p95_ms"] <= limit_ms
                  and not (s["failed"] or s["refused"] or s["unanswered"])]
        return max(within, default=0)

    # Where even one call misses the goal, the latency is not the load's doing: the second figure
    # is what the machine carries before callers wait noticeably longer than a lone caller does.
    lone = results[0]["p95_ms"] if results and results[0]["calls"] == 1 else None
    return {
        "steps": results, "capacity_calls": capacity(GOAL_P95_MS), "goal_p95_ms": GOAL_P95_MS,
        "capacity_calls_near_one": capacity(lone and LONE_CALL_MARGIN * lone), "lone_call_margin": LONE_CALL_MARGIN,
    }


async def _after(delay_s: float, work):
    await asyncio.sleep(delay_s)
    return await work


def rotated(items: list, by: int) -> list:
    """Callers start on different sentences, so they do not all say the same thing at once."""
    by %= len(items)
    return items[by:] + items[:by]


def _phase(at: float, spike_start: float, spike_end: float, settle_s: float) -> str:
    """Before the spike, during it (and while the calls it admitted still talk), or after."""
    if at < spike_start:
        return "before"
    return "during" if at < spike_end + settle_s else "after"


async def spike(
    url: str, meter: CpuMeter, speeches: list[EncodedSpeech], *, base_rate: float, before_s: float,
    spike_s: float, after_s: float, settle_s: float,
) -> dict:
    """Calls arriving at `base_rate` a second, 27× that for `spike_s`, then `base_rate` again."""
    addresses = CallerAddresses()
    start = time.monotonic()
    spike_start, spike_end = start + before_s, start + before_s + spike_s
    calls: list[asyncio.Task[CallRecord]] = []
    figures: dict[str, Any] = {"base_rate_per_s": base_rate, "factor": SPIKE_FACTOR, "spike_s": spike_s}
    with meter.measure(figures):
        at = start
        while at < spike_end + after_s:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            calls.append(asyncio.create_task(place_call(url, addresses.take(), rotated(speeches, len(calls)))))
            following = at + 1 / (base_rate * SPIKE_FACTOR if spike_start <= at < spike_end else base_rate)
            at = spike_start if at < spike_start < following else following  # the spike begins on time
        records = await asyncio.gather(*calls)
    by_phase: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for record in records:
        for turn in record.turns:
            if turn.voice_to_voice_ms is not None:
                by_phase[_phase(turn.speech_end, spike_start, spike_end, settle_s)].append(turn.voice_to_voice_ms)
    refused = [r for r in records if r.refused]
    admitted = [r for r in records if r.admitted]
    figures.update({
        "base_calls": round(base_rate * _mean_call_s(admitted), 1),
        "offered": len(records),
        "offered_during_spike": sum(spike_start <= r.offered_at < spike_end for r in records),
        "admitted": len(admitted),
        "refused": len(refused),
        "refused_by_code": {code: sum(r.refused == code for r in refused) for code in {r.refused for r in refused}},
        "refused_without_retry_after": sum(r.retry_after_s is None for r in refused),
        "retry_after_s": sorted({r.retry_after_s for r in refused if r.retry_after_s is not None}),
        "failed_before_admission": sum(r.failure is not None and not r.admitted for r in records),
        "admitted_dropped": sum(r.dropped for r in admitted),
        "unanswered_turns": sum(r.unanswered for r in admitted),
        **{f"p95_{phase}_ms": percentile(values, 95) for phase, values in by_phase.items()},
        **{f"turns_{phase}": len(values) for phase, values in by_phase.items()},
    })
    before, during = figures["p95_before_ms"], figures["p95_during_ms"]
    figures["p95_during_vs_before"] = round(during / before, 2) if before and during else None
    figures["timeline"] = _timeline(records, start, spike_end + after_s)
    return figures


def _mean_call_s(records: list[CallRecord]) -> float:
    """How long an admitted call lasted, on average (to its last reply)."""
    spans = [r.turns[-1].speech_end - r.offered_at for r in records if r.turns]
    return sum(spans) / len(spans) if spans else 0.0


def _timeline(records: list[CallRecord], start: float, end: float) -> list[dict[str, Any]]:
    """Per second from the start: calls offered, admitted and refused, and p95 of the turns that ended then."""
    seconds = int(end - start) + 1
    rows = [{"s": s, "offered": 0, "admitted": 0, "refused": 0, "v2v": []} for s in range(seconds + 60)]
    for record in records:
        row = rows[min(len(rows) - 1, int(record.offered_at - start))]
        row["offered"] += 1
        row["admitted"] += record.admitted
        row["refused"] += record.refused is not None
        for turn in record.turns:
            if turn.voice_to_voice_ms is not None:
                rows[min(len(rows) - 1, max(0, int(turn.speech_end - start)))]["v2v"].append(turn.voice_to_voice_ms)
    last = max((i for i, r in enumerate(rows) if r["offered"] or r["v2v"]), default=0)
    return [{**{k: v for k, v in r.items() if k != "v2v"}, "p95_ms": percentile(r["v2v"], 95)} for r in rows[: last + 1]]


async def text_spike(url: str, *, base: int, surge: int, window_s: float, hold_s: float) -> dict:
    """`base` text sessions arriving over `window_s`, then `surge` over the next `window_s`; each held `hold_s`."""
    addresses = CallerAddresses(first=100_000)
    outcomes: list[str] = []
    most_held = 0

    async def one() -> None:
        try:
            async with websockets.connect(
                url.replace("http", "ws") + "/ws", local_addr=(addresses.take(), 0), open_timeout=30
            ) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 30))
                outcomes.append("session" if first["type"] == "session" else first.get("code", first["type"]))
                if first["type"] == "session":
                    await asyncio.sleep(hold_s)
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            outcomes.append(f"failed: {type(exc).__name__}")

    async def watch() -> None:
        nonlocal most_held
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    most_held = max(most_held, (await http.get(f"{url}/stats")).json()["sessions"])
                await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    sessions = []
    for count in (base, surge):
        start = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + window_s * i / count - time.monotonic()))
            sessions.append(asyncio.create_task(one()))
    await asyncio.gather(*sessions)
    watcher.cancel()
    counts = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
    return {
        "base": base, "offered": base + surge, "window_s": window_s, "hold_s": hold_s,
        "outcomes": counts, "unavailable": counts.get("unavailable", 0), "most_sessions_held": most_held,
    }


async def soak(
    url: str, meter: CpuMeter, speeches: list[EncodedSpeech], redis_url: str, *, calls: int, minutes: float,
    sample_s: float = 7.0, warmup_s: float | None = None,
) -> dict:
    """`calls` calls talking for `warmup_s` and then `minutes`; the server's memory, tasks,
    descriptors and Redis keys sampled before the calls, every `sample_s` while they talk (out of
    step with malloc's trims, so some samples follow one), and once they have ended. Growth counts
    from `warmup_s` on (default: a fifth of `minutes`, at least 30 s, within them)."""
    from redis.asyncio import Redis

    addresses = CallerAddresses()
    server = meter.server
    if warmup_s is None:
        warmup_s = max(30.0, 12.0 * minutes)
        stop = time.monotonic() + 60 * minutes
    else:
        stop = time.monotonic() + warmup_s + 60 * minutes
    samples: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"calls": calls, "minutes": minutes, "warmup_s": warmup_s}

    async def sample(http: httpx.AsyncClient, redis: Redis, start: float) -> None:
        stats = (await http.get(f"{url}/stats")).json()
        memory = server.memory_info()
        samples.append({
            "s": round(time.monotonic() - start), "rss_mb": round(memory.rss / 2**20, 1),
            # RSS less its pages backed by files (model files and libraries mapped and read in).
            "rss_anon_mb": round((memory.rss - memory.shared) / 2**20, 1),
            "python_blocks": stats.get("python_blocks"),
            "tasks": stats["tasks"], "fds": server.num_fds(), "redis_keys": await redis.dbsize(),
            "voice_calls": stats["voice_calls"], "heap_in_use_mb": stats.get("heap_in_use_mb"),
            "heap_free_mb": stats.get("heap_free_mb"),
        })

    with meter.measure(figures):
        redis = Redis.from_url(redis_url)
        async with httpx.AsyncClient(timeout=5) as http:
            start = time.monotonic()
            await sample(http, redis, start)
            before = samples.pop()
            talking = [
                asyncio.create_task(_after(2.0 * i, place_call(url, addresses.take(), rotated(speeches, i),
                                                               keep_going=lambda n: time.monotonic() < stop)))
                for i in range(calls)
            ]
            while not all(t.done() for t in talking):
                await sample(http, redis, start)
                await asyncio.wait(talking, timeout=sample_s)
            records = [t.result() for t in talking]
            # The calls ended: what they leave behind, once the server has seen them go (at most 10 s).
            for _ in range(20):
                await sample(http, redis, start)
                if samples[-1]["voice_calls"] == 0 and samples[-1]["tasks"] <= before["tasks"]:
                    break
                samples.pop()
                await asyncio.sleep(0.5)
            else:
                await sample(http, redis, start)
        await redis.aclose()
    # The first samples include warming up (allocator arenas, model buffers, caches filling; the
    # 30-minute soak's RSS rose for the first minute, then held): growth counts from `warmup_s` on.
    # One sample of RSS says little: between two of malloc's trims (`malloc_trim_s`) it holds the
    # pages a turn freed (features, tensors, audio), so samples 5 s apart alternated between ~380
    # and ~475 MB in the same process, and the median of a few of them fell on either side.
    # Memory held is the floor: RSS compares the lowest sample of the first and last thirds of the
    # warm samples (a leak raises the floor). What is allocated and kept (malloc's bytes in use,
    # Python's blocks) does not swing; those compare the thirds' medians.
    talking_samples = samples[:-1]
    warm_samples = [s for s in talking_samples if s["s"] >= warmup_s] or talking_samples
    third = max(1, len(warm_samples) // 3)
    warm = {**_median_sample(warm_samples[:third]), **_floor_sample(warm_samples[:third], RSS_KEYS)}
    last = {**_median_sample(warm_samples[-third:]), **_floor_sample(warm_samples[-third:], RSS_KEYS)}
    figures.update(turn_figures(records))
    figures.update({
        "rss_mb_warm": warm["rss_mb"], "rss_mb_last": last["rss_mb"],
        "rss_growth_pct": _growth_pct(warm["rss_mb"], last["rss_mb"]),
        "rss_anon_mb_warm": warm["rss_anon_mb"], "rss_anon_mb_last": last["rss_anon_mb"],
        "rss_anon_growth_pct": _growth_pct(warm["rss_anon_mb"], last["rss_anon_mb"]),
        "python_blocks_warm": warm["python_blocks"], "python_blocks_last": last["python_blocks"],
        "python_blocks_growth_pct": _growth_pct(warm["python_blocks"], last["python_blocks"]),
        # RSS counts malloc's kept free memory too; what is allocated and not freed is the leak test,
        # for memory of C (malloc in use) and of Python objects (their blocks).
        "heap_in_use_mb_warm": warm["heap_in_use_mb"], "heap_in_use_mb_last": last["heap_in_use_mb"],
        "heap_in_use_growth_pct": _growth_pct(warm["heap_in_use_mb"], last["heap_in_use_mb"]),
        "heap_free_mb_warm": warm["heap_free_mb"], "heap_free_mb_last": last["heap_free_mb"],
        # Counts do not swing like memory: the first warm sample against the last.
        "tasks_warm": warm_samples[0]["tasks"], "tasks_last": warm_samples[-1]["tasks"],
        "fds_warm": warm_samples[0]["fds"], "fds_last": warm_samples[-1]["fds"],
        "redis_keys_warm": warm_samples[0]["redis_keys"], "redis_keys_last": warm_samples[-1]["redis_keys"],
        "before_calls": before,
        "after_calls_ended": samples[-1],
        "samples": samples,
    })
    return figures


# The soak's figures of resident memory, which swing between malloc's trims (see `soak`).
RSS_KEYS = ("rss_mb", "rss_anon_mb")


def _floor_sample(samples: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Each of `keys`' lowest value over `samples`."""
    return {key: min(s[key] for s in samples) for key in keys}


def _median_sample(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over `samples` (None where the server does not report it)."""
    def median(key: str) -> Any:
        values = [s[key] for s in samples if s.get(key) is not None]
        return statistics.median(values) if values else None
    return {key: median(key) for key in samples[0]}


def _growth_pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return round(100 * (after - before) / before, 1)


@contextlib.asynccontextmanager
async def bench_server(env: dict[str, str], log_path: str | None = None) -> AsyncIterator[tuple[str, CpuMeter]]:
    async with server_child(env, log_path=log_path) as (url, process):
        yield url, CpuMeter(process.pid)


def _merge_into(path: Path, mode: str, figures: dict[str, Any], stamp: dict[str, Any]) -> dict[str, Any]:
    """The load document with `mode`'s figures replaced (modes run separately keep each other's)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        document = {"benchmark": "load"}
    document[mode] = {**stamp, **figures}
    return document


def _steps_row(steps: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s['calls']}: {ms(s['p50_ms'])}/{ms(s['p95_ms'])}/{ms(s['max_ms'])} "
                     f"(cpu {s['server_cores']}+{s['client_cores']}{_step_use(s)})" for s in steps)


def _step_use(step: dict[str, Any]) -> str:
    """The ASR lane's share of a step (how busy it was, its transcriptions a turn) and the event
    loop's lag."""
    asr, lag = step.get("lanes", {}).get("asr"), step.get("loop_lag")
    text = f", asr {asr['busy']} busy, {round(sum(asr['jobs_per_turn'].values()), 1)} a turn" if asr else ""
    if lag:
        text += f", loop lag {lag['mean_ms']} ms mean, {lag['over_20ms']:.0%} past 20 ms"
    return text


async def _run_ramp(args: argparse.Namespace, env: dict[str, str], speeches: list[EncodedSpeech], when: str):
    """Each variant's ramp against a server of its own, the servers side by side and taken step by
    step (`ramps`): run one variant after another, the same setting measured 6 calls p95 1494 ms
    and, 45 minutes later, 2294, as the machine's speed drifted. The figures and the markdown rows."""
    from parley.bench.load_plots import plot_ramp

    steps = [int(s) for s in args.steps.split(",")]
    async with contextlib.AsyncExitStack() as stack:
        servers = {}
        for name in args.variants.split(","):
            # The cap is lifted: the ramp measures what the machine carries, not what it is told to take.
            lifted = {"PARLEY_ADMISSION_MAX_CALLS": str(max(steps) + 1), **RAMP_VARIANTS[name]}
            servers[name] = await stack.enter_async_context(
                bench_server({**env, **lifted}, server_log(args.server_logs, f"ramp-{name}"))
            )
        variants = await ramps(servers, speeches, steps, args.sentences)
    # What a replica takes on is measured with every rung shed, as they are at its top.
    figures = {"variants": variants, **(variants.get("ladder") or next(iter(variants.values())))}
    plot_ramp(figures, RESULTS / "load_ramp.png")
    rows = [f"| {when} | ramp {name} | capacity {v['capacity_calls']} calls at p95 ≤ {GOAL_P95_MS:.0f} ms,"
            f" {v['capacity_calls_near_one']} within {LONE_CALL_MARGIN}× one call's p95; {_steps_row(v['steps'])} |"
            for name, v in variants.items()]
    return figures, "\n".join(rows)


async def _run_spike(args: argparse.Namespace, env: dict[str, str], speeches: list[EncodedSpeech], when: str):
    """Calls, then text sessions, against one server with its configured (or --max-calls) capacity."""
    from parley.bench.load_plots import plot_spike

    max_calls = {"PARLEY_ADMISSION_MAX_CALLS": str(args.max_calls)} if args.max_calls else {}
    async with bench_server({**env, **max_calls}) as (url, meter):
        f = await spike(url, meter, speeches, base_rate=args.base_rate, before_s=args.before_s,
                        spike_s=args.spike_s, after_s=args.after_s, settle_s=args.settle_s)
        f["text"] = await text_spike(url, base=args.text_base, surge=args.text_base * SPIKE_FACTOR,
                                     window_s=args.spike_s, hold_s=args.text_hold_s)
    plot_spike(f, RESULTS / "load_spike.png")
    text = f["text"]
    row = (f"| {when} | spike | offered {f['offered']}, admitted {f['admitted']}, refused {f['refused']}"
           f" (without retry_after {f['refused_without_retry_after']}), dropped {f['admitted_dropped']};"
           f" p95 before/during/after {ms(f['p95_before_ms'])}/{ms(f['p95_during_ms'])}/{ms(f['p95_after_ms'])};"
           f" text {text['offered']}: {text['outcomes']}, held {text['most_sessions_held']} |")
    return f, row


async def _run_soak(args: argparse.Namespace, env: dict[str, str], speeches: list[EncodedSpeech], when: str):
    async with bench_server(env) as (url, meter):
        f = await soak(url, meter, speeches, env["REDIS_URL"], calls=args.calls, minutes=args.minutes)
    row = (f"| {when} | soak | {f['calls']} calls × {f['minutes']} min: failed {f['failed']},"
           f" RSS floor {f['rss_mb_warm']:.1f}→{f['rss_mb_last']:.1f} MB ({f['rss_growth_pct']} %),"
           f" Python blocks {f['python_blocks_growth_pct']} %, malloc in use {f['heap_in_use_mb_warm']:.1f}→{f['heap_in_use_mb_last']:.1f} MB,"
           f" kept free {f['heap_free_mb_warm']:.1f}→{f['heap_free_mb_last']:.1f} MB,"
           f" tasks {f['tasks_warm']}→{f['tasks_last']}, fds {f['fds_warm']}→{f['fds_last']},"
           f" Redis keys {f['redis_keys_warm']}→{f['redis_keys_last']}; {f['turns']} turns, voice-to-voice p50"
           f" {ms(f['p50_ms'])} / p95 {ms(f['p95_ms'])} / max {ms(f['max_ms'])} ms, server {f['server_cores']} cores |")
    return f, row


async def _run_line(args: argparse.Namespace, env: dict[str, str], speeches: list[EncodedSpeech], when: str):
    """Both ways of waiting for a line, one after the other, against one server of `--max-calls` lines."""
    from parley.bench.line import line

    lines = {"PARLEY_ADMISSION_MAX_CALLS": str(args.max_calls or 2)}
    async with bench_server({**env, **lines}) as (url, meter):
        variants = await line(url, meter, speeches, callers=args.callers, gap_s=args.gap_s,
                              sentences=args.sentences, variants=args.line_variants.split(","))
    f = {"max_calls": int(lines["PARLEY_ADMISSION_MAX_CALLS"]), "variants": variants}
    row = "; ".join(
        f"{name}: {v['callers']} callers {v['gap_s']} s apart onto {f['max_calls']} lines, admitted {v['admitted']},"
        f" wait p50/p95/max {v['wait_s_p50']}/{v['wait_s_p95']}/{v['wait_s_max']} s, overtaken {v['overtaken']},"
        f" {v['offers_per_caller']} offers a caller, last admitted at {v['last_admitted_s']} s"
        for name, v in variants.items()
    )
    return f, f"| {when} | line | {row} |"


MODES = {"ramp": _run_ramp, "spike": _run_spike, "soak": _run_soak, "line": _run_line}
HEADER = (
    "# Load benchmark: many calls at once over real WebRTC (`parley bench load`)\n\n"
    "Ramp: per step calls p50/p95/max voice-to-voice (ms) and CPU cores used (server tree + client)."
    " Spike: 27× the arrival rate for 10 s. Soak: N calls for M minutes. Line: callers arriving at"
    " a full server, waiting in line against retrying with backoff. Plots: load_ramp.png,"
    " load_spike.png.\n\n| when | mode | figures |\n| --- | --- | --- |\n"
)


async def bench_load(args: argparse.Namespace) -> None:
    """Run the mode(s) `args.mode` names, each against a fresh server on the benchmark's own Redis."""
    modes = list(MODES) if args.mode == "all" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="parley-load-") as tmp:
        speeches = [encode_speech(path) for path in speaker_files(Path(tmp))]
        async with private_redis() as redis:
            env = {**BENCH_ENV, "REDIS_URL": redis.url}
            for mode in modes:
                stamp = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine_cores": os.cpu_count()}
                print(f"load: {mode}")
                figures, row = await MODES[mode](args, env, speeches, stamp["when"])
                document = _merge_into(RESULTS / "load.json", mode, figures, stamp)
                write_results("load", document, row, HEADER, copy_to=args.json)
