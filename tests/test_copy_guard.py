"""A reply that copies an earlier one of the call is asked again without the dialog; any other
streams through as it comes."""

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st

from pipeline.copy_guard import CopyGuard, first_sentence, normalise, read_reply
from pipeline.llm_client import LLMClient, Message
from tests.conftest import stored_turns
from tests.messages import messages_until
from tests.test_metrics import samples

SYSTEM: Message = {"role": "system", "content": "Answer in one short sentence."}
REFUSAL = "I'm sorry for any confusion, but as a voice assistant, I'm unable to enter a specific number."
DIALOG: list[Message] = [
    SYSTEM,
    {"role": "user", "content": "Please enter your conference number."},
    {"role": "assistant", "content": REFUSAL + " I'm here to help."},
]


class ScriptedChat:
    """Answers each request with the next scripted reply, a few characters a delta, and records what it was asked."""

    def __init__(self, *replies: str, capped: bool = False) -> None:
        self.replies = list(replies)
        self.asked: list[list[Message]] = []
        self.closed = 0
        self.capped = capped

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        return [SYSTEM, *messages]

    async def stream_chat(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[str]:
        self.asked.append(list(messages))
        reply = self.replies.pop(0)
        try:
            for start in range(0, len(reply), 3):
                yield reply[start : start + 3]
            if self.capped and options.get("on_capped"):
                options["on_capped"]()
        finally:
            self.closed += 1


async def reply_of(chat, messages, **options) -> tuple[list[str], str]:
    deltas = [d async for d in chat.stream_chat(messages, **options)]
    return deltas, "".join(deltas)


async def test_a_copy_is_asked_again_with_the_system_prompt_and_the_callers_words_alone():
    llm = ScriptedChat(REFUSAL + " I'm designed to", "The capital of Japan is Tokyo.")
    copies = []
    question: Message = {"role": "user", "content": "What is the capital of Japan?"}
    _, reply = await reply_of(CopyGuard(llm, on_copy=lambda: copies.append(1)), [*DIALOG, question], dialog_id="d")
    assert reply == "The capital of Japan is Tokyo."  # nothing of the copy was said
    assert llm.asked == [[*DIALOG, question], [SYSTEM, question]]
    assert copies == [1] and llm.closed == 2  # the copy's request was stopped


async def test_a_reply_that_only_begins_alike_is_held_until_it_differs_then_streams():
    reply = "I'm sorry for any confusion, but I can't book a table. Try calling the restaurant."
    llm = ScriptedChat(reply)
    deltas, said = await reply_of(CopyGuard(llm), [*DIALOG, {"role": "user", "content": "Book a table for two."}])
    assert said == reply and len(llm.asked) == 1
    # Held while alike ("I'm sorry for any confusion, but "), then one piece, then as it comes.
    assert deltas[0].startswith("I'm sorry for any confusion, but ") and len(deltas[-1]) <= 3


async def test_an_unrelated_reply_streams_from_its_first_delta():
    llm = ScriptedChat("Tokyo is the capital of Japan.")
    deltas, _ = await reply_of(CopyGuard(llm), [*DIALOG, {"role": "user", "content": "Capital of Japan?"}])
    assert deltas[0] == "Tok"


async def test_asked_to_repeat_the_copy_is_what_the_caller_wants():
    llm = ScriptedChat(REFUSAL)
    _, said = await reply_of(CopyGuard(llm), [*DIALOG, {"role": "user", "content": "Sorry, can you say that again?"}])
    assert said == REFUSAL and len(llm.asked) == 1


async def test_a_whole_reply_equal_to_an_earlier_first_sentence_is_a_copy_too():
    llm = ScriptedChat(REFUSAL, "I can't book tables.")
    _, said = await reply_of(CopyGuard(llm), [*DIALOG, {"role": "user", "content": "Book a table."}])
    assert said == "I can't book tables."


async def test_the_cap_is_told_of_the_reply_said_only():
    capped = []
    llm = ScriptedChat(REFUSAL + " I'm", "I can't book tables, but", capped=True)
    _, said = await reply_of(
        CopyGuard(llm), [*DIALOG, {"role": "user", "content": "Book a table."}], on_capped=lambda: capped.append(1)
    )
    assert said == "I can't book tables, but" and capped == [1]  # once: the copy's cap is not told


async def test_a_first_turn_has_nothing_to_copy():
    llm = ScriptedChat(REFUSAL)
    deltas, _ = await reply_of(CopyGuard(llm), [SYSTEM, {"role": "user", "content": "Enter my number."}])
    assert deltas[0] == REFUSAL[:3]


def test_sentences_end_at_a_mark_and_a_space_not_inside_a_number():
    assert first_sentence("It is 3.5 km. Then", ended=False) == "It is 3.5 km. "
    assert first_sentence("It is 3.", ended=False) is None
    assert first_sentence("It is 3.", ended=True) == "It is 3."
    assert normalise("I\u2019m SORRY, but") == "i'm sorry but"


@given(st.text(max_size=60), st.text(min_size=1, max_size=60))
def test_a_reply_never_reads_as_a_copy_of_a_sentence_it_does_not_repeat(reply, earlier):
    sentence = normalise(first_sentence(earlier, ended=True) or "")
    reading = read_reply(reply, {sentence} if sentence else set(), ended=True)
    if reading.name == "COPY":
        assert normalise(first_sentence(reply, ended=True) or "") == sentence


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
        ("I want to check the balance of my savings account.", "I'm sorry, but as a voice assistant, I'm unable to access your bank account."),
        ("Please enter your conference number followed by the pound key.", REFUSAL),
    ]
    dialog: list[Message] = [m for u, a in earlier for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    async with LLMClient(llm_config) as client:
        guard = CopyGuard(client)
        messages = guard.with_system_prompt([*dialog, {"role": "user", "content": "How many wheels does a bicycle have?"}])
        reply = "".join([d async for d in guard.stream_chat(messages, max_tokens=32)])
    said = normalise(first_sentence(reply, ended=True) or "")
    assert said and said not in {normalise(a) for _, a in earlier}, reply


@pytest.mark.slow
async def test_a_caller_with_one_request_after_another_hears_a_reply_to_each(server, shared_redis):
    async with websockets.connect(server.replace("http", "ws") + "/ws") as ws:
        session = json.loads(await ws.recv())
        replies = []
        for request in REQUESTS:
            await ws.send(json.dumps({"type": "text", "text": request}))
            seen = await messages_until(ws, lambda m: m["type"] == "reply" and m.get("done"))
            replies.append(seen[-1]["text"])
        async with httpx.AsyncClient() as http:
            got = samples((await http.get(f"{server}/metrics")).text)
    firsts = [normalise(first_sentence(r, ended=True) or "") for r in replies]
    assert all(firsts) and len(set(firsts)) == len(REQUESTS), replies
    # What the dialog keeps, and what the next turn's prompt shows, is what the caller heard.
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [t.text for t in turns if t.role == "assistant"] == replies
    assert ("parley_llm_copies_total", ()) in got
