"""Questions of units ("how many minutes are in two hours?"), answered by pint.

The bundled LLM says two hours are 24 minutes and a foot is 176.25 inches
(bench/results/quality.md). pint knows its units exactly. This answers two forms,
already in digits and lower case without their frame (pipeline.quick_answers):
"how many <unit> are in <n|a> <unit>" and "<n> <unit> in <unit>" ("convert 5 miles to
kilometres" arrives as "5 miles to kilometres"). A word pint does not know as a unit
("how many legs are in a spider") leaves the question to the LLM.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pipeline.spoken_sums import say_number

_NUMBER = r"(?P<n>\d+(?:\.\d+)?|an?|one)"
_UNIT = r"[a-z]+(?: [a-z]+){0,2}"
_HOW_MANY = re.compile(rf"how many (?P<to>{_UNIT}?) (?:are |is )?(?:there )?in {_NUMBER} (?P<from>{_UNIT})")
_CONVERT = re.compile(rf"{_NUMBER} (?P<from>{_UNIT}?) (?:in|to|into|in to|as) (?P<to>{_UNIT})")
# What a caller says that pint reads otherwise: "kilos" would be kiloseconds, "degrees celsius"
# a product of angle and temperature difference, "decade" a logarithmic unit.
_SAID_AS = {
    "kilo": (1, "kilogram"), "kilos": (1, "kilogram"),
    "celsius": (1, "degC"), "degrees celsius": (1, "degC"), "degree celsius": (1, "degC"),
    "centigrade": (1, "degC"), "degrees centigrade": (1, "degC"),
    "fahrenheit": (1, "degF"), "degrees fahrenheit": (1, "degF"), "degree fahrenheit": (1, "degF"),
    "decade": (10, "year"), "decades": (10, "year"),
}
# Words pint takes for units but a caller means otherwise ("a" is a year, "in" an inch, "are" 100 m²).
_NOT_UNITS = frozenset({"a", "an", "in", "are", "is", "the", "it", "one", "that", "this", "there"})


@functools.cache
def registry() -> Any:
    """pint's unit registry: loaded once, on first use (about a second: the server calls this at start)."""
    import pint

    return pint.UnitRegistry()


def conversion_reply(question: str) -> str | None:
    """The spoken answer if `question` converts between units pint knows, else None."""
    for pattern, form in ((_HOW_MANY, "how_many"), (_CONVERT, "convert")):
        match = pattern.fullmatch(question.strip())
        if match is None:
            continue
        amount = 1.0 if not match["n"][0].isdigit() else float(match["n"])
        value = _convert(amount, match["from"], match["to"])
        if value is None:
            return None
        said, exact = say_number(value)
        about = "" if exact else "about "
        if form == "how_many":
            return f"There {'is' if value == 1 else 'are'} {about}{said} {match['to']} in {match['n']} {match['from']}."
        return f"{say_number(amount)[0]} {match['from']} is {about}{said} {match['to']}."
    return None


def _convert(amount: float, source: str, target: str) -> float | None:
    import pint

    try:
        from_factor, from_unit = _unit(source)
        to_factor, to_unit = _unit(target)
        quantity = registry().Quantity(amount * from_factor, from_unit).to(to_unit)
    except (pint.PintError, AttributeError, TypeError, ValueError, KeyError):
        return None
    return float(quantity.magnitude) / to_factor


def _unit(words: str) -> tuple[float, Any]:
    if words in _SAID_AS:
        factor, name = _SAID_AS[words]
        return factor, registry().parse_units(name)
    if any(word in _NOT_UNITS for word in words.split()):
        raise ValueError(f"{words!r} is no unit")
    return 1, registry().parse_units(words)
