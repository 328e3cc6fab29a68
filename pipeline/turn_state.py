"""Who has the floor in a call: the turn loop's state machine, as a pure policy.

The state has two sides, because the caller and the bot can both be active at once
(the caller starts talking over the bot; a message is typed while the caller talks):

- the caller: quiet, speaking, or paused mid-turn (the end-of-turn silence running,
  perhaps with a draft reply being made unheard);
- the reply: none (the bot listens), thinking (made but not yet heard), speaking, or
  held (paused at once for a voiced frame of the caller's, until a short silence).

`TurnPolicy.on(event)` takes one thing that happened and returns what the turn loop
must do about it, in order; it never waits, reads no clock and calls nothing. An
event that cannot happen in the current phase raises `ImpossibleTransition`, which
names the phase. Two rules hold by construction:
- one reply at a time: every action that starts a reply (a new one, or a draft
  released) comes after the one that stops the reply before it;
- the speaker is held exactly while the reply is `held`: entering it holds, leaving
  it for any reason (silence, barge-in, the reply's end) resumes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class CallerPhase(enum.Enum):
    QUIET = "quiet"
    SPEAKING = "caller speaking"
    PAUSED = "caller paused"


class ReplyPhase(enum.Enum):
    LISTENING = "listening"  # no reply in progress
    THINKING = "thinking"
    SPEAKING = "speaking"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Phase:
    """Where a call's turn-taking stands. `drafting`: a draft reply is being made in a pause."""

    caller: CallerPhase = CallerPhase.QUIET
    reply: ReplyPhase = ReplyPhase.LISTENING
    drafting: bool = False
    # Silence heard since the reply was held (only while it is).
    held_silence_ms: float = 0.0
    # The reply in progress answers a spoken turn that ended in silence, so the caller speaking
    # again soon continues that turn rather than starting one.
    continuable: bool = False
    # How long the reply has been heard: frames of the caller's that arrived while it spoke
    # (not held). Speech begun after the caller had heard this much answers the reply.
    heard_ms: float = 0.0

    def __str__(self) -> str:
        draft = ", drafting" if self.drafting else ""
        return f"{self.caller.value}, reply {self.reply.value}{draft}"


class ImpossibleTransition(RuntimeError):
    """An event arrived that the current phase cannot have (a bug in whoever reported it)."""


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heard:
    """One frame of the caller's audio: `voiced` if it sounded like speech, `ms` long."""

    voiced: bool
    ms: float


@dataclass(frozen=True, slots=True)
class CallerStarted:
    """The caller began a turn (enough voiced audio). `since_turn_end_ms`: how long ago the spoken
    turn that the reply in progress answers ended (None: no such reply)."""

    since_turn_end_ms: float | None = None


@dataclass(frozen=True, slots=True)
class CallerPaused:
    """The caller went quiet mid-turn. `may_draft`: a draft reply is allowed for this turn."""

    may_draft: bool = False


@dataclass(frozen=True, slots=True)
class CallerEnded:
    """The caller's turn ended. `draft_covers`: the draft in progress answers all of it. `cut`: it
    ended without a silence (it ran too long): speech after it is a turn of its own, never the
    same one continued (which would outgrow the ASR's window)."""

    draft_covers: bool = False
    cut: bool = False


@dataclass(frozen=True, slots=True)
class ReplyRequested:
    """A reply is wanted to something not spoken now: a typed message, or a stored turn answered again."""


@dataclass(frozen=True, slots=True)
class ReplyAudible:
    """The reply's first audio went to the speaker."""


@dataclass(frozen=True, slots=True)
class ReplyFinished:
    """The reply in progress ended by itself (done, failed, or nothing to say)."""


Event = Heard | CallerStarted | CallerPaused | CallerEnded | ReplyRequested | ReplyAudible | ReplyFinished


# -- actions ---------------------------------------------------------------------------------


class Action(enum.Enum):
    BEGIN_TURN = "begin turn"  # a new caller turn: its id, its partial transcripts
    CONTINUE_TURN = "continue turn"  # the same, going on with the turn whose reply was voided
    JUDGE_PAUSE = "judge pause"
    FORGET_JUDGEMENT = "forget judgement"
    TALKED_THROUGH = "talked through"  # the caller went on after a pause: the words asked for at it are stale
    START_DRAFT = "start draft"
    DROP_DRAFT = "drop draft"
    END_TURN = "end turn"  # the caller's turn is over: its partial transcripts stop
    RELEASE_DRAFT = "release draft"  # the draft becomes the reply
    START_REPLY = "start reply"  # to the spoken turn just ended, or to what was requested
    STOP_REPLY = "stop reply"  # barge-in: what was heard of it stands
    VOID_REPLY = "void reply"  # the caller went on with the turn it answered: nothing of it stands
    HOLD = "hold"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """continuation_window_ms: the caller speaking again this soon after their turn ended continues
    it (the reply is voided), unless the caller had already heard `continuation_heard_ms` of the
    reply when they began: then they speak over it (a barge-in); hold_resume_ms: silence after
    which a held reply goes on;
    judges: pauses are judged by the end-of-turn model; drafts: replies are drafted in pauses."""

    continuation_window_ms: float = 1500.0
    continuation_heard_ms: float = 400.0
    hold_resume_ms: float = 200.0
    judges: bool = True
    drafts: bool = True


