from pipeline.sentences import SentenceSplitter


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
