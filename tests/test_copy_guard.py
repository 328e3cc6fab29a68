"""A reply that copies an earlier one of the call is asked again without the dialog; any other
streams through as it comes."""

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import LLMConfig
from pipeline.copy_guard import CopyGuard, copy_key, normalise, whole_words
from pipeline.errors import LLMUnavailable
from pipeline.llm_client import LLMClient, Message
from pipeline.sentences import first_sentence
from tests.conftest import stored_turns
from tests.messages import messages_until
from tests.test_metrics import samples

COPY_WORDS = LLMConfig().copy_words
SYSTEM: Message = {"role": "system", "content": "Answer in one short sentence."}
REFUSAL = "I'm sorry for any confusion, but as a voice assistant, I'm unable to enter a specific number."
DIALOG: list[Message] = [
    SYSTEM,
    {"role": "user", "content": "Please enter your conference number."},
    {"role": "assistant", "content": REFUSAL + " I'm here to help."},
]


class ScriptedChat:
    """Answers each request with the next scripted reply, a few characters a delta, and records what it was asked."""

    def __init__(self, *replies: str, capped: Collection[int] = ()) -> None:
        self.replies = list(replies)
        self.asked: list[list[Message]] = []
        self.dialog_ids: list[str | None] = []
        self.sent: list[int] = []  # characters streamed, a request
        self.sent_when_asked: list[list[int]] = []  # what each earlier request had streamed when one was asked
        self.closed = 0
        self.capped = capped  # the requests (0 the first asked) the token cap stops

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        return [SYSTEM, *messages]

    async def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]:
        self.asked.append(list(messages))
        self.dialog_ids.append(options.get("dialog_id"))
        self.sent_when_asked.append(list(self.sent))
        reply = self.replies.pop(0)
        self.sent.append(0)
        request = len(self.sent) - 1
        if options.get("on_usage"):
            options["on_usage"](len(messages))  # the prompt's size, as a server tells it first
        try:
            for start in range(0, len(reply), 3):
                await asyncio.sleep(0)  # a delta arrives from the network: others run meanwhile
                self.sent[request] += len(reply[start : start + 3])
                yield reply[start : start + 3]
            if request in self.capped and options.get("on_capped"):
                options["on_capped"]()
        finally:
            self.closed += 1


def guarded(llm, *, copy_words: int = COPY_WORDS, ask_again_at: int = COPY_WORDS, **options) -> CopyGuard:
    """The guard over `llm`; by default asking again only once a copy is known."""
    return CopyGuard(llm, copy_words, ask_again_at=ask_again_at, **options)


def asking(text: str) -> list[Message]:
    """DIALOG, then the caller's `text`."""
    return [*DIALOG, {"role": "user", "content": text}]


async def reply_of(chat, messages, **options) -> tuple[list[str], str]:
    deltas = [d async for d in chat.stream_chat(messages, **options)]
    return deltas, "".join(deltas)


async def test_a_copy_is_asked_again_with_the_system_prompt_and_the_callers_words_alone():
    llm = ScriptedChat(REFUSAL + " I'm designed to", "The capital of Japan is Tokyo.")
    copies = []
    question: Message = {"role": "user", "content": "What is the capital of Japan?"}
    _, reply = await reply_of(guarded(llm, on_copy=lambda: copies.append(1)), [*DIALOG, question], dialog_id="d")
    assert reply == "The capital of Japan is Tokyo."  # nothing of the copy was said
    assert llm.asked == [[*DIALOG, question], [SYSTEM, question]]
    assert copies == [1] and llm.closed == 2  # the copy's request was stopped


async def test_a_reply_that_only_begins_alike_is_held_until_it_differs_then_streams():
    reply = "I'm sorry for any confusion, but I can't book a table. Try calling the restaurant."
    llm = ScriptedChat(reply)
    deltas, said = await reply_of(guarded(llm), asking("Book a table for two."))
    assert said == reply and len(llm.asked) == 1
    # Held while alike ("I'm sorry for any confusion, but "), then one piece, then as it comes.
    assert deltas[0].startswith("I'm sorry for any confusion, but ") and len(deltas[-1]) <= 3


async def test_an_unrelated_reply_streams_from_its_first_delta():
    llm = ScriptedChat("Tokyo is the capital of Japan.")
    deltas, _ = await reply_of(guarded(llm), asking("Capital of Japan?"))
    assert deltas[0] == "Tok"


