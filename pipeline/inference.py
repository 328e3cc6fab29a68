"""Inference lanes: each model's blocking inference runs in threads of its own, behind a bounded queue.

The event loop only moves bytes and decisions; the ASR, the TTS and the end-of-turn
model each run in a lane of their own, so a backlog of transcriptions never holds up
a synthesis or an end-of-turn decision. A lane runs `threads` jobs at once and lets
`max_waiting` more wait. Waiting jobs start by `Priority`, then in the order they came:
a transcript a turn waits for starts before one made ahead of need. When the lane is
behind, it refuses work rather than fall further behind:

- a job that finds `threads + max_waiting` jobs already in the lane is refused at once
  (reason "full"), unless a less urgent job waits: that one is refused in its place
  (reason "displaced"), so work a caller waits for is never turned away for work that
  was only done ahead;
- a job that has waited `max_wait_ms` without starting is refused then (reason
  "deadline"): its answer would come too late to be of use, and running it would
  delay every job behind it;
- an `IDLE` job runs only on a thread free now, and is turned away otherwise (not
  counted as a refusal: nothing waits for it).

A refusal raises the model's own error (`busy`: ASRBusy, TTSBusy, TurnModelBusy), which
the turn loop reports for that turn alone. A job that has started runs to its end even
if its caller is cancelled (a thread cannot be stopped); one cancelled while it waits
never runs.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any, TypeVar

from pipeline.errors import PipelineError

T = TypeVar("T")

REASONS = ("full", "displaced", "deadline")


class Priority(IntEnum):
    """How soon a job's answer is wanted; a lower value starts first and is refused last."""

    WAITED_FOR = 0  # a turn waits for it (its final transcript, a sentence to speak, a decision)
    AHEAD = 1  # done ahead of need, in case a turn ends here (the transcript made at a pause)
    IDLE = 2  # worth doing only on a thread free now (a periodic partial transcript): never queued


@dataclass(slots=True)
class Urgency:
    """A job's priority, which its owner may raise while the job waits: a transcript made ahead at
    a pause becomes one a turn waits for once the turn has ended there (`hurry`)."""

    priority: Priority
    # False once the owner no longer wants the answer (`give_up`); read by the job's thread.
    wanted: bool = True

    def hurry(self) -> None:
        """From now on the job is waited for (it starts before work done ahead, and is not displaced)."""
        self.priority = Priority.WAITED_FOR

    def give_up(self) -> None:
        """The answer is no longer wanted: a job under way stops at its model's next checkpoint, if
        the model has one (the ASR: before and after encoding), raising the model's busy error."""
        self.wanted = False


