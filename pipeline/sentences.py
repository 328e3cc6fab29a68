"""Cutting a stream of LLM text deltas into sentences, so speech can start before the reply ends."""

from __future__ import annotations

import re

# A sentence ends at . ! ? or … (possibly followed by closing quotes or brackets) and then white
# space, or at a line break. A lone initial or a short abbreviation ("Dr.", "e.g.") is not an end.
# Sentence-final punctuation, possibly followed by closing quotes or brackets.
_STOP = r"""[.!?…]+["')\]]*"""
_END = re.compile(rf"""({_STOP})\s+|\n+""")
_NOT_AN_END = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|vs|etc|e\.g|i\.e|No))\.$")


_SENTENCE_END = re.compile(rf"{_STOP}\s*$")
_CLAUSE_END = re.compile(r"[,;:]\s+")
# Where a long first sentence without a comma may still be cut: before a word that opens a
# clause of its own ("a question | that needs..."), where a speaker may take a breath too. Not
# before "and" or "or", which as often join two words ("black and white").
_PHRASE_START = re.compile(
    r"\s+(?=(?:that|which|who|because|but|so|when|where|while|if|although|since|unless|until)\s)", re.IGNORECASE
)


def ends_sentence(text: str) -> bool:
    """`text` ends as a sentence does (. ! ? or …, perhaps inside closing quotes or brackets)."""
    return _SENTENCE_END.search(text) is not None


class SentenceSplitter:
    """Feed deltas with `push`; complete sentences come out as soon as they end.

    With `first_clause_words`, the very first piece may end at a comma, semicolon or colon
    once it has that many words, so speech can start before a long first sentence ends. With
    `first_phrase_words`, a first sentence that has no such mark may end before a word that
    opens a clause ("that", "because", ...) once it has that many words.
    """

    def __init__(self, min_chars: int = 2, *, first_clause_words: int = 0, first_phrase_words: int = 0) -> None:
        self._buffer = ""
        self._min_chars = min_chars
        self._first_clause_words = first_clause_words
        self._first_phrase_words = first_phrase_words
        self._emitted = False

    def push(self, delta: str) -> list[str]:
        """Add text; return the sentences it completed, stripped."""
        self._buffer += delta
        sentences: list[str] = []
        if not self._emitted and self._first_clause_words:
            sentences += self._first_piece(_CLAUSE_END, self._first_clause_words)
        if not self._emitted and not sentences and self._first_phrase_words:
            sentences += self._first_piece(_PHRASE_START, self._first_phrase_words)
        start = 0
        for match in _END.finditer(self._buffer):
            if match.group(1) and _NOT_AN_END.search(self._buffer[start : match.end(1)]):
                continue
            candidate = self._buffer[start : match.end()].strip()
            if len(candidate) >= self._min_chars:
                sentences.append(candidate)
                start = match.end()
        self._buffer = self._buffer[start:]
        self._emitted = self._emitted or bool(sentences)
        return sentences

    def _first_piece(self, boundary: re.Pattern[str], words: int) -> list[str]:
        """The first piece, cut at the first `boundary` with at least `words` words before it
        and no sentence end (the sentence would come out whole first), or nothing yet."""
        for match in boundary.finditer(self._buffer):
            piece = self._buffer[: match.end()].strip()
            if len(piece.split()) >= words and not _END.search(self._buffer[: match.start()]):
                self._buffer = self._buffer[match.end() :]
                return [piece]
        return []

    def flush(self) -> str | None:
        """What is left when the stream ends, if anything."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None


def first_sentence(text: str, *, ended: bool = False) -> str | None:
    """The text's first sentence as SentenceSplitter cuts it (stripped), once it is complete
    (`ended`: the text is all there will be, so all of it is the sentence); None while it may
    still go on, and for text with nothing in it."""
    splitter = SentenceSplitter()
    sentences = splitter.push(text)
    if sentences:
        return sentences[0]
    return splitter.flush() if ended else None
