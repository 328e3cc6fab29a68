import pytest

from pipeline.unfinished_text import ends_finished, ends_unfinished


@pytest.mark.parametrize(
    "text",
    [
        "Please enter your conference number followed by the",
        "Please enter your conference number followed by the.",  # Whisper's full stop does not finish it
        "Can you tell me the opening hours of",
        "My flight to Boston was cancelled and I...",
        "And so, my fellow Americans,",
        "I would like to book a table for",
        "I want to check the balance of my",
        "Um, I need, uh",
        "I need to change the address on my account because",
        "Send it to my manager\u2014",
        "And so my fellow Americans.",  # a preface, heard as finished by the audio model
        "and so my fellow america and so my fellow america",  # Whisper looping on the same pause
        "So my question",
        "And so am I fellow America.",  # the same preface, as Whisper heard it in the browser
    ],
)
def test_a_sentence_left_hanging_is_unfinished(text):
    assert ends_unfinished(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "Please enter your conference number followed by the pound key.",
        "What is the weather like in London tomorrow?",
        "What are you looking for?",  # a preposition may end a question
        "Who should I talk to?",
        "Turn the lights on",
        "I'm not sure what you're talking about.",
        "Yes.",
        "Thanks",
        "And you?",
        "So what is the weather like tomorrow in Paris?",
        "And then we went home.",
    ],
)
def test_a_sentence_that_may_end_there_is_not(text):
    assert ends_unfinished(text) is False


@pytest.mark.parametrize("text, language", [("", "en"), ("  ", "en"), ("?!", "en"), ("Je voudrais le", "fr")])
def test_nothing_to_judge_is_no_judgement(text, language):
    assert ends_unfinished(text, language) is None


@pytest.mark.parametrize(
    "text",
    [
        "Please enter your conference number followed by the pound key.",
        "What is the weather like in London tomorrow?",
        "Who should I talk to?",
        "Stop!",
        '"I need a new flight."',  # closing quotes after the full stop
    ],
)
def test_a_sentence_ended_by_its_punctuation_ends_the_turn_on_its_words(text):
    assert ends_finished(text) is True


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Please enter your conference number followed by the.", "en"),  # the full stop cannot finish it
        ("I would like to book a table for.", "en"),
        ("And so my fellow Americans.", "en"),  # a preface
        ("My flight to Boston was cancelled and I...", "en"),  # trailing off
        ("Send it to my manager,", "en"),
        ("Turn the lights on", "en"),  # no mark: whatever the words, Whisper did not end a sentence
        ("", "en"),
        ("Je voudrais un billet.", "fr"),  # the lists are English: the model decides
    ],
)
def test_words_that_do_not_end_a_sentence_leave_the_turn_to_the_model(text, language):
    assert ends_finished(text, language) is False
