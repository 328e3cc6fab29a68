"""The turn loop: one per call, from the user's speech (or text) to the bot's spoken reply.

VAD speech start → partial transcripts while the user talks → end of turn →
final transcript → LLM with the dialog history → reply text streamed out and,
one sentence at a time, through TTS to the speaker → both turns stored.

Each user turn gets a `Reply` whose work runs in one task of the loop's
TaskGroup, so it can be cancelled at any point:
- continuation: the user speaks again within `continuation_window_ms` of the end
  of their turn, before they can have heard the reply (`continuation_heard_ms`);
  the reply is dropped unsaid and both stretches of speech are transcribed as one
  turn (people pause mid-sentence);
- barge-in: the user speaks while the bot talks; the bot stops at once and what
  is stored as its turn is the text actually played.

When the user pauses (`pause_ms`), the pause is judged (pipeline.end_of_turn):
the end-of-turn model and the words said so far decide how much silence ends this
turn, short if the caller sounds finished, long if they stopped mid-sentence.
The words are transcribed from a shorter lull on (`transcribe_ms`), so they are
ready sooner.

Replies are drafted speculatively: at the pause, well before the end-of-turn
silence is over, a draft reply starts on what was said so far: transcript, LLM
and the first sentence's speech, all unheard, its events held. When the turn ends
with nothing more said, the draft is released and the bot speaks at once; a voiced
frame before that cancels it, and the next pause drafts anew.

Who has the floor is decided in one place, pipeline.turn_state: every voiced frame,
VAD event, typed message and reply milestone goes through its policy, and this
module only carries out the actions it returns (one event at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from media.frames import AudioFrame
from pipeline.asr import Transcriber, Transcript
from pipeline.config import TurnConfig, VADConfig
from pipeline.dialog_buffer import DialogBuffer, DialogBufferFull
from pipeline.dialog_store import DialogStore, Fence, Turn, reply_turn_id
from pipeline.history_window import history_window
from pipeline.end_of_turn import EndOfTurn, Judgement
from pipeline.errors import LLMBusy, LLMError, SynthesisError, TranscriptionError
from pipeline.events import (
    ReplyDelta,
    State,
    ReplyDone,
    ReplyRestarted,
    StateChanged,
    TranscriptEvent,
    TurnError,
    TurnEvent,
    TurnMetrics,
)
from pipeline.llm_client import CappedSink, Message, PromptUsage, UsageSink
from pipeline.partials import PartialTranscripts
from pipeline.playout import Playout
from pipeline.sentences import SentenceSplitter, ends_sentence
from pipeline.shedding import FULL, Planner, TurnPlan
from pipeline.tts import Synthesizer
from pipeline.turn_model import TurnCompletionModel
from pipeline.turn_state import (
    Action,
    CallerEnded,
    CallerPaused,
    CallerStarted,
    Event,
    Heard,
    PolicyConfig,
    ReplyAudible,
    ReplyFinished,
    ReplyRequested,
    TurnPolicy,
)
from pipeline.vad import SAMPLE_RATE, SpeechLull, SpeechPaused, SpeechStarted, TurnEnded, VoiceActivityDetector

log = logging.getLogger(__name__)


class ChatModel(Protocol):
    """What the turn loop needs of the LLM: a system prompt and a stream of text deltas."""

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]: ...

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        dialog_id: str | None = None,
        on_usage: UsageSink | None = None,
        max_tokens: int | None = None,
        on_capped: CappedSink | None = None,
    ) -> AsyncIterator[str]: ...

    async def prime(self, messages: Sequence[Message], *, dialog_id: str) -> bool: ...


class Speaker(Protocol):
    """Where the bot's voice goes (the outbound WebRTC track)."""

    async def play(self, pcm: bytes, sample_rate: int, text: str) -> None:
        """Queue speech; `text` is what this audio says, for accounting what was played."""

    def hold(self) -> None:
        """Pause at once, keeping what is queued."""

    def resume(self) -> None:
        """Go on after `hold`."""

    def interrupt(self) -> str:
        """Drop all queued audio at once; return the text played since the last `interrupt` or `drained`."""

    async def drained(self) -> str:
        """Wait until all queued audio has played; return the text played."""

    async def next_heard(self) -> str:
        """Wait until one more queued piece has played to its end; return all the text played
        since the last `interrupt` or `drained` (without taking it)."""


Emit = Callable[[TurnEvent], Awaitable[None]]


