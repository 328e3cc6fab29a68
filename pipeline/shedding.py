"""Shedding work before refusing calls: what a new turn leaves out as the replica fills.

The load is the replica's voice calls in progress over its `max_calls`, read as each turn
begins. Each rung of the ladder applies from its mark up:
- partial transcripts: the growing utterance is no longer transcribed every 400 ms while the
  caller talks (the transcript made at the pause still is: it becomes the final one);
- short replies: the reply's token cap drops, so each turn holds the LLM and the TTS for less;
- early judgements: the end-of-turn model hears a pause only once its words are in, not also at
  once beside their transcription (`[turn_model] at_pause`): under load the early hearing, often
  heard again anyway, took a core from the transcription every turn waits for;
- audio judgements: a pause whose words end a sentence (a full stop, a question or exclamation
  mark, no word left hanging) ends the turn on them alone; the end-of-turn model hears only the
  pauses the words leave in doubt. Off the default ladder: while the reply is drafted at the
  pause, the model's decision is not on the reply's path, and the measured gain was nothing;
- drafts: no reply is drafted, unheard, at the pause (LLM work thrown away whenever the
  caller goes on); the reply starts when the turn ends. Measured, the draft's head start was
  worth more than the work it threw away at every load, so the default leaves this rung out.
A turn keeps the plan it began with; only newer turns see a new load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class SheddingConfig:
    """The ladder (`[shedding]` in models.toml). A mark above 1 never applies: admission keeps
    the load at or below 1.

    partials_off_at: from this load on, no periodic partial transcripts, nor any begun at a lull.
    drafts_off_at: from this load on, no speculative draft at the pause.
    short_replies_at: from this load on, replies are capped at `short_reply_tokens`.
    early_judgements_off_at: from this load on, a pause is heard by the end-of-turn model only once
        its words are in.
    audio_judgements_off_at: from this load on, a pause whose words end a sentence ends the turn
        without the end-of-turn model.
    """

    partials_off_at: float = 0.75
    short_replies_at: float = 0.75
    short_reply_tokens: int = 40
    drafts_off_at: float = 2.0
    early_judgements_off_at: float = 0.75
    audio_judgements_off_at: float = 2.0

    def __post_init__(self) -> None:
        marks = (self.partials_off_at, self.drafts_off_at, self.short_replies_at, self.early_judgements_off_at,
                 self.audio_judgements_off_at)
        if min(marks) < 0:
            raise ValueError("shedding marks must not be negative")
        if self.short_reply_tokens < 1:
            raise ValueError("shedding.short_reply_tokens must be at least 1")


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What one turn does. max_tokens: the reply's cap (None: the LLM's configured one);
    early_judgements: a pause may be heard by the end-of-turn model at once ([turn_model] at_pause);
    audio_judgements: the model hears every pause judged (False: only those whose words do not end
    a sentence)."""

    partials: bool = True
    drafts: bool = True
    max_tokens: int | None = None
    early_judgements: bool = True
    audio_judgements: bool = True

    @property
    def shed(self) -> tuple[str, ...]:
        """The rungs this plan leaves out, by name (for metrics and logs)."""
        rungs = (("partials", self.partials), ("drafts", self.drafts), ("long_replies", self.max_tokens is None),
                 ("early_judgements", self.early_judgements), ("audio_judgements", self.audio_judgements))
        return tuple(name for name, kept in rungs if not kept)


FULL = TurnPlan()


def plan_for(load: float, config: SheddingConfig) -> TurnPlan:
    """The plan for a turn beginning at `load` (calls in progress over max_calls)."""
    return TurnPlan(
        partials=load < config.partials_off_at,
        drafts=load < config.drafts_off_at,
        max_tokens=config.short_reply_tokens if load >= config.short_replies_at else None,
        early_judgements=load < config.early_judgements_off_at,
        audio_judgements=load < config.audio_judgements_off_at,
    )


Planner = Callable[[], TurnPlan]
