"""Partial transcripts of the utterance while the user talks, and the final one ahead of time.

The growing utterance is transcribed every `interval_s` while words come (not in the silence
of a pause, which says nothing new), and at once when the
user pauses or falls quiet (`now()`): the pause's transcription does not wait for a periodic one
under way, since the end of the turn, and the reply, wait for it. At the end of
the turn, a transcript that already covers every voiced frame *is* the final transcript: the ASR ran during the end-of-turn
silence instead of after it. `covering()` returns it, waiting for one under way;
`upto()` also waits for the one the pause asked for to begin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pipeline.asr import SAMPLE_RATE, Transcriber, Transcript
from pipeline.errors import ASRBusy, TranscriptionError
from pipeline.inference import Priority, Urgency

log = logging.getLogger(__name__)

Spawn = Callable[[Awaitable[Transcript | None], str], "asyncio.Task[Transcript | None]"]


class PartialTranscripts:
    """One turn's partial transcripts. Run `run()` as a task; cancel it when the turn ends.

    `interval_s` None: no periodic partials (a turn shedding load), only those `now()` asks for.
    `give_way`: a periodic partial under way stops when `now()` asks for one.
    `pauses_give_way`: without periodic partials, a pause's transcription stops when the caller
        goes on (`talked_through`).
    `max_periodic_ms`: a periodic partial that took longer ends the turn's periodic partials (0: never).
    `spoken`: how much of the utterance runs up to the end of its last voiced frame (None: all of
        it). A periodic partial needs words past what the last transcription begun covers: the
        silence after a pause grows the utterance but says nothing new.

    Each transcription is its own task (made by `spawn`, so the call's TaskGroup owns it):
    cancelling `run()` at the end of the turn leaves a transcription under way to finish,
    because it may be the final transcript.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        utterance: Callable[[], bytes],
        *,
        spawn: Spawn,
        interval_s: float | None,
        min_new_ms: int = 200,
        give_way: bool = True,
        pauses_give_way: bool = True,
        max_periodic_ms: int = 0,
        spoken: Callable[[], int] | None = None,
    ) -> None:
        self._transcriber = transcriber
        self._utterance = utterance
        self._spoken = spoken
        self._spawn = spawn
        self._interval_s = interval_s
        self._give_way = give_way
        self._pauses_give_way = pauses_give_way
        self._max_periodic_s = max_periodic_ms / 1000 if max_periodic_ms > 0 else None
        self._began: dict[int, float] = {}  # when each transcription under way began (time.monotonic())
        self._min_new = SAMPLE_RATE * 2 * min_new_ms // 1000
        self._wake = asyncio.Event()
        self._latest: tuple[int, Transcript | None] | None = None
        # Transcriptions under way, by how much of the utterance each covers.
        self._running: dict[int, asyncio.Task[Transcript | None]] = {}
        # Their urgency in the ASR's lane: IDLE for a periodic one, AHEAD for one asked for (until hurried).
        self._urgency: dict[int, Urgency] = {}
        self._done = 0  # bytes of the utterance the last transcription begun covers
        self._changed = asyncio.Condition()
        self._stopped = False

    @property
    def periodic(self) -> bool:
        """Whether periodic partials are made (False: shed, or stopped as too slow for this turn)."""
        return self._interval_s is not None

    def now(self, *, unless_covered: int | None = None, unless_running: bool = False) -> None:
        """Transcribe what was said so far without waiting for the next interval (the user paused).

        unless_covered: not if a transcription of at least that much of the utterance is done,
        under way or about to start (one asked for at a lull before this pause).
        unless_running: not if one of this turn's transcriptions asked for is under way (a lull's
        head start is worth less than the ASR time it would queue behind that one, in a long turn
        seconds); nor, unless periodic ones give way, if a periodic one is.

        With `give_way`, a periodic transcription under way is given up (it stops at the encoder:
        pipeline.asr), so the one asked for here does not wait for it to end: a periodic partial
        was under way at about half the pauses, and the end of the turn waited for it.
        """
        if unless_covered is not None and (self._wake.is_set() or self._covers(unless_covered, surely=True)):
            return
        if unless_running and any(not (self._give_way and self._periodic(c)) for c in self._running):
            return
        if self._give_way:
            for covers in self._running:
                if self._periodic(covers):
                    self._urgency[covers].give_up()
                    # As if never begun, so the one asked for covers its audio even if nothing
                    # was said since it began.
                    self._forget_begun()
        self._wake.set()

    def talked_through(self) -> None:
        """The caller went on after a pause. Without periodic partials (shed under load, or stopped as
        too slow), the transcriptions asked for at it are given up: the next pause's transcription
        covers their words again (each transcribes the utterance from its start), and nothing shows
        them meanwhile, so they would only hold the ASR lane that every turn's end waits on. One
        still queued stops as it starts; one under way, at the encoder (pipeline.asr). With periodic
        partials, they are shown, and kept."""
        if self.periodic or not self._pauses_give_way:
            return
        for urgency in self._urgency.values():
            if urgency.priority is Priority.AHEAD:
                urgency.give_up()
        self._forget_begun()

    async def run(self, on_partial: Callable[[Transcript], Awaitable[None]]) -> None:
        try:
            await self._run(on_partial)
        finally:
            self._stopped = True
            await self._notify()

    async def _run(self, on_partial: Callable[[Transcript], Awaitable[None]]) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            poked = self._wake.is_set()
            self._wake.clear()
            if not poked and (self._running or self._interval_s is None):
                continue  # periodic partials go one at a time, and not at all once stopped
            audio = self._utterance()
            grown = len(audio) - self._done
            if grown <= 0 or (not poked and (grown < self._min_new or not self._new_words())):
                continue
            self._done = len(audio)
            # A periodic partial only shows the words so far: it runs on an idle ASR thread or not
            # at all. One asked for at a pause is made ahead of the turn's end: it queues, but behind
            # (and, when the lane is full, in place of nothing but) transcripts turns wait for.
            urgency = Urgency(Priority.AHEAD if poked else Priority.IDLE)
            task = self._spawn(self._transcribe(audio, urgency=urgency), "partial-transcript")
            self._running[len(audio)] = task
            self._urgency[len(audio)] = urgency
            self._began[len(audio)] = time.monotonic()
            await self._notify()
            self._spawn(self._publish(len(audio), task, on_partial), "partial-publish")

    async def _publish(
        self, covers: int, task: asyncio.Task[Transcript | None], on_partial: Callable[[Transcript], Awaitable[None]]
    ) -> None:
        """Keep a finished transcription as the latest (unless a longer one is), and show it while the turn runs."""
        transcript = await asyncio.shield(task)
        self._running.pop(covers, None)
        urgency = self._urgency.pop(covers, None)
        took_s = time.monotonic() - self._began.pop(covers)
        if (
            transcript is not None
            and urgency is not None
            and urgency.priority is Priority.IDLE
            and self._max_periodic_s is not None
            and took_s > self._max_periodic_s
            and self._interval_s is not None
        ):
            # The machine is too slow (or too busy) for them: each would hold the CPU that the
            # pause's transcript and the end-of-turn decision need. Pauses still ask for theirs.
            log.info("periodic partials stop for this turn: one took %d ms", 1000 * took_s)
            self._interval_s = None
        if transcript is None and urgency is not None and (urgency.priority is Priority.IDLE or not urgency.wanted):
            # A periodic one turned away (or failed), or any given up: as if never begun, so the next
            # one asked for covers its audio again. (One given up was counted out then: one asked
            # for since already covers it.)
            if urgency.wanted:
                self._forget_begun()
            await self._notify()
            return
        newest = self._latest is None or covers > self._latest[0]
        if newest:
            self._latest = (covers, transcript)
        await self._notify()
        if newest and not self._stopped and transcript is not None and transcript.text:
            await on_partial(transcript)

    def _new_words(self) -> bool:
        """Whether voiced audio came after what the last transcription begun covers. In the silence
        of a pause (a turn's end awaited, a caller thinking for 2 s) a periodic partial would only
        transcribe the same words again, on the CPU the reply's synthesis is then using: in one
        call, the first piece's synthesis took 320-500 ms of wall time for 130-220 ms of CPU
        beside such a partial."""
        return self._spoken is None or self._spoken() > self._done

    def _forget_begun(self) -> None:
        """Count what transcriptions begun since the latest transcript covered as not yet covered."""
        self._done = min(self._done, self._latest[0] if self._latest else 0)

    def hurry(self) -> None:
        """The turn has ended: its reply now waits for the transcriptions asked for at its pauses,
        so each still waiting in the ASR's queue goes before work done ahead for other turns."""
        for urgency in self._urgency.values():
            if urgency.priority is Priority.AHEAD:
                urgency.hurry()

    def _periodic(self, covers: int) -> bool:
        """Whether the transcription under way of `covers` bytes is a periodic one."""
        return self._urgency[covers].priority is Priority.IDLE

    async def _transcribe(self, audio: bytes, *, urgency: Urgency) -> Transcript | None:
        # A partial is a best effort: a failure here is not the turn's failure. The final
        # transcript is then made afresh, and that one reports its error.
        try:
            return await self._transcriber.transcribe(audio, priority=urgency)
        except ASRBusy as exc:
            # The ASR is busy: a periodic one is simply skipped (the next interval tries again);
            # one given up was not wanted.
            quiet = urgency.priority is Priority.IDLE or not urgency.wanted
            (log.debug if quiet else log.warning)("partial transcript not made: %s", exc)
            return None
        except TranscriptionError as exc:
            log.warning("partial transcript failed: %s", exc)
            return None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def upto(self, audio_bytes: int) -> Transcript | None:
        """Like `covering`, but first wait for such a transcript to begin (after `now()`).

        None when none will come: the transcription failed, or the turn's partials stopped.
        """
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._stopped or self._covers(audio_bytes, unfinished=True))
            transcript = await self.covering(audio_bytes)
            if transcript is not None or self._stopped or self._covers(audio_bytes, done=True):
                return transcript
            # Only a periodic one covered it, and the ASR turned it away: wait for the one asked for.

    def _covers(self, audio_bytes: int, *, surely: bool = False, unfinished: bool = False, done: bool = False) -> bool:
        """Whether a transcript of that much is done or under way. Of those under way, `surely`
        does not count a periodic one (the ASR may turn it away); `unfinished`, one finished but
        not yet published (waiting on it again would spin); `done`, any."""
        if self._latest is not None and self._latest[0] >= audio_bytes:
            return True
        return not done and any(
            covers >= audio_bytes
            and not (surely and self._periodic(covers))
            and not (unfinished and task.done())
            for covers, task in self._running.items()
        )

    async def covering(self, audio_bytes: int) -> Transcript | None:
        """A transcript of at least the first `audio_bytes` of the utterance, if one is done or under way."""
        if self._latest is not None and self._latest[0] >= audio_bytes:
            return self._latest[1]
        # The shortest first; one that came to nothing (turned away, given up) may still be here,
        # done, until its publishing runs: then a longer one under way is waited for. Returning
        # None for it instead would send `upto` round again at once, without ever yielding to the
        # loop that would finish the other: the whole server stuck, one core spinning.
        for _, task in sorted((c, t) for c, t in self._running.items() if c >= audio_bytes):
            if (transcript := await asyncio.shield(task)) is not None:
                return transcript
        return None
