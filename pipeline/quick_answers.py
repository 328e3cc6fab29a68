"""Answers Parley gives without the LLM: sums, units, and "say that again".

A caller expects a voice assistant to get nine times eight right, to know how many
minutes are in two hours, and to say its last answer again word for word when asked.
The bundled LLM (135M parameters) does none of the three reliably: 4 of 10 sums,
5 of 8 conversions and 2 of 5 repeats right (bench/results/quality.md). Assistants
route these to code that cannot get them wrong; so does this, before the LLM:

- a sum said aloud, whole (pipeline.spoken_sums);
- a conversion between units pint knows (pipeline.unit_questions);
- a request to repeat: the bot's last turn in the dialog, as the caller heard it.

Anything else, or anything these do not read whole, goes to the LLM unchanged, so a
question they miss costs nothing but a few regular expressions. The answer comes as
one delta of the same stream the LLM's would, so the turn loop, the dialog store and
the speaker treat it as any reply. `[quick_answers]` in models.toml turns each off.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from text_to_num import alpha2digit

from pipeline.llm_client import Message
from pipeline.spoken_sums import sum_reply
from pipeline.unit_questions import conversion_reply

Kind = Literal["sum", "conversion", "repeat"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuickAnswersConfig:
    """Which questions Parley answers itself ([quick_answers] in models.toml)."""

    sums: bool = True
    conversions: bool = True
    repeats: bool = True

    @property
    def any(self) -> bool:
        return self.sums or self.conversions or self.repeats


@dataclass(frozen=True, slots=True)
class QuickAnswer:
    kind: Kind
    text: str


class Chat(Protocol):
    """A chat model as the turn loop's wrappers see it: a system prompt and a stream of text deltas."""

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]: ...

    def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]: ...


# Greetings, hesitations and politeness around a question, and the question's frame: none of it
# changes the sum. Whisper writes "What's", "what is", "Um, what is"; callers add "please".
_OPENING = re.compile(
    r"^(?:(?:hey|hi|ok|okay|so|and|um|uh|er|well|sorry|please|excuse me|parley)\b[\s,]*)*"
    r"(?:(?:can|could|would) you (?:please )?(?:tell me |work out |calculate )?|(?:please )?(?:tell me|calculate|compute|work out|convert)\b\s*|do you know\s+)?"
    r"(?:what do you get for|what(?:'s| is| are| does)?|how much is|how much are)?\s*"
)
# What may close a question around its sum: "what 12 times 3 is, please?", "what does 7 plus 8 make?".
_CLOSING = re.compile(r"(?:\s+(?:is|equals?|makes?|come to|comes to))?(?:\s*,?\s*please)?\s*$")
# Only these marks mean anything in a sum; the rest is punctuation of the sentence.
_PUNCTUATION = re.compile(r"[?!,;:\"]|\.(?!\d)")
_REPEAT = re.compile(
    r"^(?:(?:sorry|pardon|excuse me|um|uh|what|huh|oh|ok|okay)\b[\s,]*)*"
    r"(?:(?:can|could|would|will) you (?:please )?|please )?"
    r"(?:say (?:that|it|this) again|say again|repeat(?: (?:that|it|this|yourself|the answer|what you (?:just )?said|your (?:last )?answer))?(?: again)?"
    r"|come again|what did you (?:just )?say|what was that|pardon(?: me)?|one more time)"
    r"(?:,? please)?$"
)


def quick_answer(messages: Sequence[Message], config: QuickAnswersConfig = QuickAnswersConfig()) -> QuickAnswer | None:
    """Parley's own answer to the dialog's last user message, or None for the LLM."""
    if not messages or messages[-1]["role"] != "user":
        return None
    said = messages[-1]["content"].strip().lower().replace("\u2019", "'")
    if config.repeats and asks_to_repeat(said):
        last = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "assistant"), None)
        if last:
            return QuickAnswer("repeat", last)
        return None
    if not (config.sums or config.conversions):
        return None
    question = _question(said)
    if config.sums and (text := sum_reply(question)) is not None:
        return QuickAnswer("sum", text)
    if config.conversions and (text := conversion_reply(question)) is not None:
        return QuickAnswer("conversion", text)
    return None


def asks_to_repeat(said: str) -> bool:
    """Whether the caller's words ask the bot to say its last answer again ("Sorry, say that again?")."""
    said = said.strip().lower().replace("\u2019", "'")
    return _REPEAT.match(re.sub(r"\s+", " ", _PUNCTUATION.sub(" ", said)).strip()) is not None


def _question(said: str) -> str:
    """The question in digits and lower case, without its frame: "Um, what's nine times eight?" → "9 times 8"."""
    # threshold 0: "one" and "two" are numbers too ("what is two plus two").
    text = alpha2digit(said, "en", 0)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 → 1000
    text = _PUNCTUATION.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _OPENING.sub("", text, count=1)
    return _CLOSING.sub("", text, count=1).strip()


class QuickAnswers:
    """A chat model that answers what `quick_answer` can and hands the rest to `llm`.

    Wraps the LLM pool (or a client) where the turn loop or a benchmark would use it;
    `on_answer` hears the kind of each answer given here (for metrics).
    """

    def __init__(
        self, llm: Chat, config: QuickAnswersConfig = QuickAnswersConfig(), *,
        on_answer: Callable[[Kind], None] | None = None,
    ) -> None:
        self._llm = llm
        self.config = config
        self._on_answer = on_answer

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        return self._llm.with_system_prompt(messages)

    async def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]:
        """The quick answer as one delta, or the LLM's stream with the same options."""
        answer = quick_answer(messages, self.config)
        if answer is None:
            # Closed with this stream, so an LLM request under it stops when the caller does.
            async with contextlib.aclosing(self._llm.stream_chat(messages, **options)) as stream:
                async for delta in stream:
                    yield delta
            return
        if self._on_answer is not None:
            self._on_answer(answer.kind)
        yield answer.text

    async def prime(self, messages: Sequence[Message], *, dialog_id: str) -> bool:
        prime = getattr(self._llm, "prime", None)
        return False if prime is None else await prime(messages, dialog_id=dialog_id)