async def test_asked_to_repeat_the_copy_is_what_the_caller_wants():
    llm = ScriptedChat(REFUSAL)
    _, said = await reply_of(guarded(llm), asking("Sorry, can you say that again?"))
    assert said == REFUSAL and len(llm.asked) == 1


async def test_a_copy_is_known_by_its_first_words_without_waiting_for_its_sentence_to_end():
    llm = ScriptedChat(REFUSAL, "I can't book tables.")
    deltas = []
    guard = guarded(llm, copy_words=8, ask_again_at=8)
    async for delta in guard.stream_chat(asking("Book a table.")):
        deltas.append(delta)
    assert "".join(deltas) == "I can't book tables."
    # Stopped at its eighth word ("... but as a"), long before its sentence ended.
    assert llm.closed == 2 and llm.sent[0] < len("I'm sorry for any confusion, but as a voi")


async def test_a_whole_reply_equal_to_an_earlier_first_sentence_is_a_copy_too():
    llm = ScriptedChat(REFUSAL, "I can't book tables.")
    _, said = await reply_of(guarded(llm), asking("Book a table."))
    assert said == "I can't book tables."


async def test_the_cap_is_told_of_the_reply_said_only():
    capped = []
    # The copy is known only once it has ended, after its own cap was told: that one is not passed on.
    llm = ScriptedChat(REFUSAL, "I can't book tables, but", capped={0, 1})
    _, said = await reply_of(
        guarded(llm), asking("Book a table."), on_capped=lambda: capped.append(1)
    )
    assert said == "I can't book tables, but" and capped == [1]


async def test_a_short_first_sentence_said_again_is_no_copy():
    earlier: list[Message] = [SYSTEM, {"role": "user", "content": "Capital of France?"},
                              {"role": "assistant", "content": "Sure! The capital of France is Paris."}]
    llm = ScriptedChat("Sure! The capital of Germany is Berlin.")
    _, said = await reply_of(guarded(llm), [*earlier, {"role": "user", "content": "And Germany?"}])
    assert said == "Sure! The capital of Germany is Berlin." and len(llm.asked) == 1


async def test_a_reply_in_another_script_streams_at_once():
    llm = ScriptedChat("日本の首都は東京です。")
    deltas, _ = await reply_of(guarded(llm), asking("日本の首都は?"))
    assert deltas[0] == "日本の"


async def test_the_copy_is_asked_again_away_from_the_dialogs_cached_slot():
    llm = ScriptedChat(REFUSAL + " I", "Tokyo.")
    await reply_of(guarded(llm), asking("Capital of Japan?"), dialog_id="d")
    # The dialog's slot keeps its prompt (all but the copy) for the next turn; the short re-ask goes anywhere.
    assert llm.dialog_ids == ["d", None]


class PoolChat(ScriptedChat):
    """A ScriptedChat that, like the LLM pool, keeps requests asked aside a dialog apart from it,
    primes prompts and tells which server is idle; it records the primes and the idle checks."""

    def __init__(self, *replies: str) -> None:
        super().__init__(*replies)
        self.primed: list[tuple[list[Message], str]] = []
        self.idle_asked: list[str | None] = []
        self.idle = True

    def aside(self, dialog_id: str) -> str:
        return f"{dialog_id}/aside"

    async def prime(self, messages: Sequence[Message], *, dialog_id: str) -> bool:
        self.primed.append((list(messages), dialog_id))
        return dialog_id == "d"  # the dialog's prime done, whatever becomes of the other

    def has_idle_server(self, dialog_id: str | None = None) -> bool:
        self.idle_asked.append(dialog_id)
        return self.idle


async def test_a_copy_is_asked_again_apart_from_its_dialog_where_its_prompt_was_read():
    llm = PoolChat(REFUSAL, "The capital of Japan is Tokyo.")
    _, said = await reply_of(guarded(llm, ask_again_at=2), asking("Capital of Japan?"), dialog_id="d")
    assert said == "The capital of Japan is Tokyo."
    # The re-ask goes where its prompt was primed, and starts beside the reply only if that server is idle.
    assert llm.dialog_ids == ["d", "d/aside"] and llm.idle_asked == ["d/aside"]


