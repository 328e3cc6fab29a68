"""Sums said aloud ("nine times eight", "ten percent of 200"), worked out exactly.

A 135M-parameter LLM cannot do arithmetic: asked nine times eight it says 64, six times
seven 21 (bench/results/quality.md). A calculator can, at no cost. This reads a question
already put in digits and lower case (pipeline.quick_answers does that) and answers only
when the whole of it is a sum; anything else is the LLM's.

Grammar, with the usual precedence, left to right:
    sum     := product (("plus" | "minus") product)*
    product := power (("times" | "divided by") power)*
    power   := unary ("to the power of" unary)?
    unary   := ("half of" | "a third of" | "a quarter of" | "double" | "twice" | "the square root of") unary
             | number "percent of" unary
             | number ("squared" | "cubed")*
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Spoken forms and symbols (as Whisper writes them) of each operator, to the word said back.
_BINARY = {
    "plus": "plus", "+": "plus",
    "minus": "minus", "-": "minus", "take away": "minus", "less": "minus",
    "times": "times", "x": "times", "*": "times", "×": "times", "multiplied by": "times",
    "divided by": "divided by", "over": "divided by", "/": "divided by", "÷": "divided by",
    "to the power of": "to the power of",
}
_PREFIX = {
    "half of": "half of", "a half of": "half of", "1 half of": "half of",
    # text2num writes "a third" as "a 3rd", "one third" as "1 3rd".
    "a 3rd of": "a third of", "1 3rd of": "a third of", "a quarter of": "a quarter of", "1 quarter of": "a quarter of",
    "double": "double", "twice": "twice", "the square root of": "the square root of", "square root of": "the square root of",
}
_POSTFIX = {"squared": "squared", "cubed": "cubed"}
_PERCENT = {"percent of": "percent of", "% of": "percent of", "per cent of": "percent of"}
_WORDS = sorted([*_BINARY, *_PREFIX, *_POSTFIX, *_PERCENT], key=len, reverse=True)
# Words first: "1 3rd of" is one token, not the number 1. A word ends where letters do ("9x8").
_TOKEN = re.compile(r"\s*(" + "|".join(re.escape(w) + ("(?![a-z])" if w[-1].isalpha() else "") for w in _WORDS) + r"|\d+(?:\.\d+)?)")
# Past this a sum is no longer something said on a call (and 10 ** 10 ** 10 would never finish).
_LARGEST = 1e15


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number", "binary", "prefix", "postfix" or "percent"
    word: str  # the operator said back, or the number as written


class _NotASum(Exception):
    pass


def sum_reply(question: str) -> str | None:
    """The spoken answer to `question` if the whole of it is a sum ("9 times 8" → "9 times 8 is 72."),
    else None. `question` is in digits and lower case, without its frame ("what is", "?")."""
    try:
        tokens = _tokens(question)
        if not any(t.kind != "number" for t in tokens):
            return None  # a number alone is no sum
        parser = _Parser(tokens)
        value = parser.sum()
        if parser.rest:
            return None
    except _NotASum:
        return None
    except ZeroDivisionError:
        return "You can't divide by zero."
    except OverflowError:
        return None
    if not math.isfinite(value) or abs(value) > _LARGEST:
        return None
    said, exact = say_number(value)
    words = " ".join(t.word for t in tokens)
    return f"{words[0].upper()}{words[1:]} is {'' if exact else 'about '}{said}."


def say_number(value: float) -> tuple[str, bool]:
    """`value` as a voice says it: whole numbers whole, others to three decimals; and whether exact."""
    rounded = round(value, 3)
    # Within floating point's error of the rounded figure (20 °C is 67.99999999999993 °F) is exact.
    exact = math.isclose(rounded, value, rel_tol=1e-9, abs_tol=1e-12)
    if rounded == int(rounded):
        return str(int(rounded)), exact
    return f"{rounded:.3f}".rstrip("0"), exact


def _tokens(text: str) -> list[_Token]:
    tokens, at, text = [], 0, text.strip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise _NotASum
        word = match.group(1)
        at = match.end()
        if word in _BINARY:
            tokens.append(_Token("binary", _BINARY[word]))
        elif word in _PREFIX:
            tokens.append(_Token("prefix", _PREFIX[word]))
        elif word in _POSTFIX:
            tokens.append(_Token("postfix", _POSTFIX[word]))
        elif word in _PERCENT:
            tokens.append(_Token("percent", _PERCENT[word]))
        else:
            tokens.append(_Token("number", word))
    return tokens


class _Parser:
    """Recursive descent over the tokens; raises _NotASum where the grammar does not fit."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.rest = tokens

    def sum(self) -> float:
        value = self._product()
        while self._next("binary", "plus", "minus"):
            word = self._take().word
            right = self._product()
            value = value + right if word == "plus" else value - right
        return value

    def _product(self) -> float:
        value = self._power()
        while self._next("binary", "times", "divided by"):
            word = self._take().word
            right = self._power()
            value = value * right if word == "times" else value / right
        return value

    def _power(self) -> float:
        value = self._unary()
        if self._next("binary", "to the power of"):
            self._take()
            exponent = self._unary()
            if abs(exponent) > 64:
                raise _NotASum
            value = float(value) ** exponent
        return value

    def _unary(self) -> float:
        if self._next("prefix"):
            word = self._take().word
            value = self._unary()
            if word == "the square root of":
                if value < 0:
                    raise _NotASum
                return math.sqrt(value)
            return value * {"half of": 0.5, "a third of": 1 / 3, "a quarter of": 0.25, "double": 2, "twice": 2}[word]
        if not self._next("number"):
            raise _NotASum
        value = float(self._take().word)
        if self._next("percent"):
            self._take()
            return value / 100 * self._unary()
        while self._next("postfix"):
            value = value ** (2 if self._take().word == "squared" else 3)
        return value

    def _next(self, kind: str, *words: str) -> bool:
        return bool(self.rest) and self.rest[0].kind == kind and (not words or self.rest[0].word in words)

    def _take(self) -> _Token:
        token, self.rest = self.rest[0], self.rest[1:]
        return token
