"""What a call's turn loop reports: one closed set of frozen event types.

signaling turns these into protocol messages; the pipeline knows nothing of JSON or sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.llm_client import PromptUsage

State = Literal["listening", "thinking", "speaking"]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The bot is listening, thinking (a reply is being prepared) or speaking."""

    state: State


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """What the user said: partial while they talk, final at the end of their turn."""

    turn_id: str
    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """A piece of the bot's reply text, as the LLM produces it."""

    turn_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ReplyDone:
    """The reply is complete, or was cut short (`interrupted`: then text is what was played)."""

    turn_id: str
    text: str
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class TurnMetrics:
    """How long each stage of a turn took, in milliseconds.

    Keys: asr (final transcript), llm_first_token, first_sentence (LLM start to the
    first complete sentence), tts_first_audio (that sentence to its first audio),
    end_of_turn_to_first_audio (the whole server-side wait).
    prompt: the reply's prompt as the LLM server handled it (its tokens, how many it read and
    how many its cache held), when the server says.
    """

    turn_id: str
    stages_ms: dict[str, float] = field(default_factory=dict)
    prompt: PromptUsage | None = None


@dataclass(frozen=True, slots=True)
class TurnError:
    """Something failed in a turn; the call goes on. code is stable, message is for people."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ReplyRestarted:
    """The reply to `turn_id` starts again from its beginning: the deltas sent for it before (by a
    replica that went away mid-reply) are void."""

    turn_id: str


TurnEvent = StateChanged | TranscriptEvent | ReplyDelta | ReplyDone | ReplyRestarted | TurnMetrics | TurnError