async def test_a_known_copy_whose_reasks_server_is_busy_is_asked_wherever_a_server_is():
    llm = PoolChat(REFUSAL, "The capital of Japan is Tokyo.")
    llm.idle = False  # the server after the dialog's answers another caller
    _, said = await reply_of(guarded(llm, ask_again_at=2), asking("Capital of Japan?"), dialog_id="d")
    # Not beside the reply; once a copy, asked at once, not queued behind that other caller.
    assert said == "The capital of Japan is Tokyo." and llm.dialog_ids == ["d", None]


async def test_the_reasks_prompt_is_read_while_the_caller_talks_when_a_reply_would_be_watched():
    llm = PoolChat()
    words: Message = {"role": "user", "content": "What is the capital of"}
    assert await guarded(llm).prime([*DIALOG, words], dialog_id="d")
    assert llm.primed == [([*DIALOG, words], "d"), ([SYSTEM, words], "d/aside")]
    # Nothing said yet that a reply could copy, or a caller asking to hear it again: the dialog's alone.
    for messages in ([SYSTEM, words], asking("Can you say that again")):
        llm.primed.clear()
        await guarded(llm).prime(messages, dialog_id="d")
        assert llm.primed == [(messages, "d")]
    # Nor before a word is said, nor off (prime_again), nor while the re-ask's server is busy.
    llm.primed.clear()
    await guarded(llm).prime([*DIALOG, {"role": "user", "content": ""}], dialog_id="d")
    await guarded(llm, prime_again=False).prime([*DIALOG, words], dialog_id="d")
    llm.idle = False
    await guarded(llm).prime([*DIALOG, words], dialog_id="d")
    assert [dialog_id for _, dialog_id in llm.primed] == ["d", "d", "d"]


async def test_without_a_pool_to_keep_it_apart_the_reasks_prompt_is_not_primed():
    llm = PoolChat()
    llm.aside = None  # a chat that primes but keeps nothing aside
    await guarded(llm).prime(asking("What is the capital of"), dialog_id="d")
    assert [dialog_id for _, dialog_id in llm.primed] == ["d"]


async def test_a_first_turn_has_nothing_to_copy():
    llm = ScriptedChat(REFUSAL)
    deltas, _ = await reply_of(guarded(llm), [SYSTEM, {"role": "user", "content": "Enter my number."}])
    assert deltas[0] == REFUSAL[:3]


async def test_a_copys_reask_starts_beside_it_once_its_first_words_read_alike():
    llm = ScriptedChat(REFUSAL, "The capital of Japan is Tokyo.")
    guard = guarded(llm, ask_again_at=2)
    _, said = await reply_of(guard, asking("Capital of Japan?"), dialog_id="d")
    assert said == "The capital of Japan is Tokyo."
    # Asked again while the copy had streamed only its first words ("I'm sorry f"), long before
    # its twelfth word showed it a copy; the copy's request was then stopped.
    assert llm.sent_when_asked[1][0] < len("I'm sorry for any")
    assert llm.asked[1] == [SYSTEM, {"role": "user", "content": "Capital of Japan?"}]
    assert llm.dialog_ids == ["d", None] and llm.sent[0] < len(REFUSAL) and llm.closed == 2


UNHEARD = "Never to be heard. " * 40
DIFFERS = "I'm sorry for any confusion, but I can't book a table. Try calling the restaurant."


async def test_a_reask_started_for_a_reply_that_then_differs_is_stopped_before_a_word_is_said():
    llm = ScriptedChat(DIFFERS, UNHEARD)
    heard, sent_when_heard = [], None
    async for delta in guarded(llm, ask_again_at=2).stream_chat(asking("Book.")):
        sent_when_heard = llm.sent[1] if sent_when_heard is None else sent_when_heard
        heard.append(delta)
    assert "".join(heard) == DIFFERS
    # Stopped as the reply's first words went out, not when it ended: its server is the voice's now.
    assert len(llm.asked) == 2 and llm.closed == 2 and llm.sent[1] == sent_when_heard < len(UNHEARD)


async def test_no_reask_goes_beside_a_reply_while_the_llm_has_no_idle_server():
    llm = ScriptedChat(REFUSAL, "The capital of Japan is Tokyo.")
    llm.has_idle_server = lambda dialog_id=None: False  # every server busy, or callers waiting for a place
    _, said = await reply_of(guarded(llm, ask_again_at=2), asking("Capital of Japan?"))
    # Asked again only once the copy was known, by its twelfth word.
    assert said == "The capital of Japan is Tokyo." and llm.sent_when_asked[1][0] > len("I'm sorry for any confusion")