class TurnPolicy:
    """The transitions. `phase` is the state; `on` the only way it changes."""

    def __init__(self, config: PolicyConfig = PolicyConfig()) -> None:
        self.config = config
        self.phase = Phase()

    def on(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to carry out, in order."""
        before = self.phase
        match event:
            case Heard():
                actions = self._heard(event)
            case CallerStarted():
                actions = self._caller_started(event)
            case CallerPaused():
                actions = self._caller_paused(event)
            case CallerEnded():
                actions = self._caller_ended(event)
            case ReplyRequested():
                actions = self._stop_reply(Action.STOP_REPLY)
                self.phase = replace(self.phase, reply=ReplyPhase.THINKING, continuable=False)
                actions.append(Action.START_REPLY)
            case ReplyAudible():
                self._expect(event, before.reply is ReplyPhase.THINKING)
                self.phase = replace(self.phase, reply=ReplyPhase.SPEAKING)
                actions = []
            case ReplyFinished():
                self._expect(event, before.reply is not ReplyPhase.LISTENING)
                actions = self._leave_reply()
            case _:
                raise ImpossibleTransition(f"unknown event {event!r} in phase {before}")
        return actions

    # -- the caller's side -------------------------------------------------------------------

    def _heard(self, event: Heard) -> list[Action]:
        actions: list[Action] = []
        phase = self.phase
        if event.voiced and phase.caller is CallerPhase.PAUSED:
            # The caller goes on: the pause judged is over, the draft answers only part of the turn.
            if phase.drafting:
                actions.append(Action.DROP_DRAFT)
            actions += [Action.FORGET_JUDGEMENT, Action.TALKED_THROUGH]
            phase = replace(phase, caller=CallerPhase.SPEAKING, drafting=False)
        if phase.reply is ReplyPhase.SPEAKING:
            if event.voiced:
                # Fall quiet on the first voiced frame: a barge-in takes longer to be sure of, and a
                # cough or an "mm-hm" costs only a short pause.
                actions.append(Action.HOLD)
                phase = replace(phase, reply=ReplyPhase.HELD, held_silence_ms=0.0)
            else:
                phase = replace(phase, heard_ms=phase.heard_ms + event.ms)
        elif phase.reply is ReplyPhase.HELD:
            silence = 0.0 if event.voiced else phase.held_silence_ms + event.ms
            if silence >= self.config.hold_resume_ms:
                actions.append(Action.RESUME)
                phase = replace(phase, reply=ReplyPhase.SPEAKING, held_silence_ms=0.0)
            else:
                phase = replace(phase, held_silence_ms=silence)
        self.phase = phase
        return actions

    def _caller_started(self, event: CallerStarted) -> list[Action]:
        self._expect(event, self.phase.caller is CallerPhase.QUIET)
        since = event.since_turn_end_ms
        continues = (
            self.phase.reply is not ReplyPhase.LISTENING
            and self.phase.continuable
            and since is not None
            and since <= self.config.continuation_window_ms
            and self.phase.heard_ms < self.config.continuation_heard_ms
        )
        actions = self._stop_reply(Action.VOID_REPLY if continues else Action.STOP_REPLY)
        actions += [Action.FORGET_JUDGEMENT, Action.CONTINUE_TURN if continues else Action.BEGIN_TURN]
        self.phase = replace(self.phase, caller=CallerPhase.SPEAKING)
        return actions

    def _caller_paused(self, event: CallerPaused) -> list[Action]:
        self._expect(event, self.phase.caller is CallerPhase.SPEAKING)
        actions = [Action.JUDGE_PAUSE] if self.config.judges else []
        drafting = self.config.drafts and event.may_draft
        if drafting:
            actions.append(Action.START_DRAFT)
        self.phase = replace(self.phase, caller=CallerPhase.PAUSED, drafting=drafting)
        return actions

    def _caller_ended(self, event: CallerEnded) -> list[Action]:
        self._expect(event, self.phase.caller is not CallerPhase.QUIET)
        release = self.phase.drafting and event.draft_covers
        actions = [Action.FORGET_JUDGEMENT, Action.END_TURN]
        if self.phase.drafting and not release:
            actions.append(Action.DROP_DRAFT)
        # A reply still in progress answers something else (a typed message, a turn answered
        # again): the caller talked over it, so it stops before this turn's reply starts.
        actions += self._stop_reply(Action.STOP_REPLY)
        actions.append(Action.RELEASE_DRAFT if release else Action.START_REPLY)
        self.phase = replace(
            self.phase, caller=CallerPhase.QUIET, drafting=False, reply=ReplyPhase.THINKING, continuable=not event.cut
        )
        return actions

    # -- the reply's side --------------------------------------------------------------------

    def _stop_reply(self, how: Action) -> list[Action]:
        if self.phase.reply is ReplyPhase.LISTENING:
            return []
        return [how, *self._leave_reply()]

    def _leave_reply(self) -> list[Action]:
        held = self.phase.reply is ReplyPhase.HELD
        self.phase = replace(
            self.phase, reply=ReplyPhase.LISTENING, held_silence_ms=0.0, continuable=False, heard_ms=0.0
        )
        return [Action.RESUME] if held else []

    def _expect(self, event: Event, possible: bool) -> None:
        if not possible:
            raise ImpossibleTransition(f"{type(event).__name__} cannot happen in phase {self.phase}")
