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
streams through. A reply that begins with `copy_words` words of an earlier first
sentence, or whose whole first sentence is an earlier one, is a copy: it is stopped,
dropped unheard, and asked again with the system prompt and the caller's last words
alone, since what made the model copy was the dialog. The re-asked reply goes out as it
comes. It is asked beside the held reply once `ask_again_at` whole words of it read alike,
in case the reply is a copy, when the server it goes to has nothing else to do (the
pool keeps it aside the dialog, on the server after the dialog's: with two llama-servers
and one call, the other one), and stopped the moment the reply differs, before a word of
that reply is said. Its prompt is read there while the caller talks, as the dialog's is
(`prime_again`), so a re-ask reads only the last words. A caller who asks
to hear it again ("say that again") gets the copy, as asked; a first sentence of fewer
than MIN_COPY_WORDS words ("Sure!") is no copy.

Measured (bench/results/quality.md, call.md, 2026-12-07): a new question after earlier
turns answered right 9 times in 10 against 6. A turn that copies nothing costs nothing
(two speakers, voice-to-voice p50/p95 491/599 ms against 480/646 without), but for a reply
alike for four words that then differs, whose re-ask beside it was sent and stopped. A copy costs
its first words and a second request, 300-450 ms on that turn: four telephone requests
in a row 816/1049 ms against 577/657 with the copies said. Known by 12 words rather than
by the whole sentence (830/1100) it is stopped sooner; by 8 (784/1282 against 757/1002,
by hand) replies that would have gone on to differ are asked again too. Asked beside the
reply from its fourth word alike, the same four requests 868/1016 ms against 904/1104
asked only once the copy is known (a slow hour: the copying turns 100-170 ms sooner).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum
from typing import Any

from pipeline.errors import LLMUnavailable
from pipeline.llm_client import CappedSink, Message, UsageSink
from pipeline.quick_answers import Chat, asks_to_repeat
from pipeline.sentences import first_sentence

# A first sentence shorter than this is said again without copying anything ("Sure!", "I don't
# know."): saying it twice is no broken record, and asking again would lose the dialog for nothing.
MIN_COPY_WORDS = 4


class Reading(Enum):
    """How a reply's beginning stands against the bot's earlier first sentences."""

    SO_FAR_ALIKE = "so far alike"  # the reply so far is the start of an earlier first sentence
    DIFFERENT = "different"
    COPY = "copy"  # its first sentence is an earlier one's


def normalise(text: str) -> str:
    """Words only, case folded, in any script: "I'm sorry, but..." and "i'm sorry but" read alike."""
    return re.sub(r"[^\w']+", " ", text.casefold().replace("\u2019", "'")).strip()


def copy_key(reply: str) -> str | None:
    """What a later reply would copy of `reply`: its first sentence, normalised; None when that
    sentence is too short to count (MIN_COPY_WORDS)."""
    said = normalise(first_sentence(reply, ended=True) or "")
    return said if len(said.split()) >= MIN_COPY_WORDS else None


def _first_words(text: str, ended: bool) -> tuple[str | None, str, list[str]]:
    """The reply so far cut once: its first sentence if complete, the words up to its end
    (normalised), and those of them known whole."""
    sentence = first_sentence(text, ended=ended)
    so_far = normalise(sentence if sentence is not None else text)
    # The last word may be cut mid-word unless something follows it.
    cut = sentence is None and not ended and re.match(r"[\w']", text[-1:]) is not None
    return sentence, so_far, so_far.split()[:-1] if cut else so_far.split()


def whole_words(text: str, *, ended: bool = False) -> list[str]:
    """The words of the reply so far that are known whole, normalised, up to its first sentence's
    end: the last one may be cut mid-word unless something follows it."""
    return _first_words(text, ended)[2]


def read_reply(text: str, earlier: set[str], copy_words: int, *, ended: bool = False) -> Reading:
    """How the reply so far stands against `earlier` (copy keys): a copy once its first `copy_words`
    words are an earlier sentence's first words, or its first sentence is a whole earlier one.
    Text with no word yet ("", a quote mark) is alike: nothing is known of it."""
    sentence, so_far, words = _first_words(text, ended)
    if len(words) >= copy_words and any(e.split()[:copy_words] == words[:copy_words] for e in earlier):
        return Reading.COPY
    if sentence is not None:
        return Reading.COPY if so_far in earlier else Reading.DIFFERENT
    return Reading.SO_FAR_ALIKE if any(e.startswith(so_far) for e in earlier) else Reading.DIFFERENT