async def test_a_caller_who_interrupts_a_held_reply_stops_its_reask_too():
    llm = ScriptedChat(REFUSAL, UNHEARD)
    stream = guarded(llm, ask_again_at=2).stream_chat(asking("Book it."))
    task = asyncio.create_task(anext(stream))
    while len(llm.asked) < 2:  # the re-ask is under way beside the held reply
        await asyncio.sleep(0)
    task.cancel()  # barge-in: the turn is cancelled before anything was said
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    assert llm.closed == 2 and llm.sent[1] < len(UNHEARD)
    assert {t.get_name() for t in asyncio.all_tasks()}.isdisjoint({"llm-ask-again"})


async def test_only_the_reply_heard_tells_its_prompt_figures_and_its_cap():
    for replies, heard in (((DIFFERS, UNHEARD), DIFFERS), ((REFUSAL, "Tokyo, of"), "Tokyo, of")):
        llm = ScriptedChat(*replies, capped={1})  # the cap stops the re-ask only
        usage, capped = [], []
        _, said = await reply_of(
            guarded(llm, ask_again_at=2), asking("Book."),
            on_usage=usage.append, on_capped=lambda: capped.append(1),
        )
        assert len(llm.asked) == 2 and said == heard
        if heard == DIFFERS:  # the dialog's prompt (4 messages); the unheard re-ask told nothing
            assert usage == [4] and capped == []
        else:  # the copy's prompt, then the re-ask's (2 messages) and its cap, once it was heard
            assert usage == [4, 2] and capped == [1]


async def test_a_failed_reask_fails_the_reply_only_when_it_is_the_one_heard():
    class FailingAgain(ScriptedChat):
        async def stream_chat(self, messages, **options):
            if len(messages) == 2:  # the re-ask
                self.asked.append(list(messages))
                raise LLMUnavailable("the LLM server refused the connection")
                yield ""
            async for delta in super().stream_chat(messages, **options):
                yield delta

    question: Message = {"role": "user", "content": "Book."}
    _, said = await asyncio.wait_for(reply_of(guarded(FailingAgain(DIFFERS), ask_again_at=2), [*DIALOG, question]), 5)
    assert said == DIFFERS
    with pytest.raises(LLMUnavailable):
        await asyncio.wait_for(reply_of(guarded(FailingAgain(REFUSAL), ask_again_at=2), [*DIALOG, question]), 5)


def test_sentences_end_where_the_splitter_ends_them():
    assert first_sentence("It is 3.5 km. Then", ended=False) == "It is 3.5 km."
    assert first_sentence("It is 3.", ended=False) is None
    assert first_sentence("It is 3.", ended=True) == "It is 3."
    assert first_sentence("Ask Dr. Smith. Then", ended=False) == "Ask Dr. Smith."
    assert first_sentence("Well\nthen", ended=False) == "Well"
    assert normalise("I\u2019m SORRY, but") == "i'm sorry but"
    assert normalise("Straße, ЕЩЁ") == "strasse ещё"


def test_a_word_cut_mid_way_is_not_counted_until_something_follows_it():
    assert whole_words("I'm sorry f") == ["i'm", "sorry"]
    assert whole_words("I'm sorry f", ended=True) == ["i'm", "sorry", "f"]
    assert whole_words("I'm sorry, ") == ["i'm", "sorry"]
    assert whole_words("It is 3.5 km. Then I") == ["it", "is", "3", "5", "km"]  # the first sentence's only


def test_only_a_first_sentence_of_a_few_words_or_more_can_be_copied():
    assert copy_key("Sure! The capital of France is Paris.") is None  # "Sure!" alone
    assert copy_key("I don't know.") is None
    assert copy_key(REFUSAL + " More.") == normalise(REFUSAL)


_WORDS = st.sampled_from(["I", "can't", "do", "that", "sorry", "it", "is", "Paris", ",", ".", "!", " ", "\n"])
_REPLY = st.lists(_WORDS, max_size=14).map(" ".join)


