from pipeline.sentences import SentenceSplitter, ends_sentence


def feed(deltas):
    splitter = SentenceSplitter()
    out = [s for d in deltas for s in splitter.push(d)]
    return out, splitter.flush()


def test_sentences_come_out_as_soon_as_they_end():
    splitter = SentenceSplitter()
    assert splitter.push("Hello there") == []
    assert splitter.push("! How are") == ["Hello there!"]
    assert splitter.push(" you?\n") == ["How are you?"]
    assert splitter.flush() is None


def test_abbreviations_initials_and_decimals_do_not_end_a_sentence():
    out, rest = feed(["I met Dr", ". Smith and J. R. R. Tolkien at 3.5 p", "m. Really? ", "Yes"])
    assert out == ["I met Dr. Smith and J. R. R. Tolkien at 3.5 pm.", "Really?"]
    assert rest == "Yes"


def test_quotes_and_line_breaks():
    out, rest = feed(['He said "stop." Then', " left\nfor good"])
    assert out == ['He said "stop."', "Then left"]
    assert rest == "for good"


def test_the_first_piece_may_end_at_a_clause_once_it_is_long_enough():
    splitter = SentenceSplitter(first_clause_words=4)
    assert splitter.push("Well, ") == []  # too short to speak alone
    assert splitter.push("Paris is the capital, and it") == ["Well, Paris is the capital,"]
    assert splitter.push(" is big, old and lovely. Yes") == ["and it is big, old and lovely."]
    assert splitter.flush() == "Yes"


def test_a_sentence_that_ends_before_the_clause_comes_out_whole():
    splitter = SentenceSplitter(first_clause_words=4)
    assert splitter.push("Hi. I think that, on balance, yes. ") == ["Hi.", "I think that, on balance, yes."]


def test_a_long_first_sentence_without_a_comma_may_end_before_a_word_that_opens_a_clause():
    splitter = SentenceSplitter(first_clause_words=4, first_phrase_words=4)
    assert splitter.push("You're asking a question that") == []  # "that" may yet be "thatch"
    assert splitter.push(" requires a precise answer that") == ["You're asking a question"]
    # Only the first piece is cut so: the rest comes out as sentences.
    assert splitter.push(" matters. The bat") == ["that requires a precise answer that matters."]
    assert splitter.flush() == "The bat"


def test_the_first_phrase_is_cut_only_once_long_enough_and_never_before_and():
    splitter = SentenceSplitter(first_clause_words=4, first_phrase_words=4)
    assert splitter.push("I know that black and white cats ") == []  # "I know" is too short
    assert splitter.push("sleep a lot when it rains ") == ["I know that black and white cats sleep a lot"]
    assert splitter.flush() == "when it rains"


def test_a_comma_comes_before_a_phrase_and_a_sentence_end_before_both():
    splitter = SentenceSplitter(first_clause_words=4, first_phrase_words=4)
    assert splitter.push("Yes, the bank is open today, but ") == ["Yes, the bank is open today,"]
    splitter = SentenceSplitter(first_clause_words=4, first_phrase_words=4)
    assert splitter.push("The bank is open today. So come ") == ["The bank is open today."]
    assert SentenceSplitter().push("You're asking a question that needs an answer ") == []  # off by default


def test_what_ends_as_a_sentence_does():
    assert all(ends_sentence(t) for t in ("Paris.", "Really?", "Stop!", "Wait…", 'He said "no."', "(It is.) "))
    assert not any(ends_sentence(t) for t in ("which is a", "Paris,", "the end of the", "", "3.5 kg"))