@dataclass(slots=True)
class _Job:
    """A job admitted to a lane and not yet finished."""

    urgency: Urgency
    seq: int
    future: Future
    fn: Callable[..., Any]
    args: tuple[object, ...]
    started: bool = False

    @property
    def order(self) -> tuple[int, int]:
        """Most urgent first, then first come (read when a thread frees: the urgency may have risen)."""
        return self.urgency.priority, self.seq


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

    def for_calls(self, max_calls: int) -> InferenceConfig:
        """These lanes on a replica that admits `max_calls` voice calls. Each call waits on at most
        one transcription and one synthesis at a time (the turn's final transcript, the reply's
        first piece): the ASR and TTS lanes let at least that many wait, so every call admission
        let in is answered, late if the lane is slow (max_wait_ms still bounds how late), and not
        refused for a full queue, which loses the caller's turn (seen in `parley bench load ramp`
        at 12 calls: a lane of 1 + 4 turned the sixth waiting turn away). Jobs made ahead
        (partials, later pieces) are still refused first when the lane fills.
        """
        return replace(
            self,
            asr_max_waiting=max(self.asr_max_waiting, max_calls),
            tts_max_waiting=max(self.tts_max_waiting, max_calls),
        )

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
        # Each admitted job hands the executor one `_run_next`, which runs the most urgent job
        # waiting when a thread takes it (not necessarily the one that submitted it).
        self._executor = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix=f"inference-{name}")
        # Taken by the loop (admitting, refusing) and by the lane's threads (starting, ending);
        # re-entrant because refusing a displaced job runs its done callback, which counts it out.
        self._lock = threading.RLock()
        self._queue: list[_Job] = []  # the jobs admitted and not started (some since cancelled), a few
        self._seq = itertools.count()
        self._admitted = 0  # jobs waiting or running
        self._running = 0
        self._refusals = dict.fromkeys(REASONS, 0)
        # Jobs run to the end (or to their failure), and the thread time they took, by priority:
        # how much of the lane each kind of work holds (a periodic partial against a turn's transcript).
        self._ran = dict.fromkeys(Priority, 0)
        self._busy_s = dict.fromkeys(Priority, 0.0)

    @property
    def waiting(self) -> int:
        """Jobs admitted that have not started."""
        with self._lock:
            return self._admitted - self._running

    def refusals(self, reason: str) -> int:
        """Jobs refused so far for `reason` ("full", "displaced" or "deadline")."""
        with self._lock:
            return self._refusals[reason]

    def ran(self, priority: Priority) -> int:
        """Jobs of that priority (as they started) run so far, failed ones included."""
        with self._lock:
            return self._ran[priority]

    def busy_seconds(self, priority: Priority) -> float:
        """Thread time jobs of that priority (as they started) have taken so far."""
        with self._lock:
            return self._busy_s[priority]

    async def run(
        self, fn: Callable[..., T], *args: object, priority: Priority | Urgency = Priority.WAITED_FOR
    ) -> T:
        """Run `fn(*args)` in one of the lane's threads and return its result.

        Raises the lane's `busy` error, without running `fn`, when the lane is full of jobs as
        urgent as this one, when a more urgent job took its place, or when no thread took it
        within `max_wait_ms`. An `IDLE` job runs only on a thread free now. An `Urgency` lets the
        caller raise the job's priority while it waits.
        """
        urgency = priority if isinstance(priority, Urgency) else Urgency(priority)
        future: Future = Future()
        with self._lock:
            if urgency.priority is Priority.IDLE and self._admitted >= self.config.threads:
                raise self._busy(f"{self.name} busy: no thread free for best-effort work")
            full = self._admitted >= self.config.threads + self.config.max_waiting
            if full and not self._displace(urgency.priority):
                self._refusals["full"] += 1
                raise self._busy(
                    f"{self.name} busy: {self.config.threads} running and {self.config.max_waiting} waiting"
                )
            self._admitted += 1
            job = _Job(urgency, next(self._seq), future, fn, args)
            self._queue.append(job)
        future.add_done_callback(lambda _: self._forget_if_unstarted(job))
        self._executor.submit(self._run_next)
        result = asyncio.wrap_future(future)
        try:
            await asyncio.wait([result], timeout=self.config.max_wait_ms / 1000)
        except asyncio.CancelledError:
            result.cancel()  # one still waiting never runs; one running runs on, its result unread
            raise
        # Cancelling succeeds only for a job no thread has taken: past its deadline, it is refused.
        if not result.done() and future.cancel():
            with self._lock:
                self._refusals["deadline"] += 1
            raise self._busy(f"{self.name} busy: no thread free within {self.config.max_wait_ms} ms")
        return await result

    def _displace(self, priority: Priority) -> bool:
        """Refuse the least urgent waiting job, the latest of those, if it is less urgent than
        `priority` (the lock is held); whether one was."""
        waiting = [job for job in self._queue if not job.future.done() and job.urgency.priority > priority]
        if not waiting:
            return False
        victim = max(waiting, key=lambda job: job.order)
        try:
            victim.future.set_exception(
                self._busy(f"{self.name} busy: a more urgent job took this one's place in the queue")
            )
        except InvalidStateError:  # cancelled by its caller just now: its place is free anyway
            return True
        self._refusals["displaced"] += 1
        return True

    def _run_next(self) -> None:
        """In a lane thread: run the most urgent job still waiting (none left: another thread took it)."""
        with self._lock:
            while self._queue:
                job = min(self._queue, key=lambda job: job.order)
                self._queue.remove(job)
                # False for a job cancelled while it waited; a displaced one is done already.
                if not job.future.done() and job.future.set_running_or_notify_cancel():
                    job.started = True
                    self._running += 1
                    break
            else:
                return
        priority, began = job.urgency.priority, time.monotonic()
        try:
            result, failure = job.fn(*job.args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, as an executor would
            result, failure = None, exc
        # Counted out before the caller hears: a job it submits next finds this thread free.
        with self._lock:
            self._running -= 1
            self._admitted -= 1
            self._ran[priority] += 1
            self._busy_s[priority] += time.monotonic() - began
        if failure is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(failure)

    def _forget_if_unstarted(self, job: _Job) -> None:
        # A job cancelled or displaced before a thread took it never runs, which would count it out.
        with self._lock:
            if not job.started:
                self._admitted -= 1
