"""The turn-taking policy alone: every transition, no models, no network, no event loop."""

from __future__ import annotations

import pytest

from pipeline.turn_state import (
    Action,
    CallerEnded,
    CallerPaused,
    CallerPhase,
    CallerStarted,
    Heard,
    ImpossibleTransition,
    PolicyConfig,
    ReplyAudible,
    ReplyFinished,
    ReplyPhase,
    ReplyRequested,
    TurnPolicy,
)

VOICE = Heard(voiced=True, ms=20)
HUSH = Heard(voiced=False, ms=20)


def _policy(**config) -> TurnPolicy:
    return TurnPolicy(PolicyConfig(continuation_window_ms=1500, hold_resume_ms=200, **config))


def _speaking_reply(policy: TurnPolicy) -> None:
    """A typed message answered and heard: the reply speaks, the caller is quiet."""
    policy.on(ReplyRequested())
    policy.on(ReplyAudible())


def _spoken_turn(policy: TurnPolicy, *, paused: bool = True, may_draft: bool = True, covers: bool = True) -> list[Action]:
    policy.on(CallerStarted())
    if paused:
        policy.on(HUSH)
        policy.on(CallerPaused(may_draft=may_draft))
    return policy.on(CallerEnded(draft_covers=covers))


def test_a_spoken_turn_begins_pauses_with_a_judgement_and_a_draft_and_ends_releasing_the_draft():
    policy = _policy()
    assert policy.on(VOICE) == []
    assert policy.on(CallerStarted()) == [Action.FORGET_JUDGEMENT, Action.BEGIN_TURN]
    assert policy.phase.caller is CallerPhase.SPEAKING
    assert policy.on(CallerPaused(may_draft=True)) == [Action.JUDGE_PAUSE, Action.START_DRAFT]
    assert policy.phase.caller is CallerPhase.PAUSED and policy.phase.drafting
    assert policy.on(CallerEnded(draft_covers=True)) == [Action.FORGET_JUDGEMENT, Action.END_TURN, Action.RELEASE_DRAFT]
    assert (policy.phase.caller, policy.phase.reply, policy.phase.drafting) == (
        CallerPhase.QUIET, ReplyPhase.THINKING, False,
    )
    assert policy.on(ReplyAudible()) == []
    assert policy.phase.reply is ReplyPhase.SPEAKING
    assert policy.on(ReplyFinished()) == []
    assert policy.phase.reply is ReplyPhase.LISTENING


def test_a_pause_without_a_draft_or_a_model_ends_in_a_new_reply():
    policy = _policy(judges=False)
    assert _spoken_turn(policy, may_draft=False) == [Action.FORGET_JUDGEMENT, Action.END_TURN, Action.START_REPLY]
    undrafted = _policy(drafts=False)
    undrafted.on(CallerStarted())
    assert undrafted.on(CallerPaused(may_draft=True)) == [Action.JUDGE_PAUSE]  # drafts are off


def test_a_turn_ended_without_a_pause_event_starts_its_reply():
    policy = _policy()
    assert _spoken_turn(policy, paused=False) == [Action.FORGET_JUDGEMENT, Action.END_TURN, Action.START_REPLY]


def test_a_draft_that_does_not_cover_the_turn_is_dropped_for_a_new_reply():
    policy = _policy()
    assert _spoken_turn(policy, covers=False) == [
        Action.FORGET_JUDGEMENT, Action.END_TURN, Action.DROP_DRAFT, Action.START_REPLY,
    ]


def test_the_caller_going_on_after_a_pause_drops_the_draft_and_the_judgement():
    policy = _policy()
    policy.on(CallerStarted())
    policy.on(CallerPaused(may_draft=True))
    assert policy.on(HUSH) == []  # the pause goes on
    assert policy.on(VOICE) == [Action.DROP_DRAFT, Action.FORGET_JUDGEMENT, Action.TALKED_THROUGH]
    assert policy.phase.caller is CallerPhase.SPEAKING and not policy.phase.drafting
    assert policy.on(VOICE) == []
    # The next pause drafts anew.
    assert policy.on(CallerPaused(may_draft=True)) == [Action.JUDGE_PAUSE, Action.START_DRAFT]


