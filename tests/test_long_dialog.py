"""A long dialog reads only its new words: the prompt's beginning stays put and the dialog keeps its slot."""

import asyncio
import json

import pytest
import websockets

from tests.conftest import own_server

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Hi, can you help me plan a birthday party?",
    "It is for my daughter, she turns nine.",
    "About twelve children are coming.",
    "What games can they play in a small garden?",
    "And if it rains, what can they do inside?",
    "What food do children that age like?",
    "Should I order pizza or cook myself?",
    "How big should the cake be for twelve kids?",
    "Chocolate or vanilla, which is safer?",
    "Some children may have nut allergies.",
    "How do I write that on the invitation?",
    "When should I send the invitations?",
    "Is two hours long enough for the party?",
    "What time of day works best?",
    "Do I need to give presents to the guests?",
    "What goes in a small party bag?",
    "How much should that cost per child?",
    "Can you suggest a theme she might like?",
    "She loves animals, especially horses.",
    "What decorations fit a horse theme?",
    "Could we hire a pony for the afternoon?",
    "Is that safe with so many children?",
    "What music should I play?",
    "How many adults should help me?",
    "What do I do if a child gets upset?",
    "How do I end the party politely?",
    "Should I take photos for the parents?",
    "What do I do with leftover cake?",
    "How soon should I send thank you notes?",
    "Thanks, that is everything I needed.",
]


async def _ask(ws, text: str) -> dict:
    """Say `text`; return the turn's metrics once its reply is done."""
    await ws.send(json.dumps({"type": "text", "text": text}))
    metrics = None
    async with asyncio.timeout(120):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "metrics":
                metrics = message
            elif message["type"] == "reply" and message.get("done"):
                assert message["text"], f"no reply to {text!r}"
                return metrics


async def test_a_thirty_turn_dialog_reads_only_the_new_words_of_each_prompt(shared_redis, proxy, tmp_path):
    # The server is told the slots to keep dialogs on, as for any external llama-server (four of the
    # eight). No copy guard: a reply asked again without the dialog (a copy) reads a prompt of the
    # system prompt and the question alone, and at temperature 0.7 any turn may copy, or none.
    async with own_server(
        shared_redis.url, proxy.base_url, tmp_path, PARLEY_LLM_SERVER_SLOTS="4", PARLEY_LLM_COPY_WORDS="0"
    ) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "session"
            prompts = []
            for question in QUESTIONS:
                metrics = await _ask(ws, question)
                assert metrics is not None and "llm_first_token" in metrics["stages_ms"]
                prompts.append(metrics["prompt_tokens"])
    last = prompts[-5:]
    # By turn 26 the dialog is past the history budget (600 tokens): the prompts are long and were
    # trimmed, yet the server read only a small part of each; its cache held the rest. (One of
    # them may have been read whole: the suite's llama-server is shared, and another test's
    # server may still be using the same slot number, which evicts this dialog's cache.)
    assert all(p["total"] >= 300 for p in last), prompts
    assert sum(p["read"] <= p["total"] / 5 for p in last) >= 4, prompts
    # And so nearly every turn: what a turn reads is about its new words (the last reply and
    # this question), not the dialog.
    small = [p["read"] <= 120 for p in prompts[1:]]
    assert sum(small) >= 26, prompts
