"""Whether the words said so far stop where a sentence cannot end ("…followed by the").

The end-of-turn model hears how the caller stopped; this reads what they said.
LiveKit's turn detector reads the transcript with a language model; a short list
of English words that leave a sentence hanging catches the pause the audio model
misses most often (a caller thinking of the next word after "the"), costs nothing,
and can be read and argued with.

The judgement errs towards "finished": a complete turn judged unfinished keeps the
caller waiting for `incomplete_silence_ms`, so a word goes on the lists only if a
spoken sentence almost never ends on it.
"""

from __future__ import annotations

import re

# Never the last word of a sentence: articles, possessives, conjunctions, hesitations, "I".
ALWAYS_UNFINISHED = frozenset(
    """a an the my your our their its of and or but nor because whose every
    um uh er erm i i'm""".split()
)
# Prepositions that end a question ("What is it for?") but hardly a statement: unfinished
# unless Whisper heard a question.
UNFINISHED_UNLESS_QUESTION = frozenset("to for from at by into onto than with".split())
# Whisper writes these when the voice trails off mid-sentence.
TRAILING_MARKS = ("...", "\u2026", ",", "-", "\u2013", "\u2014", ":", ";")

_WORD = re.compile(r"[a-z']+")


def ends_unfinished(text: str, language: str = "en") -> bool | None:
    """True when `text` stops where a sentence cannot end; False when it may end there.

    None when there is nothing to judge: no words, or a language the lists are not for.
    """
    text = text.strip()
    if not text or not language.startswith("en"):
        return None
    if text.endswith(TRAILING_MARKS):
        return True
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    if not words:
        return None
    last = words[-1]
    if last in ALWAYS_UNFINISHED:
        return True
    return last in UNFINISHED_UNLESS_QUESTION and not text.endswith("?")