def _released() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(slots=True)
class Reply:
    """The bot's answer to one user turn, while it is being made."""

    turn_id: str
    user_started_at: float
    user_audio: bytes = b""
    ended_at_mono: float = field(default_factory=time.monotonic)
    user_text: str = ""
    text: str = ""
    speaking: bool = False
    task: asyncio.Task[None] | None = None
    # A draft (made during the end-of-turn silence) works unheard until `released` is set:
    # its events wait in `held`, its speech before its first frame. `covers`: the bytes of the
    # utterance it answers.
    released: asyncio.Event = field(default_factory=_released)
    held: list[TurnEvent] = field(default_factory=list)
    covers: int = 0
    drafted_at_mono: float | None = None
    # How the user's turn ended: the silence waited after their last voiced frame, and the
    # judgement of the pause that set it (None: silence alone, or a typed turn).
    end_silence_ms: float | None = None
    judgement: Judgement | None = None
    # The reply's prompt as the LLM server handled it, once it says; the metrics event sent.
    prompt: PromptUsage | None = None
    reported: TurnMetrics | None = None
    # What the turn does at the load it began under (pipeline.shedding).
    plan: TurnPlan = FULL
    # Part of the reply was stored as heard while it played (so a void reply must be unstored).
    heard_stored: bool = False
    # The final transcription of the turn, a task of its own; `keep_transcript`: it outlives
    # the reply (talked over before its words were out, they still stand).
    transcript: asyncio.Task[bool] | None = None
    keep_transcript: bool = False


