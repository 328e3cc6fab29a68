"""Asking again when the LLM's reply copies one of its earlier replies in the call.

A small model copies itself. Once SmolLM2-135M has said "I'm sorry for any confusion,
but as a voice assistant, I'm unable to enter a specific number", it says the same
sentence, word for word, to every later turn of the call: a table for two, the weather
in London, the capital of Japan (six telephone requests in a row, one reply). A caller
hears a broken record. Folding the dialog into the system message instead of chat
turns did not cure it and lost the follow-ups (bench/results/quality.md).

So the reply's beginning is watched as it streams. While it reads like the first
sentence of one of the bot's earlier turns, it is held back (nothing of it is said
yet); as soon as it differs from every one, what was held goes on and the rest
streams through. A reply whose whole first sentence is an earlier one's is dropped
unheard and asked again with the system prompt and the caller's last words alone:
what made the model copy was the dialog. The re-asked reply goes out as it comes.
A caller who asks to hear it again ("say that again") gets the copy, as asked.

Measured (bench/results/quality.md, call.md, 2026-12-07): a new question after earlier
turns answered right 8 times in 10 against 6; voice-to-voice 491/599 ms (p50/p95) against
480/646 without, within the run's noise. A reply that starts like an earlier one is held until
it differs, usually within a few words; a copy costs the tokens written before it was seen, and
the re-asked prompt is short and mostly in the slot's cache already.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum
from typing import Any, Protocol

from pipeline.llm_client import Message
from pipeline.quick_answers import asks_to_repeat

# The end of a sentence: its mark (and any closing quote or bracket), then a space. A full stop
# inside a number ("3.5") or at the very end of the text so far may not end one yet.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


class _Chat(Protocol):
    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]: ...

    def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]: ...


class _Reading(Enum):
    SO_FAR_ALIKE = "so far alike"  # the reply so far is the start of an earlier first sentence
    DIFFERENT = "different"
    COPY = "copy"  # its first sentence is an earlier one's


def normalise(text: str) -> str:
    """Words only, lower case: "I'm sorry, but..." and "i'm sorry but" read alike."""
    return re.sub(r"[^a-z0-9']+", " ", text.lower().replace("\u2019", "'")).strip()


def first_sentence(text: str, *, ended: bool) -> str | None:
    """The text's first sentence, once it is complete (`ended`: the text is all there is)."""
    if match := _SENTENCE_END.search(text):
        return text[: match.end()]
    return text if ended else None


def read_reply(text: str, earlier: set[str], *, ended: bool = False) -> _Reading:
    """How the reply so far stands against the normalised first sentences `earlier`."""
    sentence = first_sentence(text, ended=ended)
    if sentence is not None:
        return _Reading.COPY if normalise(sentence) in earlier else _Reading.DIFFERENT
    so_far = normalise(text)
    return _Reading.SO_FAR_ALIKE if any(e.startswith(so_far) for e in earlier) else _Reading.DIFFERENT


class CopyGuard:
    """A chat model whose replies never begin by copying an earlier reply of the call unasked.

    Wraps the LLM pool (or a client) under the quick answers; `on_copy` hears each reply asked
    again (for metrics).
    """

    def __init__(self, llm: _Chat, *, on_copy: Callable[[], None] | None = None) -> None:
        self._llm = llm
        self._on_copy = on_copy

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        return self._llm.with_system_prompt(messages)

    async def prime(self, messages: Sequence[Message], *, dialog_id: str) -> bool:
        prime = getattr(self._llm, "prime", None)
        return False if prime is None else await prime(messages, dialog_id=dialog_id)

    async def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]:
        """The LLM's stream for `messages` with the same options; asked again without the dialog
        when its first sentence is one the bot has said before in it."""
        earlier = {
            said for m in messages[:-1]
            if m["role"] == "assistant" and (said := normalise(first_sentence(m["content"], ended=True) or ""))
        }
        if not earlier or not messages or asks_to_repeat(messages[-1]["content"]):
            async for delta in self._llm.stream_chat(messages, **options):
                yield delta
            return
        # The cap is told only for the reply that is said, once it is known which.
        on_capped = options.pop("on_capped", None)
        capped = False

        def stopped_at_cap() -> None:
            nonlocal capped
            capped = True

        held: list[str] | None = []
        copied = False
        stream = self._llm.stream_chat(messages, on_capped=stopped_at_cap, **options)
        try:
            async for delta in stream:
                if held is None:
                    yield delta
                    continue
                held.append(delta)
                reading = read_reply("".join(held), earlier)
                if reading is _Reading.COPY:
                    copied = True
                    break
                if reading is _Reading.DIFFERENT:
                    yield "".join(held)
                    held = None
            else:
                if held and read_reply("".join(held), earlier, ended=True) is _Reading.COPY:
                    copied = True
                elif held:
                    yield "".join(held)
        finally:
            await stream.aclose()  # a copy's request is stopped: nobody will hear the rest
        if not copied:
            if capped and on_capped is not None:
                on_capped()
            return
        if self._on_copy is not None:
            self._on_copy()
        afresh = [m for m in messages[:-1] if m["role"] == "system"] + [messages[-1]]
        async for delta in self._llm.stream_chat(afresh, on_capped=on_capped, **options):
            yield delta