@given(
    st.lists(_REPLY, min_size=1, max_size=3),
    _REPLY,
    st.lists(st.integers(1, 5), min_size=1, max_size=8),
    st.integers(1, 4),
)
def test_a_reply_is_said_whole_however_it_streams_or_asked_again_only_when_it_copies(
    earlier, reply, cuts, ask_again_at
):
    """Whatever the dialog, however the LLM's stream is cut into deltas, and whenever the re-ask
    starts, the caller hears the reply exactly as written, or, only when it copies an earlier one
    (its first sentence whole, or its first `copy_words` words), the re-asked one."""
    dialog: list[Message] = [SYSTEM]
    for said in earlier:
        dialog += [{"role": "user", "content": "Hm?"}, {"role": "assistant", "content": said}]

    class Chunked(ScriptedChat):
        async def stream_chat(self, messages, **options):
            self.asked.append(list(messages))
            text, start = self.replies.pop(0), 0
            for size in itertools.cycle(cuts):
                if start >= len(text):
                    break
                await asyncio.sleep(0)
                yield text[start : start + size]
                start += size

    llm = Chunked(reply, "Asked again.")
    guard = guarded(llm, copy_words=3, ask_again_at=ask_again_at)
    heard = asyncio.run(reply_of(guard, [*dialog, {"role": "user", "content": "Next?"}]))[1]
    keys = {key for said in earlier if (key := copy_key(said))}
    first = normalise(first_sentence(reply, ended=True) or "")
    copies = first in keys or (len(first.split()) >= 3 and any(k.split()[:3] == first.split()[:3] for k in keys))
    assert heard == ("Asked again." if copies else reply)


# Requests a phone caller makes that the bundled LLM cannot carry out: it refuses the first, and,
# shown its refusal in the dialog, said the same sentence to all the others.
REQUESTS = (
    "Please enter your conference number followed by the pound key.",
    "I would like to book a table for two at seven tonight.",
    "Can you tell me the opening hours of the library on Saturday?",
    "My flight to Boston was cancelled and I need a new one.",
    "What is the weather going to be like in London tomorrow?",
    "I want to check the balance of my savings account.",
)


@pytest.mark.slow
async def test_the_bundled_llm_answers_a_new_question_after_a_refusal_not_the_refusal_again(llm_config):
    earlier = [
        (
            "I want to check the balance of my savings account.",
            "I'm sorry, but as a voice assistant, I'm unable to access your bank account.",
        ),
        ("Please enter your conference number followed by the pound key.", REFUSAL),
    ]
    dialog: list[Message] = [
        m for u, a in earlier for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})
    ]
    async with LLMClient(llm_config) as client:
        guard = CopyGuard(client, COPY_WORDS, ask_again_at=LLMConfig().copy_reask_words)
        question: Message = {"role": "user", "content": "How many wheels does a bicycle have?"}
        messages = guard.with_system_prompt([*dialog, question])
        reply = "".join([d async for d in guard.stream_chat(messages, max_tokens=32)])
    said = copy_key(reply)
    assert reply.strip() and (said is None or said not in {copy_key(a) for _, a in earlier}), reply


@pytest.mark.slow
async def test_a_caller_with_one_request_after_another_hears_a_reply_to_each(server, shared_redis, proxy):
    async def copies_counted() -> float:
        # The server is shared with other tests, whose calls count copies too.
        async with httpx.AsyncClient() as http:
            return samples((await http.get(f"{server}/metrics")).text).get(("parley_llm_copies_total", ()), 0.0)

    before, copies_before = len(proxy.requests), await copies_counted()
    async with websockets.connect(server.replace("http", "ws") + "/ws") as ws:
        session = json.loads(await ws.recv())
        replies = []
        for request in REQUESTS:
            await ws.send(json.dumps({"type": "text", "text": request}))
            seen = await messages_until(ws, lambda m: m["type"] == "reply" and m.get("done"))
            replies.append(seen[-1]["text"])
    copies = await copies_counted() - copies_before
    asked = proxy.requests[before:]
    reasked = [r for r in asked if len(r["messages"]) == 2 and r["messages"][-1]["content"] in REQUESTS[1:]]
    keys = [copy_key(r) for r in replies]
    for i, key in enumerate(keys):
        if key is not None and key in keys[:i]:
            # Said again only as the answer of a request that showed no earlier reply to copy.
            assert [r for r in reasked if r["messages"][-1]["content"] == REQUESTS[i]], (i, replies)
    # Shown its refusal, this model copied it (six requests, one reply, before the guard): each copy
    # was counted and asked again (and a reply that only began like one may have been asked again
    # beside it, [llm] copy_reask_words, its re-ask stopped unheard).
    assert 1 <= copies <= len(reasked), (copies, len(reasked))
    # What the dialog keeps, and what the next turn's prompt shows, is what the caller heard.
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [t.text for t in turns if t.role == "assistant"] == replies
