"""Sums, units and "say that again" answered by Parley itself; everything else by the LLM."""

import json
import math

import httpx
import pytest
import websockets
from hypothesis import given, settings as hypothesis_settings, strategies as st

from media.audio_file import read_audio, write_wav
from parley.call_client import run_call
from pipeline.llm_client import LLMClient
from pipeline.quick_answers import QuickAnswers, QuickAnswersConfig, quick_answer
from pipeline.spoken_sums import say_number
from tests.conftest import stored_turns
from tests.messages import messages_until
from tests.speech import normalise
from tests.test_metrics import samples


def asked(question: str, history: tuple[tuple[str, str], ...] = (), config=QuickAnswersConfig()):
    messages = [{"role": "system", "content": "Be brief."}]
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return quick_answer([*messages, {"role": "user", "content": question}], config)


@pytest.mark.parametrize("question, answer", [
    ("What is two plus two?", "2 plus 2 is 4."),
    ("What is nine times eight?", "9 times 8 is 72."),
    ("What's six times seven?", "6 times 7 is 42."),
    ("Um, what's 1,000 divided by 8?", "1000 divided by 8 is 125."),
    ("What is 100 minus 37?", "100 minus 37 is 63."),
    ("What is ten percent of 200?", "10 percent of 200 is 20."),
    ("What is half of 50?", "Half of 50 is 25."),
    ("What is one third of 9?", "A third of 9 is 3."),
    ("What is three squared?", "3 squared is 9."),
    ("What's the square root of 2?", "The square root of 2 is about 1.414."),
    ("What is 2 to the power of 10?", "2 to the power of 10 is 1024."),
    ("What's 7 + 8 x 2?", "7 plus 8 times 2 is 23."),  # times before plus
    ("What's 9x8?", "9 times 8 is 72."),
    ("Can you tell me what 12.5 times 2 is, please?", "12.5 times 2 is 25."),
    ("What is 10 divided by 0?", "You can't divide by zero."),
])
def test_a_sum_said_aloud_is_worked_out(question, answer):
    assert asked(question).kind == "sum"
    assert asked(question).text == answer


@pytest.mark.parametrize("question, answer", [
    ("How many minutes are in two hours?", "There are 120 minutes in 2 hours."),
    ("How many inches are in a foot?", "There are 12 inches in a foot."),
    ("How many days are there in a week?", "There are 7 days in a week."),
    ("How many metres are in a kilometre?", "There are 1000 metres in a kilometre."),
    ("How many years are in a decade?", "There are 10 years in a decade."),
    ("Convert 5 miles to kilometres.", "5 miles is about 8.047 kilometres."),
    ("What is 20 degrees Celsius in Fahrenheit?", "20 degrees celsius is 68 fahrenheit."),
])
def test_a_conversion_between_units_is_worked_out(question, answer):
    assert asked(question).kind == "conversion"
    assert asked(question).text == answer


@pytest.mark.parametrize("question", [
    "What is the capital of France?",
    "How many legs does a spider have?",  # "legs" is no unit
    "How many people are in a family?",
    "How many continents are there?",
    "Is 7 a prime number?",
    "What is 5?",  # a number alone is no sum
    "I have two kids and three cats.",
    "What is the third planet from the sun?",
    "Repeat after me: hello.",
    "What?",
    "",
])
def test_anything_else_is_left_to_the_llm(question):
    assert asked(question, history=(("Hi.", "Hello! How can I help?"),)) is None


@pytest.mark.parametrize("question", [
    "Sorry, can you say that again?", "Repeat that, please.", "What did you say?", "Say that again?",
    "Could you repeat that?", "Pardon?", "Come again?", "Sorry, what was that?",
])
def test_a_request_to_repeat_gets_the_last_reply_word_for_word(question):
    history = (("What is the capital of Australia?", "The capital of Australia is Canberra."), ("Thanks.", "You're welcome."))
    assert asked(question, history) is not None
    assert asked(question, history).kind == "repeat"
    assert asked(question, history).text == "You're welcome."


def test_a_repeat_with_nothing_said_yet_is_left_to_the_llm():
    assert asked("Say that again?") is None


def test_each_kind_can_be_turned_off():
    off = QuickAnswersConfig(sums=False, conversions=False, repeats=False)
    assert not off.any
    assert asked("What is two plus two?", config=off) is None
    assert asked("How many inches are in a foot?", config=off) is None
    assert asked("Say that again?", (("Hi.", "Hello."),), config=off) is None
    assert asked("What is two plus two?", config=QuickAnswersConfig(conversions=False, repeats=False)).kind == "sum"


OPERATIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6), operation=st.sampled_from(sorted(OPERATIONS)))
def test_any_sum_of_whole_numbers_comes_out_right(a, b, operation):
    answer = asked(f"What is {a} {operation} {b}?")
    assert answer is not None
    assert answer.text == f"{a} {operation} {b} is {OPERATIONS[operation](a, b)}."


@given(a=st.integers(1, 10**6), b=st.integers(1, 10**4))
def test_a_division_is_said_whole_or_to_three_decimals(a, b):
    text = asked(f"What is {a} divided by {b}?").text
    said = text.removeprefix(f"{a} divided by {b} is ").removesuffix(".")
    if a % b == 0:
        assert said == str(a // b)
    elif (a * 1000) % b == 0:  # three decimals say it all (1 divided by 8 is 0.125)
        assert float(said) == a / b
    else:
        assert said.startswith("about ") and math.isclose(float(said.removeprefix("about ")), a / b, abs_tol=0.0005 + 1e-9)


@hypothesis_settings(max_examples=300)
@given(st.text(max_size=120))
def test_no_text_breaks_the_quick_answers(text):
    answer = asked(text, history=(("Hi.", "Hello."),))
    assert answer is None or answer.text


def test_numbers_are_said_whole_or_to_three_decimals():
    assert say_number(72.0) == ("72", True)
    assert say_number(1 / 3 * 9) == ("3", True)
    assert say_number(1.609344) == ("1.609", False)
    assert say_number(0.5) == ("0.5", True)


@pytest.mark.slow
async def test_the_llm_is_asked_only_what_the_quick_answers_leave(llm_config):
    kinds: list[str] = []
    async with LLMClient(llm_config) as client:
        chat = QuickAnswers(client, on_answer=kinds.append)
        sum_reply = "".join([d async for d in chat.stream_chat(chat.with_system_prompt([{"role": "user", "content": "What's nine times eight?"}]))])
        fact_reply = "".join([d async for d in chat.stream_chat(chat.with_system_prompt([{"role": "user", "content": "What is the capital of France?"}]), max_tokens=24)])
    assert sum_reply == "9 times 8 is 72."
    assert kinds == ["sum"]  # the fact went to the bundled LLM, which wrote something of its own
    assert fact_reply.strip() and "72" not in fact_reply


@pytest.mark.slow
async def test_a_caller_gets_a_sum_and_its_repeat_from_the_server_and_the_dialog_keeps_both(server, shared_redis, proxy):
    async with websockets.connect(server.replace("http", "ws") + "/ws") as ws:
        session = json.loads(await ws.recv())
        assert session["type"] == "session"
        requests_before = len(proxy.requests)
        replies = []
        for question in ("What's six times seven?", "Sorry, can you say that again?"):
            await ws.send(json.dumps({"type": "text", "text": question}))
            seen = await messages_until(ws, lambda m: m["type"] == "reply" and m.get("done"))
            replies.append(seen[-1]["text"])
        async with httpx.AsyncClient() as http:
            got = samples((await http.get(f"{server}/metrics")).text)
    assert replies == ["6 times 7 is 42.", "6 times 7 is 42."]
    assert not [r for r in proxy.requests[requests_before:] if "six times seven" in r["messages"][-1]["content"]]
    assert got[("parley_quick_answers_total", (("kind", "sum"),))] >= 1
    assert got[("parley_quick_answers_total", (("kind", "repeat"),))] >= 1
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [(t.role, t.text) for t in turns] == [
        ("user", "What's six times seven?"), ("assistant", "6 times 7 is 42."),
        ("user", "Sorry, can you say that again?"), ("assistant", "6 times 7 is 42."),
    ]


@pytest.mark.slow
async def test_a_sum_asked_aloud_is_answered_aloud(server, synthesizer, transcriber, proxy, tmp_path):
    # The question in the server's own voice (piper, 22.05 kHz), a breath of silence either side.
    question = await synthesizer.synthesize("What is nine times eight?")
    silence = bytes(2 * synthesizer.sample_rate // 2)
    path = tmp_path / "nine-times-eight.wav"
    write_wav(path, silence + question + silence, synthesizer.sample_rate)
    report = await run_call(server, [str(path)], out_dir=tmp_path)
    (turn,) = report["turns"]
    assert normalise(turn["transcript"]) in ("what is 9 times 8", "what is nine times eight"), turn["transcript"]
    assert turn["reply_text"] == "9 times 8 is 72."
    assert not proxy.prompts_answering(turn["transcript"])  # the LLM was never asked this question
    heard = normalise((await transcriber.transcribe(read_audio(turn["reply_audio"]))).text)
    assert "72" in heard or "seventy two" in heard.replace("-", " "), heard