class CopyGuard:
    """A chat model whose replies never begin by copying an earlier reply of the call unasked.

    Wraps the LLM pool (or a client) under the quick answers; `on_copy` hears each reply asked
    again (for metrics).
    """

    def __init__(
        self,
        llm: Chat,
        copy_words: int,
        *,
        ask_again_at: int,
        prime_again: bool = True,
        on_copy: Callable[[], None] | None = None,
    ) -> None:
        if copy_words < 1:
            raise ValueError(f"copy_words must be 1 or more, not {copy_words}")
        if ask_again_at < 1:
            raise ValueError(f"ask_again_at must be 1 or more, not {ask_again_at}")
        self._llm = llm
        self._copy_words = copy_words
        # Words of the reply alike an earlier first sentence before the re-ask starts beside it;
        # copy_words or more: only once the copy is known.
        self._ask_again_at = ask_again_at
        # Where the pool keeps a dialog's re-ask apart from it (LLMPool.aside): its prompt, the
        # system prompt and the caller's words so far, is then read while the caller talks, as the
        # dialog's is, and the re-ask reads only the last words (with `prime_again`).
        self._aside: Callable[[str], str] | None = getattr(llm, "aside", None)
        self._prime_again = prime_again
        self._on_copy = on_copy

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        return self._llm.with_system_prompt(messages)

    def _room(self, dialog_id: str | None) -> bool:
        """Whether a re-ask beside a reply that may not copy would take no one's place: the server
        it goes to has nothing to do (LLMPool.has_idle_server). A single server of its own
        (LLMClient) is asked regardless."""
        has_idle_server = getattr(self._llm, "has_idle_server", None)
        return has_idle_server is None or has_idle_server(dialog_id)

    def _again_id(self, dialog_id: str | None) -> str | None:
        """Where a re-ask for the dialog goes: apart from it (LLMPool.aside), else anywhere."""
        return None if dialog_id is None or self._aside is None else self._aside(dialog_id)

    async def prime(self, messages: Sequence[Message], *, dialog_id: str) -> bool:
        """Prime the dialog's prompt; and, while a reply to these words would be watched for a copy,
        the re-ask's prompt too, apart from it (LLMPool.aside). True when the dialog's was."""
        prime = getattr(self._llm, "prime", None)
        if prime is None:
            return False
        primed = await prime(messages, dialog_id=dialog_id)
        again_id = self._again_id(dialog_id)
        # Not before a word is said (the system prompt alone is in every slot from the start),
        # and only on a server with nothing else to do: a re-ask may never come.
        if (
            self._prime_again
            and again_id is not None
            and messages[-1]["content"].strip()
            and _watched_for(messages)
            and self._room(again_id)
        ):
            await prime(_afresh(messages), dialog_id=again_id)
        return primed

    async def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]:
        """The LLM's stream for `messages` with the same options; asked again without the dialog
        when its first sentence is one the bot has said before in it."""
        earlier = _watched_for(messages)
        if not earlier:
            async with contextlib.aclosing(self._llm.stream_chat(messages, **options)) as stream:
                async for delta in stream:
                    yield delta
            return
        # The cap is told only for the reply that is said, once it is known which.
        on_capped = options.pop("on_capped", None)
        reply_capped = False

        def stopped_at_cap() -> None:
            nonlocal reply_capped
            reply_capped = True

        # Not on the dialog's slot: it keeps the dialog's prompt cached (all of it but the copy)
        # for the next turn, which then reads only its new words, not the whole dialog again.
        again_id = self._again_id(options.get("dialog_id"))
        again_options = {**options, "dialog_id": again_id} if "dialog_id" in options else dict(options)
        # The re-ask's prompt figures and cap are told only if it is the reply heard.
        on_usage = again_options.pop("on_usage", None)
        ask_again = functools.partial(
            Ahead, self._llm, _afresh(messages), options=again_options, on_usage=on_usage, on_capped=on_capped
        )
        again: Ahead | None = None
        held: list[str] | None = []
        copied = False
        try:
            # Closed on leaving: a copy's request is stopped, since nobody will hear the rest.
            stream = self._llm.stream_chat(messages, on_capped=stopped_at_cap, **options)
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    if held is None:
                        yield delta
                        continue
                    held.append(delta)
                    so_far = "".join(held)
                    reading = read_reply(so_far, earlier, self._copy_words)
                    if reading is Reading.COPY:
                        copied = True
                        break
                    if reading is Reading.DIFFERENT:
                        if again is not None:
                            again.stop()  # before a word is said: the core it runs on is the voice's now
                        yield so_far
                        held = None
                    elif again is None and len(whole_words(so_far)) >= self._ask_again_at and self._room(again_id):
                        again = ask_again()
                else:
                    if held and read_reply("".join(held), earlier, self._copy_words, ended=True) is Reading.COPY:
                        copied = True
                    elif held:
                        if again is not None:
                            again.stop()
                        yield "".join(held)
            if not copied:
                if again is not None:
                    again.stop()
                if reply_capped and on_capped is not None:
                    on_capped()
                return
            if self._on_copy is not None:
                self._on_copy()
            if again is None:
                # A copy known: asked where its prompt was read if that server is free, else
                # wherever a server is (it must be asked now, whoever's prompt it pushes out).
                busy = again_id is not None and not self._room(again_id)
                again = ask_again(options={**again_options, "dialog_id": None}) if busy else ask_again()
            async for delta in again:
                yield delta
        finally:
            if again is not None:
                await again.close()