def test_a_voiced_frame_holds_the_speaking_reply_and_silence_resumes_it():
    policy = _policy()
    _speaking_reply(policy)
    assert policy.on(VOICE) == [Action.HOLD]
    assert policy.phase.reply is ReplyPhase.HELD
    for _ in range(9):  # 180 ms of silence: still held
        assert policy.on(HUSH) == []
    assert policy.on(VOICE) == []  # a voiced frame starts the count again
    for _ in range(9):
        assert policy.on(HUSH) == []
    assert policy.on(HUSH) == [Action.RESUME]
    assert policy.phase.reply is ReplyPhase.SPEAKING
    assert policy.on(HUSH) == []


def test_a_thinking_reply_is_not_held():
    policy = _policy()
    policy.on(ReplyRequested())
    assert policy.on(VOICE) == []
    assert policy.phase.reply is ReplyPhase.THINKING


def test_barge_in_stops_the_reply_and_leaving_held_resumes():
    policy = _policy()
    _speaking_reply(policy)
    policy.on(VOICE)
    assert policy.on(CallerStarted()) == [
        Action.STOP_REPLY, Action.RESUME, Action.FORGET_JUDGEMENT, Action.BEGIN_TURN,
    ]
    assert (policy.phase.caller, policy.phase.reply) == (CallerPhase.SPEAKING, ReplyPhase.LISTENING)


def test_speaking_again_soon_after_a_spoken_turn_continues_it_and_voids_its_reply():
    policy = _policy()
    _spoken_turn(policy)
    assert policy.on(CallerStarted(since_turn_end_ms=900)) == [
        Action.VOID_REPLY, Action.FORGET_JUDGEMENT, Action.CONTINUE_TURN,
    ]
    policy.on(CallerPaused(may_draft=True))  # a continued turn ends like any other
    assert policy.on(CallerEnded(draft_covers=True))[-1] is Action.RELEASE_DRAFT
    assert policy.on(CallerStarted(since_turn_end_ms=1600)) == [
        Action.STOP_REPLY, Action.FORGET_JUDGEMENT, Action.BEGIN_TURN,
    ]


def _heard_reply(quiet_frames: int) -> TurnPolicy:
    """A spoken turn answered, its reply heard over `quiet_frames` of the caller's silence (20 ms each)."""
    policy = _policy(continuation_heard_ms=400)
    _spoken_turn(policy)
    policy.on(ReplyAudible())
    for _ in range(quiet_frames):
        policy.on(HUSH)
    return policy


def test_speech_begun_after_the_caller_heard_the_reply_is_a_barge_in_even_soon_after_the_turn():
    # Within the continuation window, but 400 ms of the reply had been heard when the caller began:
    # they answer or interrupt the bot, so what they heard stands and a new turn begins.
    policy = _heard_reply(20)
    assert policy.on(VOICE) == [Action.HOLD]
    assert policy.on(CallerStarted(since_turn_end_ms=900)) == [
        Action.STOP_REPLY, Action.RESUME, Action.FORGET_JUDGEMENT, Action.BEGIN_TURN,
    ]


def test_speech_begun_before_the_caller_could_have_heard_the_reply_continues_their_turn():
    # The reply had been audible 380 ms (held at the caller's first voiced frame, which is not
    # counted): too soon to be an answer to it, so the caller is going on with their turn.
    policy = _heard_reply(19)
    for _ in range(6):
        policy.on(VOICE)
    assert policy.on(CallerStarted(since_turn_end_ms=900)) == [
        Action.VOID_REPLY, Action.RESUME, Action.FORGET_JUDGEMENT, Action.CONTINUE_TURN,
    ]


