"""The answer-quality scorer, the question set's file, and (slow) the bench's plumbing against the real llama-server."""

from __future__ import annotations

import pytest

from parley.bench.quality import PROMPTS, QUESTIONS, Question, choose, load_prompts, load_questions, run_set
from parley.bench.quality_scorer import AnswerCheck, first_sentence, normalise, score_reply
from pipeline.llm_client import LLMClient


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Two plus two is FOUR.", ["2", "plus", "2", "is", "4"]),
        ("It has three hundred and sixty-five days", ["it", "has", "365", "days"]),
        ("About 384,000 kilometres", ["about", "384000", "kilometres"]),
        ("Twenty-one thousand", ["21000"]),
        ("I don't know, sorry!", ["i", "dont", "know", "sorry"]),
        ("It’s C-A-T.", ["its", "c", "a", "t"]),
        ("Pi is about 3.14.", ["pi", "is", "about", "3.14"]),
        ("bread and butter, one and all", ["bread", "and", "butter", "1", "and", "all"]),
    ],
)
def test_normalise(text, words):
    assert normalise(text) == words


def test_a_right_answer_first():
    score = score_reply(AnswerCheck(accept=("paris",)), "Paris is the capital of France. It is lovely.")
    assert score == score_reply(AnswerCheck(accept=("Paris",)), "Paris is the capital of France. It is lovely.")
    assert score.right and score.right_first_sentence and score.words == 9


def test_right_but_not_first():
    score = score_reply(AnswerCheck(number=4), "That is a classic maths problem. Two plus two makes four.")
    assert score.right
    assert not score.right_first_sentence


def test_a_wrong_answer():
    score = score_reply(AnswerCheck(number=72), "Nine times eight is nine times eight, which equals 10.")
    assert not score.right and not score.right_first_sentence


def test_a_number_is_not_part_of_a_longer_one():
    assert not AnswerCheck(number=12).is_right("It is 120 minutes, or 1.2 of something.")
    assert AnswerCheck(number=12).is_right("Twelve.")


def test_a_rejected_answer_before_the_right_one_makes_it_wrong():
    check = AnswerCheck(accept=("yes", "is a star"), reject=("no", "not"))
    assert check.is_right("Yes, the sun is a star, not a planet.")
    assert check.is_right("The sun is a star.")
    assert not check.is_right("No. Well, yes.")
    assert not check.is_right("The sun is not a star.")


def test_phrases_match_whole_words():
    check = AnswerCheck(accept=("au",))
    assert check.is_right("Gold's symbol is Au.")
    assert not check.is_right("It is in Australia.")


def test_first_sentence_is_cut_as_the_voice_cuts_it():
    assert first_sentence("Dr. Smith wrote it. Then more.") == "Dr. Smith wrote it."
    assert first_sentence("Just one sentence without a stop") == "Just one sentence without a stop"
    assert first_sentence("") == ""


def test_a_check_needs_something_to_accept():
    with pytest.raises(ValueError):
        AnswerCheck(reject=("no",))


def test_the_question_set_loads_and_covers_every_kind():
    questions = load_questions(QUESTIONS)
    assert len(questions) >= 50
    kinds = {q.kind for q in questions}
    assert {"fact", "arithmetic", "conversion", "yes_no", "spelling", "follow_up", "repeat", "unknown"} <= kinds
    follow_up = next(q for q in questions if q.id == "follow-germany")
    assert [m["role"] for m in follow_up.messages()] == ["user", "assistant", "user"]
    assert follow_up.messages()[-1]["content"] == "And what about Germany?"


def test_a_malformed_item_is_named(tmp_path):
    path = tmp_path / "questions.toml"
    path.write_text('[[item]]\nid = "broken"\nkind = "fact"\nquestion = "Why?"\n')
    with pytest.raises(ValueError, match="broken"):
        load_questions(path)


def test_prompts_start_with_the_configured_one():
    prompts = load_prompts("Be brief.", PROMPTS)
    assert next(iter(prompts.items())) == ("default", "Be brief.")
    assert "plain-first-examples" in prompts


def test_choose_keeps_to_the_speed_budget():
    def figures(right_first, right, first_sentence_ms):
        return {"right_first_sentence": right_first, "right": right, "first_sentence_ms_p50": first_sentence_ms}

    results = {
        "today": figures(30, 35, 300.0),
        "better": figures(40, 42, 400.0),
        "best but slow": figures(60, 60, 900.0),
    }
    assert choose(results, "today") == "better"


@pytest.mark.slow
async def test_the_bench_runs_questions_against_the_bundled_llm(llm_config):
    questions = [q for q in load_questions() if q.id in {"capital-france", "follow-germany", "repeat-canberra", "two-plus-two"}]
    async with LLMClient(llm_config) as client:
        figures = await run_set(client, questions)
    assert figures["questions"] == 4
    assert [item["id"] for item in figures["items"]] == [q.id for q in questions]
    assert all(item["reply"] for item in figures["items"])
    assert 0 <= figures["right_first_sentence"] <= figures["right"] <= 4
    assert figures["first_token_ms_p50"] > 0 and figures["tokens_per_s"] > 0
    # The follow-up carried its history: the server read more prompt than for the lone question.
    tokens = {item["id"]: item["prompt_tokens"] for item in figures["items"]}
    assert tokens["follow-germany"] > tokens["capital-france"]


def test_question_messages_without_history():
    question = Question(id="q", kind="fact", question="Hi?", check=AnswerCheck(accept=("hi",)))
    assert question.messages() == [{"role": "user", "content": "Hi?"}]