def _watched_for(messages: Sequence[Message]) -> set[str]:
    """What the reply to `messages` is watched for: the copy keys of the bot's earlier replies;
    none when the caller asks to hear it again."""
    if asks_to_repeat(messages[-1]["content"]):
        return set()
    return {key for m in messages[:-1] if m["role"] == "assistant" and (key := copy_key(m["content"]))}


def _afresh(messages: Sequence[Message]) -> list[Message]:
    """What a copy is asked again with: the system prompt and the caller's last words alone, since
    what made the model copy was the dialog."""
    return [m for m in messages[:-1] if m["role"] == "system"] + [messages[-1]]


class _End:
    """The end of a stream read ahead, once all its deltas are in."""


class _Capped:
    """The LLM stopped a stream read ahead at its token cap."""


class Ahead:
    """A request sent, and its stream read, by a task of its own before it is known whether anyone
    will hear it. Iterated, it gives what came and what comes, tells its prompt figures and its cap
    as they come in the stream (so only a reply heard tells them), and raises what the request
    raised. Stopped, its request is closed.

    A bare task rather than one of the call's TaskGroup: the guard is an async generator, which
    may not hold a TaskGroup open across its yields. The guard's stream stops and closes it on
    every way out, a copy heard, a reply heard, an error or a caller who hung up.
    """

    def __init__(
        self,
        llm: Chat,
        messages: Sequence[Message],
        options: dict[str, Any],
        *,
        on_usage: UsageSink | None,
        on_capped: CappedSink | None,
    ) -> None:
        self._on_usage = on_usage
        self._on_capped = on_capped
        # Not bounded here: the request's max_tokens bounds it (a delta a token, and three more
        # items), and a reader who goes away stops the request.
        self._items: asyncio.Queue[object] = asyncio.Queue()
        stream = llm.stream_chat(
            messages, on_usage=self._items.put_nowait, on_capped=lambda: self._items.put_nowait(_Capped()), **options
        )
        self._task = asyncio.create_task(self._read(stream), name="llm-ask-again")

    async def _read(self, stream: AsyncIterator[str]) -> None:
        ending: object = _End()
        try:
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    self._items.put_nowait(delta)
        except Exception as exc:  # the LLM's errors (pipeline.errors), raised again to whoever reads
            ending = exc
        except BaseException:
            # Stopped: by its guard, which reads no more, or from outside (the loop shutting
            # down), which a reader must hear as the reply lost, not as its own cancellation.
            ending = LLMUnavailable("the reply asked again was stopped")
            raise
        finally:
            self._items.put_nowait(ending)

    async def __aiter__(self) -> AsyncIterator[str]:
        while not isinstance(item := await self._items.get(), _End):
            if isinstance(item, str):
                yield item
            elif isinstance(item, _Capped):
                if self._on_capped is not None:
                    self._on_capped()
            elif isinstance(item, BaseException):
                raise item
            elif self._on_usage is not None:
                self._on_usage(item)

    def stop(self) -> None:
        """Stop the request; `close` waits until it has stopped."""
        self._task.cancel()

    async def close(self) -> None:
        """Stop the request and wait until its stream is closed."""
        self._task.cancel()
        # Waited for, not awaited: the task's CancelledError is not the caller's, and the
        # caller's own cancellation still reaches the caller.
        await asyncio.wait([self._task])