class TurnLoop:
    """A call's turns. `run()` owns every task of it; cancelling `run()` ends them all."""

    def __init__(
        self,
        *,
        dialog_id: str,
        store: DialogStore,
        llm: ChatModel,
        transcriber: Transcriber,
        synthesizer: Synthesizer,
        emit: Emit,
        vad_config: VADConfig = VADConfig(),
        config: TurnConfig = TurnConfig(),
        turn_model: TurnCompletionModel | None = None,
        planner: Planner | None = None,
        fence: Fence | None = None,
    ) -> None:
        """`planner` says, as each turn begins, what it may leave out under load (pipeline.shedding);
        `fence`, when the dialog may be written (while this replica owns the session)."""
        self.dialog_id = dialog_id
        self._planner = planner or (lambda: FULL)
        self._plan = FULL  # the current spoken turn's
        self.config = config
        self._dialog = DialogBuffer(store, dialog_id, fence=fence)
        self._llm = llm
        self._transcriber = transcriber
        self._synthesizer = synthesizer
        self._emit = emit
        self._vad = VoiceActivityDetector(vad_config)
        self._end_of_turn = EndOfTurn(turn_model, vad=vad_config, turns=config)
        self._judging: asyncio.Task[None] | None = None
        self._judgement: Judgement | None = None
        self._pause_covers = 0  # speech bytes the judged pause follows
        self._rechecked = False
        self._speaker: Speaker | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._reply: Reply | None = None
        self._draft: Reply | None = None
        # A reply stopped before a word of it was heard, by a caller who began a turn: if that
        # turn comes to nothing (a cough, a fragment after a turn cut for its length), the
        # stopped reply's turn is answered after all; a turn with words answers both.
        self._owed: Reply | None = None
        self._partials: PartialTranscripts | None = None
        self._partials_task: asyncio.Task[None] | None = None
        # Speech of a turn being continued, and its id: the merged turn keeps the id, so a
        # client replaces that turn's final transcript rather than showing two turns.
        self._carry = b""
        self._carry_turn_id: str | None = None
        self._turn_id = ""
        self._texts: asyncio.Queue[str] = asyncio.Queue(maxsize=8)
        self._audio_attached = asyncio.Event()
        self._running = asyncio.Event()
        self._state = ""
        self._policy = TurnPolicy(PolicyConfig(
            continuation_window_ms=config.continuation_window_ms,
            continuation_heard_ms=config.continuation_heard_ms, hold_resume_ms=config.hold_resume_ms,
            judges=self._end_of_turn.judges, drafts=config.speculative,
        ))
        # One event and its actions at a time: a typed message and the end of a spoken turn
        # must not interleave their stops and starts.
        self._turn_taking = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the call's turns until cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._running.set()
                tasks.create_task(self._dialog.run(), name=f"dialog-{self.dialog_id}")
                tasks.create_task(self._text_turns(), name=f"texts-{self.dialog_id}")
        finally:
            await asyncio.shield(self._save_on_hangup())

    async def _save_on_hangup(self) -> None:
        """Keep what the caller heard of a reply cut by the hang-up, and give unsaved turns a last
        chance to reach Redis before the call's state is gone."""
        reply = self._reply
        if reply is not None and reply.speaking and reply.user_text and self._speaker is not None:
            if played := self._speaker.interrupt():
                self._commit_bot(reply, played, interrupted=True)
        if not await self._dialog.flush(timeout_s=3.0):
            log.error("dialog %s: %d turn(s) lost: Redis stayed unavailable", self.dialog_id, self._dialog.pending)

    def attach_audio(self, frames: AsyncIterable[AudioFrame], speaker: Speaker) -> None:
        """Start listening to the call's audio and speaking into `speaker` (after WebRTC is up)."""
        if self._tasks is None:
            raise RuntimeError("Cannot attach audio: the turn loop is not running")
        self._speaker = speaker
        self._audio_attached.set()
        self._tasks.create_task(self._audio_turns(frames), name=f"audio-{self.dialog_id}")

    async def answer_again(self, turn: Turn, *, wait_for_voice_s: float = 0.0) -> None:
        """Answer a stored caller turn whose reply was cut when the call moved here (its replica
        died or the client dropped mid-reply): from the beginning, spoken if the call's audio is
        attached within `wait_for_voice_s` (a resumed voice call offers again at once)."""
        await self._running.wait()
        reply = Reply(turn_id=turn.turn_id, user_started_at=turn.started_at, user_text=turn.text, plan=self._planner())

        async def answer() -> None:
            if wait_for_voice_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_for_voice_s):
                        await self._audio_attached.wait()
            await self._emit(ReplyRestarted(reply.turn_id))
            await self._answer(reply)

        log.info("turn %s was left unanswered; answering it again", turn.turn_id)
        await self._apply(ReplyRequested(), start=lambda: self._start_reply(reply, answer()))

    def submit_text(self, text: str) -> bool:
        """Queue a typed message as a user turn; False when too many are waiting (the caller says busy)."""
        try:
            self._texts.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    # -- inputs ------------------------------------------------------------------------------

    async def _audio_turns(self, frames: AsyncIterable[AudioFrame]) -> None:
        async for frame in frames:
            event = self._vad.push(frame)
            await self._apply(Heard(self._vad.last_voiced, frame.duration_ms))
            if isinstance(event, SpeechStarted):
                await self._apply(CallerStarted(self._since_turn_end_ms()))
            elif isinstance(event, SpeechLull):
                # The pause judges the turn on its words: transcribing them begins now, a little sooner.
                # A lull talked through costs a transcription, so a turn without periodic partials
                # (shed, or stopped as too slow) skips it.
                assert self._partials is not None  # a lull is always within a turn
                if self._partials.periodic:
                    self._partials.now(unless_running=True)
            elif isinstance(event, SpeechPaused):
                assert self._partials is not None  # a pause is always within a turn
                self._pause_covers = len(self._carry) + event.speech_bytes
                self._partials.now(unless_covered=self._pause_covers)
                await self._apply(CallerPaused(may_draft=self._plan.drafts and self._speaker is not None))
            elif isinstance(event, TurnEnded):
                await self._on_turn_ended(event)
            elif self._should_recheck():
                self._rechecked = True
                self._start_judging(again=True)

    def _since_turn_end_ms(self) -> float | None:
        """How long ago the spoken turn the reply in progress answers ended (None: no such reply)."""
        reply = self._reply
        if reply is None or not reply.user_audio:
            return None
        return 1000 * (time.monotonic() - reply.ended_at_mono)

    def _start_judging(self, *, again: bool = False) -> None:
        """Judge the pause. `again`: a pause judged unfinished heard once more, with all the
        silence behind it so far."""
        assert self._partials is not None
        upto = functools.partial(self._partials.upto, self._pause_covers)
        silence_ms = None if again else self._end_of_turn.silence_heard_ms
        audio = functools.partial(self._heard_by_model, self._pause_covers, silence_ms)
        # A pause judged again is heard once, with all its silence: its words are in.
        at_once = not again and self._plan.early_judgements
        by_words = not again and not self._plan.audio_judgements
        self._judging = self._tasks.create_task(
            self._judge(audio, upto, at_once=at_once, by_words=by_words), name=f"judge-{self._turn_id}"
        )

    def _heard_by_model(self, covers: int, silence_ms: int | None) -> bytes:
        """The turn as the end-of-turn model hears it when it runs: the speech the pause follows
        (`covers` bytes) and the silence since, at most `silence_ms` of it (None: all)."""
        audio = self._carry + self._vad.utterance()
        if silence_ms is None:
            return audio
        return audio[: covers + max(silence_ms, self._vad.config.pause_ms) * SAMPLE_RATE // 1000 * 2]

    def _should_recheck(self) -> bool:
        """A pause the model alone called unfinished is judged once more as its silence grows."""
        judgement, recheck_ms = self._judgement, self.config.recheck_silence_ms
        return (
            judgement is not None
            and judgement.by_audio_alone
            and not self._rechecked
            and 0 < recheck_ms <= self._vad.silence_ms
            and self._vad.speaking
            and self._partials is not None
        )

    async def _text_turns(self) -> None:
        while True:
            text = (await self._texts.get()).strip()
            try:
                if not text:
                    continue
                reply = Reply(turn_id=uuid.uuid4().hex, user_started_at=time.time(), user_text=text, plan=self._planner())

                def start(reply: Reply = reply) -> None:
                    self._commit_user(reply)
                    self._start_reply(reply, self._answer(reply))

                await self._apply(ReplyRequested(), start=start)
            finally:
                self._texts.task_done()  # its reply has begun (`quiet` waits for that)

    def _begin_turn(self) -> None:
        """A caller turn begins (or a voided one goes on, in `_carry`): its id, its partial transcripts."""
        self._vad.start_speech_ms = self._vad.config.start_speech_ms
        self._vad.carried_ms = len(self._carry) / 32  # 16 kHz, 16-bit
        # The turn's id is fixed when it starts, so partial and final transcripts share it.
        self._turn_id, self._carry_turn_id = self._carry_turn_id or uuid.uuid4().hex, None
        plan = self._plan = self._planner()
        if plan.shed:
            log.info("turn %s sheds %s under load", self._turn_id, ", ".join(plan.shed))
        self._partials = PartialTranscripts(
            self._transcriber,
            lambda: self._carry + self._vad.utterance(),
            spawn=lambda work, name: self._tasks.create_task(work, name=f"{name}-{self.dialog_id}"),
            interval_s=self._transcriber.config.partial_interval_ms / 1000 if plan.partials else None,
            give_way=self._transcriber.config.partials_give_way,
            pauses_give_way=self._transcriber.config.pauses_give_way,
            max_periodic_ms=self._transcriber.config.partial_max_ms,
            spoken=lambda: len(self._carry) + self._vad.speech_bytes,
        )
        self._partials_task = self._tasks.create_task(
            self._partials.run(functools.partial(self._on_partial, self._turn_id)), name=f"partials-{self.dialog_id}"
        )
        # The dialog so far is read at once, before a word is transcribed: a turn that sheds its
        # partial transcripts still leaves the reply only the caller's words to read.
        if self._may_prime():
            self._tasks.create_task(self._prime(self._turn_id, ""), name=f"prime-{self.dialog_id}")

    async def _on_partial(self, turn_id: str, transcript: Transcript) -> None:
        """A partial transcript: shown to the caller, and read by the LLM server ahead of the reply."""
        await self._emit(TranscriptEvent(turn_id, transcript.text, final=False))
        await self._prime(turn_id, transcript.text)

    def _may_prime(self) -> bool:
        """Priming is asked for (`prime_llm`) and no reply or draft is under way to need the LLM."""
        return self.config.prime_llm and self._draft is None and self._reply is None

    async def _prime(self, turn_id: str, words: str) -> None:
        """Have the LLM server read the reply's prompt as far as it is known (the dialog, and the
        caller's `words` so far) while the caller talks, so the end of the turn leaves only the
        last words to read."""
        if self._may_prime():
            messages = self._llm.with_system_prompt(
                [*(await self._history(before=turn_id)), {"role": "user", "content": words}]
            )
            await self._llm.prime(messages, dialog_id=self.dialog_id)

    async def _judge(
        self,
        audio: Callable[[], bytes],
        transcript: Callable[[], Awaitable[Transcript | None]],
        *,
        at_once: bool,
        by_words: bool,
    ) -> None:
        """Decide, at a pause, how much silence ends this turn (pipeline.end_of_turn)."""
        try:
            judgement = await self._end_of_turn.judge(audio, transcript, at_once=at_once, by_words=by_words)
        except Exception:
            # A judgement is never worth the call: the turn falls back on silence alone.
            log.exception("turn %s: the pause could not be judged", self._turn_id)
            self._vad.end_silence_ms = self.config.unjudged_silence_ms
            return
        self._judgement = judgement
        self._vad.end_silence_ms = judgement.end_silence_ms
        if judgement.by_words_alone:
            verdict, model = "finished by its words", "not heard"
        elif judgement.probability is None:
            verdict, model = "unjudged", "failed"
        else:
            verdict = "finished" if judgement.end_silence_ms < self.config.incomplete_silence_ms else "unfinished"
            model = f"{judgement.probability:.2f}"
        log.info(
            "turn %s: pause judged %s after %d ms of silence (model %s in %s ms, words %s: %s): ends after %d ms of silence",
            self._turn_id,
            verdict,
            self._vad.silence_ms,
            model,
            "-" if judgement.model_ms is None else f"{judgement.model_ms:.0f}",
            {None: "not read", True: "unfinished", False: "may end"}[judgement.unfinished_text],
            self._loggable(judgement.words or ""),
            judgement.end_silence_ms,
        )

    def _loggable(self, said: str) -> str:
        """What a caller said, as the log may have it: the words only with `log_transcripts`."""
        return repr(said) if self.config.log_transcripts else f"<{len(said.split())} words>"

    async def _forget_judgement(self) -> None:
        """The user speaks again: the pause judged is over, and the turn waits for the next one."""
        judging, self._judging, self._judgement = self._judging, None, None
        self._rechecked = False
        if judging is not None and not judging.done():
            judging.cancel()
            await asyncio.wait([judging])
        self._vad.end_silence_ms = self._end_of_turn.silence_before_judgement()

    async def _start_draft(self, covers: int) -> None:
        """Start answering what was said so far, unheard, while the end-of-turn silence runs."""
        await self._drop_draft()
        audio = self._carry + self._vad.utterance()
        draft = self._draft = Reply(
            turn_id=self._turn_id, user_started_at=0.0, user_audio=audio, released=asyncio.Event(), covers=covers,
            drafted_at_mono=time.monotonic(), plan=self._plan,
        )
        draft.task = self._reply_task(draft, self._respond(draft, self._partials, covers), f"draft-{draft.turn_id}")

    async def _drop_draft(self) -> None:
        draft, self._draft = self._draft, None
        if draft is not None and draft.task is not None:
            log.debug("turn %s: draft dropped, the user went on", draft.turn_id)
            draft.task.cancel()
            await asyncio.wait([draft.task])

    async def _on_turn_ended(self, event: TurnEnded) -> None:
        judgement, partials = self._judgement, self._partials
        speech_bytes = len(self._carry) + event.speech_bytes
        audio = self._carry + event.audio
        user_started_at = time.time() - len(audio) / 32000
        draft = self._draft

        async def release() -> None:
            # Nothing more was said: the draft is the reply, ahead by the end-of-turn silence.
            assert draft is not None
            self._draft = None
            draft.user_audio, draft.user_started_at, draft.ended_at_mono = audio, user_started_at, time.monotonic()
            draft.end_silence_ms, draft.judgement = event.silence_ms, judgement
            self._reply = draft
            await self._release(draft)
            if draft.task is not None and draft.task.done():
                self._finished(draft)  # it came to nothing (no speech) before its release

        def start() -> None:
            reply = Reply(
                turn_id=self._turn_id, user_started_at=user_started_at, user_audio=audio,
                end_silence_ms=event.silence_ms, judgement=judgement, plan=self._plan,
            )
            self._start_reply(reply, self._respond(reply, partials, speech_bytes))

        covers = draft is not None and draft.covers == speech_bytes
        # No silence ended it: it ran past max_turn_ms (or the stream ended).
        cut = event.silence_ms == 0
        await self._apply(CallerEnded(draft_covers=covers, cut=cut), start=start, release=release)

    def _end_turn(self) -> None:
        """The caller's turn is over: its partial transcripts stop; what it said goes to its reply."""
        if self._partials is not None:
            self._partials.hurry()  # the reply waits for them now
        if self._partials_task is not None:
            self._partials_task.cancel()
            self._partials_task = None
        self._partials, self._carry = None, b""

    # -- turn-taking -------------------------------------------------------------------------

    async def _apply(
        self,
        event: Event,
        *,
        start: Callable[[], None] | None = None,
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Put one event to the turn-taking policy and carry out its actions, in order. `start`
        begins the reply the event is about; `release` makes the pause's draft the reply."""
        async with self._turn_taking:
            actions = self._policy.on(event)
            stopping = None
            if Action.STOP_REPLY in actions or Action.VOID_REPLY in actions:
                # Detached at once, before any await: its last events (heard, finished) are no
                # longer the current reply's.
                stopping, self._reply = self._reply, None
            for action in actions:
                match action:
                    case Action.HOLD | Action.RESUME:
                        self._hold(action)
                    case Action.STOP_REPLY | Action.VOID_REPLY:
                        await self._stop_reply(stopping, barge_in=action is Action.STOP_REPLY)
                    case Action.BEGIN_TURN | Action.CONTINUE_TURN:
                        self._begin_turn()
                    case Action.JUDGE_PAUSE:
                        self._start_judging()
                    case Action.FORGET_JUDGEMENT:
                        await self._forget_judgement()
                    case Action.TALKED_THROUGH:
                        assert self._partials is not None  # a pause is always within a turn
                        self._partials.talked_through()
                    case Action.START_DRAFT:
                        await self._start_draft(self._pause_covers)
                    case Action.DROP_DRAFT:
                        await self._drop_draft()
                    case Action.END_TURN:
                        self._end_turn()
                    case Action.START_REPLY if start is not None:
                        start()
                    case Action.RELEASE_DRAFT if release is not None:
                        await release()
                    case _:
                        raise RuntimeError(f"{action.value}: nothing to carry it out after {type(event).__name__}")

    def _hold(self, action: Action) -> None:
        if self._speaker is not None:
            self._speaker.hold() if action is Action.HOLD else self._speaker.resume()

    def _reply_event(self, reply: Reply, event: ReplyAudible | ReplyFinished) -> bool:
        """Tell the policy of a milestone of `reply`, if it is still the current one (a reply
        stopped, or a draft not released, is no longer the policy's business)."""
        if reply is not self._reply:
            return False
        for action in self._policy.on(event):
            self._hold(action)  # a reply's own milestones only ever hold or resume
        return True

    def _finished(self, reply: Reply) -> None:
        if self._reply_event(reply, ReplyFinished()):
            self._reply = None

    # -- replies -----------------------------------------------------------------------------

    async def quiet(self) -> None:
        """Return once no reply is being made or spoken and no typed turn waits: a moment to hang up."""
        while True:
            await self._texts.join()  # every typed turn taken has its reply begun
            reply = self._reply
            if reply is None or reply.task is None or reply.task.done():
                return
            await asyncio.wait([reply.task])

    def _start_reply(self, reply: Reply, work: Coroutine[Any, Any, None]) -> None:
        self._reply = reply
        reply.task = self._reply_task(reply, work, f"reply-{reply.turn_id}")

    def _reply_task(self, reply: Reply, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = self._tasks.create_task(self._within_boundary(reply, work), name=name)
        # A reply stopped before its task first ran (frames queued behind the one that ended the
        # turn, the caller already going on) never starts `work`: it is closed here rather than
        # left to the garbage collector's "coroutine was never awaited" warning.
        task.add_done_callback(lambda _: work.close())
        return task

    async def _within_boundary(self, reply: Reply, work: Awaitable[None]) -> None:
        """A reply's (or a draft's) error boundary: anything unexpected fails this turn, said once
        with its traceback in the log and as `internal_error` to the caller; the call goes on."""
        try:
            await work
        except Exception:  # noqa: BLE001 - the boundary of one turn
            log.exception("call %s: turn %s failed", self.dialog_id, reply.turn_id)
            await self._say(reply, TurnError("internal_error", "the server failed on this turn; the call goes on"))
            await self._say(reply, StateChanged("listening"))
        finally:
            self._finished(reply)

    async def _stop_reply(self, reply: Reply | None, *, barge_in: bool) -> None:
        """Cancel a reply in flight. On barge-in, keep what the user heard; on continuation, nothing
        (the turn it answered goes on, in `_carry`, under the same id)."""
        if reply is None or reply.task is None:
            return
        if not barge_in:
            log.info("turn %s continues; its reply is dropped", reply.turn_id)
            self._carry, self._carry_turn_id = reply.user_audio, reply.turn_id
        if reply.task.done():
            return
        # Talked over before its words were out (a turn cut for its length, the caller still
        # talking): what they said stands, transcribed and stored on its own.
        reply.keep_transcript = bool(
            barge_in and reply.user_audio and not reply.user_text and reply.released.is_set()
        )
        reply.task.cancel()
        # Wait for it to end without raising its CancelledError (ours still propagates).
        await asyncio.wait([reply.task])
        played = self._speaker.interrupt() if self._speaker is not None else ""
        if barge_in and not reply.speaking and (reply.user_text or reply.keep_transcript):
            self._owed = reply
        if reply.keep_transcript and reply.transcript is None:
            # Stopped before its transcription began.
            reply.transcript = self._tasks.create_task(
                self._contained(reply, self._final_transcript(reply, None, 0)), name=f"transcript-{reply.turn_id}"
            )
        if barge_in and reply.user_text:
            kept = played if reply.speaking else ""
            self._commit_bot(reply, kept, interrupted=True)
            await self._emit(ReplyDone(reply.turn_id, kept, interrupted=True))
        else:
            self._commit_bot(reply, "", interrupted=True)  # the caller went on after a pause: void
        await self._set_state("listening")

    async def _respond(self, reply: Reply, partials: PartialTranscripts | None, speech_bytes: int) -> None:
        """A spoken turn: transcribe it, then answer it, unless it was no speech at all.

        Usually the transcript made when the user paused already covers every word, and is used
        (a draft waits for it to begin).
        """
        await self._say(reply, StateChanged("thinking"))
        started = time.monotonic()
        # Its own task: a reply talked over while it transcribes (a turn cut for its length,
        # the caller still talking) leaves the transcription to finish rather than begin again.
        transcript = reply.transcript = self._tasks.create_task(
            self._contained(reply, self._final_transcript(reply, partials, speech_bytes)),
            name=f"transcript-{reply.turn_id}",
        )
        try:
            transcribed = await asyncio.shield(transcript)
        except asyncio.CancelledError:
            if not reply.keep_transcript:
                transcript.cancel()
            raise
        if not transcribed:
            if not await self._answer_owed(reply):
                await self._say(reply, StateChanged("listening"))
            return
        await self._answer(reply, {"asr": 1000 * (time.monotonic() - started)})

    async def _answer_owed(self, reply: Reply) -> bool:
        """This turn was no speech: answer, in its place, the turn whose reply it stopped (False: none)."""
        if self._owed is None:
            return False
        await reply.released.wait()  # a draft's turn may yet go on, with words
        owed, self._owed = self._owed, None
        if owed is None:
            return False
        if owed.transcript is not None and not owed.user_text:
            await asyncio.shield(owed.transcript)  # the kept transcription of a turn cut for its length
        if not owed.user_text:
            return False
        log.info("turn %s was no speech: turn %s, whose reply it stopped, is answered", reply.turn_id, owed.turn_id)
        reply.turn_id, reply.user_text = owed.turn_id, owed.user_text
        await self._answer(reply)
        return True

    async def _contained(self, reply: Reply, work: Awaitable[bool]) -> bool:
        """`work` in a task of its own that must not end the call: anything unexpected fails the turn."""
        try:
            return await work
        except Exception:  # noqa: BLE001 - the boundary of one turn's transcript
            log.exception("call %s: the transcript of turn %s failed", self.dialog_id, reply.turn_id)
            await self._say(reply, TurnError("internal_error", "the server failed on this turn; the call goes on"))
            return False

    async def _final_transcript(self, reply: Reply, partials: PartialTranscripts | None, speech_bytes: int) -> bool:
        """The turn's final transcript, said and (once the reply is released) stored as the caller's
        turn; False when it failed or was no speech at all."""
        try:
            transcript = None
            if partials is not None:
                draft = not reply.released.is_set()
                transcript = await (partials.upto if draft else partials.covering)(speech_bytes)
            if transcript is None:
                transcript = await self._transcriber.transcribe(reply.user_audio)
        except TranscriptionError as exc:
            await self._say(reply, TurnError("asr_failed", str(exc)))
            return False
        if transcript.heard_nothing(self.config.max_no_speech_prob, self.config.no_speech_max_words):
            log.info("no turn: %s (no-speech probability %.2f)", self._loggable(transcript.text), transcript.no_speech_prob)
            return False
        reply.user_text = transcript.text
        await self._say(reply, TranscriptEvent(reply.turn_id, transcript.text, final=True))
        if reply.released.is_set():
            self._commit_user(reply)  # a draft's waits for its release: the caller may go on
        return True

    async def _answer(self, reply: Reply, stages: dict[str, float] | None = None) -> None:
        """Ask the LLM with the dialog so far, stream the reply out, speak it, store both turns."""
        self._owed = None  # the dialog so far holds the turn a stopped reply answered
        stages = dict(stages or {})
        await self._say(reply, StateChanged("thinking"))
        messages = self._llm.with_system_prompt(
            [*(await self._history(before=reply.turn_id)), {"role": "user", "content": reply.user_text}]
        )
        sentences: asyncio.Queue[str | None] = asyncio.Queue(maxsize=16)
        speech = None
        if self._speaker is not None:
            speech = self._tasks.create_task(self._speak(reply, sentences, stages), name=f"speak-{reply.turn_id}")
        kept = ""
        try:
            try:
                await self._generate(reply, messages, sentences, stages)
                kept = reply.text
            except LLMError as exc:
                busy = isinstance(exc, LLMBusy)
                await self._say(reply, TurnError("llm_busy" if busy else "llm_unavailable", str(exc)))
                if reply.text:
                    # Cut off mid-answer: what was said stands, and is what the dialog keeps.
                    kept = reply.text = reply.text.strip()
                else:
                    # The stock line is said but not kept: it is no part of the conversation, and
                    # a dialog full of apologies would only crowd the model's context.
                    reply.text = self.config.busy_line if busy else self.config.fallback_line
                    await self._say(reply, ReplyDelta(reply.turn_id, reply.text))
                    await sentences.put(reply.text)
                await sentences.put(None)
            if speech is not None:
                await speech
                if reply.reported is not None and reply.reported.prompt is None and reply.prompt is not None:
                    # The server told the prompt's figures only with its last chunk (OpenAI usage):
                    # the turn's metrics again, complete.
                    await self._emit(TurnMetrics(reply.turn_id, reply.reported.stages_ms, reply.prompt))
            elif reply.text:
                # No voice to time (a call without audio): the figures go out with the reply's end.
                await self._say(reply, TurnMetrics(reply.turn_id, dict(stages), reply.prompt))
        except BaseException:
            # Cancelled (barge-in, continuation, hang-up) or failed: the speech goes too, and is
            # waited for, so nothing of this reply reaches the speaker after we return.
            if speech is not None and not speech.done():
                speech.cancel()
                await asyncio.wait([speech])
            raise
        await reply.released.wait()  # a draft is only kept once the turn it answers has ended
        self._commit_bot(reply, kept, interrupted=False)
        await self._emit(ReplyDone(reply.turn_id, reply.text))
        await self._set_state("listening")

    async def _generate(
        self, reply: Reply, messages: list[Message], sentences: asyncio.Queue[str | None], stages: dict[str, float]
    ) -> None:
        splitter = SentenceSplitter(
            first_clause_words=self.config.first_clause_words, first_phrase_words=self.config.first_phrase_words
        )
        started = time.monotonic()
        capped = False

        def prompt_read(usage: PromptUsage) -> None:
            reply.prompt = usage

        def stopped_at_cap() -> None:
            nonlocal capped
            capped = True

        stream = self._llm.stream_chat(
            messages, dialog_id=self.dialog_id, on_usage=prompt_read, max_tokens=reply.plan.max_tokens,
            on_capped=stopped_at_cap,
        )
        # Closed here when the reply is cancelled between deltas (barge-in), so the request, and any
        # asked beside it, stop at once rather than when the stream is collected.
        async with contextlib.aclosing(stream):
            async for delta in stream:
                if not reply.text:
                    stages["llm_first_token"] = 1000 * (time.monotonic() - started)
                reply.text += delta
                await self._say(reply, ReplyDelta(reply.turn_id, delta))
                for sentence in splitter.push(delta):
                    stages.setdefault("first_sentence", 1000 * (time.monotonic() - started))
                    await sentences.put(sentence)
        if (rest := splitter.flush()) is not None:
            if capped and "first_sentence" in stages and not ends_sentence(rest):
                # The token cap stopped the reply mid-sentence ("..., which is a"): the bot stops
                # after its last whole piece, and the dialog keeps what it said.
                reply.text = reply.text.rstrip()[: -len(rest)]
            else:
                stages.setdefault("first_sentence", 1000 * (time.monotonic() - started))
                await sentences.put(rest)
        reply.text = reply.text.strip()
        await sentences.put(None)

    async def _speak(self, reply: Reply, sentences: asyncio.Queue[str | None], stages: dict[str, float]) -> None:
        assert self._speaker is not None
        heard = self._tasks.create_task(self._store_heard(reply), name=f"heard-{reply.turn_id}")
        try:
            await self._speak_sentences(reply, sentences, stages)
        finally:
            heard.cancel()
            await asyncio.wait([heard])

    async def _store_heard(self, reply: Reply) -> None:
        """Store the bot's turn as far as it has played, a piece at a time: a replica that dies
        mid-reply leaves in Redis what the caller heard (marked interrupted). The reply's end,
        a barge-in or the hang-up stores it again, whole, in the same place."""
        assert self._speaker is not None
        while True:
            heard = await self._speaker.next_heard()
            if heard and reply.released.is_set():
                self._commit_bot(reply, heard, interrupted=True)
                reply.heard_stored = True

    async def _speak_sentences(
        self, reply: Reply, sentences: asyncio.Queue[str | None], stages: dict[str, float]
    ) -> None:
        assert self._speaker is not None
        playout = Playout(self.config.synthesis_slack_s)
        try:
            await self._speak_each(reply, sentences, stages, playout)
        finally:
            playout.close()
        await self._speaker.drained()
        # Barge-in works faster while the bot talks; back to normal once it is quiet.
        self._vad.start_speech_ms = self._vad.config.start_speech_ms

    async def _speak_each(
        self, reply: Reply, sentences: asyncio.Queue[str | None], stages: dict[str, float], playout: Playout
    ) -> None:
        """Synthesise and play each sentence as it comes, until the reply's end (None)."""
        assert self._speaker is not None
        while (sentence := await sentences.get()) is not None:
            started = time.monotonic()
            try:
                async for pcm in self._synthesizer.stream(sentence, urgency=playout.urgency):
                    if not reply.speaking:
                        stages["tts_first_audio"] = 1000 * (time.monotonic() - started)
                        await reply.released.wait()  # a draft's first audio waits, ready, for the end of turn
                        reply.speaking = True
                        self._reply_event(reply, ReplyAudible())
                        now = time.monotonic()
                        playout.audible(now)
                        stages["end_of_turn_to_first_audio"] = 1000 * (now - reply.ended_at_mono)
                        if reply.drafted_at_mono is not None:
                            stages["draft_lead"] = 1000 * (reply.ended_at_mono - reply.drafted_at_mono)
                        if reply.end_silence_ms is not None:
                            stages["end_of_turn_silence"] = reply.end_silence_ms
                        if reply.judgement is not None and reply.judgement.model_ms is not None:
                            stages["end_of_turn_model"] = reply.judgement.model_ms
                        self._vad.start_speech_ms = self.config.barge_in_speech_ms
                        await self._set_state("speaking")
                        reply.reported = TurnMetrics(reply.turn_id, dict(stages), reply.prompt)
                        await self._emit(reply.reported)
                    await self._speaker.play(pcm, self._synthesizer.sample_rate, sentence)
                    playout.queued(len(pcm) / 2 / self._synthesizer.sample_rate)
                    sentence = ""  # a sentence piper splits further is credited to its first piece
            except SynthesisError as exc:
                await self._say(reply, TurnError("tts_failed", str(exc)))

    async def _say(self, reply: Reply, event: TurnEvent) -> None:
        """Send one of a reply's events, or hold it while the reply is an unreleased draft."""
        if reply.released.is_set():
            await self._send(event)
        else:
            reply.held.append(event)

    async def _release(self, reply: Reply) -> None:
        """Make a draft the reply: send what it held, in order, then let it go on in the open."""
        while reply.held:
            await self._send(reply.held.pop(0))
        # No await between the last held event and this: nothing can slip in out of order.
        reply.released.set()
        if reply.user_text:
            self._commit_user(reply)

    async def _send(self, event: TurnEvent) -> None:
        if isinstance(event, StateChanged):
            await self._set_state(event.state)
        else:
            await self._emit(event)

    async def _set_state(self, state: State) -> None:
        if state != self._state:
            self._state = state
            await self._emit(StateChanged(state))

    # -- dialog ------------------------------------------------------------------------------

    async def _history(self, *, before: str) -> list[Message]:
        """The dialog as the prompt's context: up to the turn `before` (already stored, as a caller's
        turn is at its final transcript), within the history window."""
        turns = await self._dialog.history()
        ids = [t.turn_id for t in turns]
        if before in ids:
            turns = turns[: ids.index(before)]
        kept = history_window(turns, self.config.history_budget_tokens, self.config.history_window)
        return [{"role": t.role, "content": t.text} for t in kept if t.text]

    def _commit_user(self, reply: Reply) -> None:
        """Store the caller's turn as soon as its final transcript stands, before any reply: a
        replica that dies while answering loses no word the caller said. A turn continued after
        a pause keeps its id and is stored again, whole, in the same place."""
        self._store(Turn(
            role="user", text=reply.user_text, turn_id=reply.turn_id, started_at=reply.user_started_at,
            ended_at=time.time(),
        ))

    def _commit_bot(self, reply: Reply, text: str, *, interrupted: bool) -> None:
        """Store what the caller heard of the bot's reply. Nothing heard, nothing stored; but a
        reply that comes to nothing after part of it was stored as heard (a reply voided when
        the caller went on, a stock apology) is stored again empty, which voids it."""
        if text or reply.heard_stored:
            self._store(Turn(role="assistant", text=text, turn_id=reply_turn_id(reply.turn_id), interrupted=interrupted))

    def _store(self, turn: Turn) -> None:
        try:
            self._dialog.add(turn)
        except DialogBufferFull as exc:
            log.error("%s", exc)
            # Said from a task of its own: storing never waits, and never fails the turn.
            with contextlib.suppress(RuntimeError):  # the call is over: nobody to tell
                self._tasks.create_task(self._emit(TurnError("dialog_store_unavailable", str(exc))))
