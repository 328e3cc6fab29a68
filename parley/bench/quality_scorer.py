"""Scoring a spoken reply against a question's accepted answers.

A reply and the accepted answers are normalised the same way (lower case, no
punctuation or apostrophes, small number words as digits: "twenty-one" is 21,
"one thousand" is 1000, "1,000" is 1000), then matched word by word. A reply is
right when an accepted answer appears in it before any rejected one ("yes"
before "no" for a yes-or-no question), and right in its first sentence when
that holds for the first sentence alone: what a caller hears first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline import sentences

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES)

_APOSTROPHES = re.compile(r"['’‘`]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# Keeps a decimal point between digits ("3.5"); any other non-alphanumeric character splits words.
_SEPARATORS = re.compile(r"(?:(?<!\d)\.|\.(?!\d)|[^\w.])+")


def normalise(text: str) -> list[str]:
    """The words of `text`, lower case, without punctuation, small number words as digits."""
    text = _THOUSANDS.sub("", _APOSTROPHES.sub("", text.lower())).replace("_", " ")
    return _words_to_digits([word for word in _SEPARATORS.split(text) if word])


def _words_to_digits(words: list[str]) -> list[str]:
    # "three hundred and sixty five" -> "365"; a lone "and" between numbers is part of the number
    # only after "hundred" or "thousand", as English says it.
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] not in _NUMBER_WORDS or words[i] in _SCALES:
            out.append(words[i])
            i += 1
            continue
        total, current = 0, 0
        while i < len(words):
            word = words[i]
            if word in _UNITS:
                current += _UNITS[word]
            elif word in _TENS:
                current += _TENS[word]
            elif word in _SCALES:
                scale = _SCALES[word]
                if scale == 100:
                    current = (current or 1) * 100
                else:
                    total += (current or 1) * scale
                    current = 0
            elif word == "and" and i + 1 < len(words) and words[i + 1] in _UNITS | _TENS and words[i - 1] in _SCALES:
                pass
            else:
                break
            i += 1
        out.append(str(total + current))
    return out


def first_sentence(reply: str) -> str:
    """The reply's first sentence, as the voice pipeline cuts it."""
    return sentences.first_sentence(reply, ended=True) or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerCheck:
    """What counts as a right answer.

    accept: phrases, any of which is right ("paris"; "carbon dioxide", "co2").
    number: a number that is right, written in digits or words (4, "four", "4.0").
    reject: phrases that make the reply wrong when they come before the right one ("no" for a yes).
    """

    accept: tuple[str, ...] = ()
    number: float | None = None
    reject: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.accept and self.number is None:
            raise ValueError("an answer check needs accepted phrases or a number")

    def position(self, words: list[str]) -> int | None:
        """The index of the first word of the earliest right answer in `words`, or None."""
        found = [i for phrase in self.accept if (i := _find(words, normalise(phrase))) is not None]
        if self.number is not None:
            found += [i for i, word in enumerate(words) if _is_number(word, self.number)]
        return min(found, default=None)

    def is_right(self, text: str) -> bool:
        """Whether `text` holds a right answer before any rejected one."""
        words = normalise(text)
        right = self.position(words)
        if right is None:
            return False
        wrong = [i for phrase in self.reject if (i := _find(words, normalise(phrase))) is not None]
        return not wrong or right < min(wrong)


@dataclass(frozen=True, slots=True)
class Score:
    right: bool
    right_first_sentence: bool
    words: int = field(default=0)


def score_reply(check: AnswerCheck, reply: str) -> Score:
    """Whether `reply` is right, right in its first sentence, and how many words it has."""
    return Score(
        right=check.is_right(reply),
        right_first_sentence=check.is_right(first_sentence(reply)),
        words=len(reply.split()),
    )


def _find(words: list[str], phrase: list[str]) -> int | None:
    if not phrase:
        return None
    for i in range(len(words) - len(phrase) + 1):
        if words[i : i + len(phrase)] == phrase:
            return i
    return None


def _is_number(word: str, value: float) -> bool:
    try:
        return abs(float(word) - value) < 1e-6
    except ValueError:
        return False
