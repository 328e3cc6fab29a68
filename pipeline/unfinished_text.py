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

from pipeline.sentences import ends_sentence

# Never the last word of a sentence: articles, possessives, conjunctions, hesitations, "I".
ALWAYS_UNFINISHED = frozenset(
    """a an the my your our their its of and or but nor because whose every
    um uh er erm i i'm""".split()
)
# Prepositions that end a question ("What is it for?") but hardly a statement: unfinished
# unless Whisper heard a question.
UNFINISHED_UNLESS_QUESTION = frozenset("to for from at by into onto than with".split())
# A short turn that opens with one of these and has no subject yet has not reached its point:
# "And so, my fellow Americans," (which Whisper writes "And so my fellow Americans.") is a preface,
# and the end-of-turn model hears it as finished (0.87-0.96). "And then we went home." has its clause.
PREFACES = ("and", "so", "but", "well", "now")
# Two-word prefaces announce an upshot still to come, subject or not: Whisper heard JFK's preface as
# "And so am I fellow America." in the browser.
UPSHOT_PREFACES = (("and", "so"), ("so", "then"), ("well", "so"), ("okay", "so"))
PREFACED_WORDS = 6
SUBJECTS = frozenset("i i'm i've i'd i'll we we're you you're he she it it's they they're there that's what's".split())
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
    words = _without_loop(_WORD.findall(text.lower().replace("\u2019", "'")))
    if not words:
        return None
    last = words[-1]
    if last in ALWAYS_UNFINISHED:
        return True
    if 2 < len(words) <= PREFACED_WORDS and not text.endswith("?"):
        if tuple(words[:2]) in UPSHOT_PREFACES:
            return True
        if words[0] in PREFACES and not SUBJECTS.intersection(words):
            return True
    return last in UNFINISHED_UNLESS_QUESTION and not text.endswith("?")


def ends_finished(text: str, language: str = "en") -> bool:
    """True when `text` ends a sentence (a full stop, a question or exclamation mark after its last
    word: `pipeline.sentences.ends_sentence`) and leaves nothing hanging (`ends_unfinished`: no
    "..."). A turn shedding the end-of-turn model under load ends on such words alone
    (pipeline.shedding)."""
    return ends_sentence(text.strip()) and ends_unfinished(text, language) is False


def _without_loop(words: list[str]) -> list[str]:
    """One copy of words Whisper wrote several times over.

    On a short stretch of speech Whisper can loop: JFK's "And so, my fellow Americans," came back
    as "and so my fellow america and so my fellow america". Such a repeat decoded from the padding
    after the audio no longer reaches here (pipeline.asr.heard_segments); this catches a loop
    within the audio (a clip cut mid-word).
    """
    for n in range(1, len(words) // 2 + 1):
        if len(words) % n == 0 and words == words[:n] * (len(words) // n):
            return words[:n]
    return words