def test_a_new_reply_is_heard_from_nothing():
    policy = _heard_reply(30)
    policy.on(ReplyFinished())
    _spoken_turn(policy)
    policy.on(ReplyAudible())
    assert policy.phase.heard_ms == 0
    assert policy.on(CallerStarted(since_turn_end_ms=300))[0] is Action.VOID_REPLY


def test_speech_right_after_a_turn_cut_for_its_length_is_a_turn_of_its_own():
    policy = _policy()
    policy.on(CallerStarted())
    policy.on(CallerEnded(cut=True))
    assert policy.on(CallerStarted(since_turn_end_ms=20)) == [
        Action.STOP_REPLY, Action.FORGET_JUDGEMENT, Action.BEGIN_TURN,
    ]


def test_a_typed_reply_is_never_continued_by_speech():
    policy = _policy()
    policy.on(ReplyRequested())
    assert policy.on(CallerStarted(since_turn_end_ms=10))[0] is Action.STOP_REPLY


def test_a_typed_message_stops_the_reply_in_progress_before_its_own_starts():
    policy = _policy()
    _speaking_reply(policy)
    assert policy.on(ReplyRequested()) == [Action.STOP_REPLY, Action.START_REPLY]
    assert policy.phase.reply is ReplyPhase.THINKING
    policy.on(ReplyAudible())
    policy.on(VOICE)
    assert policy.on(ReplyRequested()) == [Action.STOP_REPLY, Action.RESUME, Action.START_REPLY]


def test_a_typed_message_while_the_caller_talks_is_stopped_when_their_turn_ends():
    # One reply at a time: the spoken turn's reply does not start over the typed one.
    policy = _policy()
    policy.on(CallerStarted())
    assert policy.on(ReplyRequested()) == [Action.START_REPLY]
    assert (policy.phase.caller, policy.phase.reply) == (CallerPhase.SPEAKING, ReplyPhase.THINKING)
    policy.on(ReplyAudible())
    policy.on(CallerPaused(may_draft=True))
    assert policy.on(CallerEnded(draft_covers=True)) == [
        Action.FORGET_JUDGEMENT, Action.END_TURN, Action.STOP_REPLY, Action.RELEASE_DRAFT,
    ]


def test_a_finished_reply_is_no_longer_held_for_a_voiced_frame():
    # A reply that has ended must not pause the idle speaker; if it did, the next reply would
    # start into a paused speaker that nothing resumes.
    policy = _policy()
    _speaking_reply(policy)
    assert policy.on(ReplyFinished()) == []
    assert policy.on(VOICE) == []
    policy.on(ReplyRequested())
    policy.on(ReplyAudible())
    assert policy.phase.reply is ReplyPhase.SPEAKING


def test_a_held_reply_that_finishes_resumes_the_speaker():
    policy = _policy()
    _speaking_reply(policy)
    policy.on(VOICE)
    assert policy.on(ReplyFinished()) == [Action.RESUME]
    assert policy.phase.reply is ReplyPhase.LISTENING


@pytest.mark.parametrize(
    ("setup", "event", "phase"),
    [
        ([], ReplyAudible(), "quiet, reply listening"),
        ([], ReplyFinished(), "quiet, reply listening"),
        ([], CallerPaused(), "quiet, reply listening"),
        ([], CallerEnded(), "quiet, reply listening"),
        ([CallerStarted()], CallerStarted(), "caller speaking, reply listening"),
        ([ReplyRequested(), ReplyAudible()], ReplyAudible(), "quiet, reply speaking"),
        ([CallerStarted(), CallerPaused(may_draft=True)], CallerPaused(), "caller paused, reply listening, drafting"),
    ],
)
def test_an_impossible_event_is_a_named_error_that_says_the_phase(setup, event, phase):
    policy = _policy()
    for earlier in setup:
        policy.on(earlier)
    with pytest.raises(ImpossibleTransition, match=f"{type(event).__name__} cannot happen in phase {phase}$"):
        policy.on(event)
