"""Inference lanes: each model's blocking inference runs in threads of its own, behind a bounded queue.

The event loop only moves bytes and decisions; the ASR, the TTS and the end-of-turn
model each run in a lane of their own, so a backlog of transcriptions never holds up
a synthesis or an end-of-turn decision. A lane runs `threads` jobs at once and lets
`max_waiting` more wait. When it is behind, it refuses work rather than fall further
behind:

- a job that finds `threads + max_waiting` jobs already in the lane is refused at once
  (reason "full");
- a job that has waited `max_wait_ms` without starting is refused then (reason
  "deadline"): its answer would come too late to be of use, and running it would
  delay every job behind it.

A refusal raises the model's own error (`busy`: ASRBusy, TTSBusy, TurnModelBusy), which
the turn loop reports for that turn alone. A job that has started runs to its end even
if its caller is cancelled (a thread cannot be stopped); one cancelled while it waits
never runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pipeline.errors import PipelineError

T = TypeVar("T")

REASONS = ("full", "deadline")


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneConfig:
    """One model's lane.

    threads: jobs that run at once.
    max_waiting: jobs that may wait for a thread; one more is refused at once.
    max_wait_ms: the longest a job waits to start; then it is refused instead of run late.
    """

    threads: int = 1
    max_waiting: int = 4
    max_wait_ms: int = 2000

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be 0 or more, not {self.max_waiting}")
        if self.max_wait_ms <= 0:
            raise ValueError(f"max_wait_ms must be above 0, not {self.max_wait_ms}")


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceConfig:
    """[inference]: the lanes of the ASR, the TTS and the end-of-turn model (see LaneConfig).

    The keys are flat (`asr_threads`, not a table per model) so that each can be set from
    the environment like any other: PARLEY_INFERENCE_ASR_MAX_WAITING=8.
    """

    asr_threads: int = 1
    asr_max_waiting: int = 4
    asr_max_wait_ms: int = 6000
    tts_threads: int = 1
    tts_max_waiting: int = 4
    tts_max_wait_ms: int = 2000
    turn_model_threads: int = 1
    turn_model_max_waiting: int = 2
    turn_model_max_wait_ms: int = 500

    def __post_init__(self) -> None:
        for model in ("asr", "tts", "turn_model"):
            try:
                getattr(self, model)
            except ValueError as exc:  # "threads must be ..." names the key without its model
                raise ValueError(f"inference.{model}_{exc}") from None

    @property
    def asr(self) -> LaneConfig:
        return LaneConfig(threads=self.asr_threads, max_waiting=self.asr_max_waiting, max_wait_ms=self.asr_max_wait_ms)

    @property
    def tts(self) -> LaneConfig:
        return LaneConfig(threads=self.tts_threads, max_waiting=self.tts_max_waiting, max_wait_ms=self.tts_max_wait_ms)

    @property
    def turn_model(self) -> LaneConfig:
        return LaneConfig(
            threads=self.turn_model_threads,
            max_waiting=self.turn_model_max_waiting,
            max_wait_ms=self.turn_model_max_wait_ms,
        )


class InferenceLane:
    """One model's threads and bounded queue; `run` is safe to call from any task of the loop."""

    def __init__(self, name: str, config: LaneConfig, *, busy: type[PipelineError]) -> None:
        self.name = name
        self.config = config
        self._busy = busy
        self._executor = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix=f"inference-{name}")
        # Taken by the loop (admitting, refusing) and by the lane's threads (starting, ending).
        self._lock = threading.Lock()
        self._admitted = 0  # jobs waiting or running
        self._running = 0
        self._refusals = dict.fromkeys(REASONS, 0)

    @property
    def waiting(self) -> int:
        """Jobs admitted that have not started."""
        with self._lock:
            return self._admitted - self._running

    def refusals(self, reason: str) -> int:
        """Jobs refused so far for `reason` ("full" or "deadline")."""
        with self._lock:
            return self._refusals[reason]

    async def run(self, fn: Callable[..., T], *args: object, best_effort: bool = False) -> T:
        """Run `fn(*args)` in one of the lane's threads and return its result.

        Raises the lane's `busy` error, without running `fn`, when the lane is full or no
        thread took the job within `max_wait_ms`. A `best_effort` job (worth doing only if it
        delays nothing: a periodic partial transcript) runs only on a thread free now, and is
        turned away otherwise, which is not counted as a refusal.
        """
        with self._lock:
            if best_effort and self._admitted >= self.config.threads:
                raise self._busy(f"{self.name} busy: no thread free for best-effort work")
            if self._admitted >= self.config.threads + self.config.max_waiting:
                self._refusals["full"] += 1
                raise self._busy(
                    f"{self.name} busy: {self.config.threads} running and {self.config.max_waiting} waiting"
                )
            self._admitted += 1
        job = self._executor.submit(self._start, fn, args)
        job.add_done_callback(self._forget_if_unstarted)
        result = asyncio.wrap_future(job)
        try:
            await asyncio.wait([result], timeout=self.config.max_wait_ms / 1000)
        except asyncio.CancelledError:
            result.cancel()  # one still waiting never runs; one running runs on, its result unread
            raise
        # Cancelling succeeds only for a job no thread has taken: past its deadline, it is refused.
        if not result.done() and job.cancel():
            with self._lock:
                self._refusals["deadline"] += 1
            raise self._busy(f"{self.name} busy: no thread free within {self.config.max_wait_ms} ms")
        return await result

    def _start(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        with self._lock:
            self._running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._running -= 1
                self._admitted -= 1

    def _forget_if_unstarted(self, job: Future) -> None:
        # A job cancelled before a thread took it never reaches `_start`, which would count it out.
        if job.cancelled():
            with self._lock:
                self._admitted -= 1
