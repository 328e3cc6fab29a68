"""Cutting a stream of LLM text deltas into sentences, so speech can start before the reply ends."""

from __future__ import annotations

import re

# A sentence ends at . ! ? or … (possibly followed by closing quotes or brackets) and then white
# space, or at a line break. A lone initial or a short abbreviation ("Dr.", "e.g.") is not an end.
_END = re.compile(r"""([.!?…]+["')\]]*)\s+|\n+""")
_NOT_AN_END = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|vs|etc|e\.g|i\.e|No))\.$")


_CLAUSE_END = re.compile(r"[,;:]\s+")


class SentenceSplitter:
    """Feed deltas with `push`; complete sentences come out as soon as they end.

    With `first_clause_words`, the very first piece may end at a comma, semicolon or colon
    once it has that many words, so speech can start before a long first sentence ends.
    """

    def __init__(self, min_chars: int = 2, *, first_clause_words: int = 0) -> None:
        self._buffer = ""
        self._min_chars = min_chars
        self._first_clause_words = first_clause_words
        self._emitted = False

    def push(self, delta: str) -> list[str]:
        """Add text; return the sentences it completed, stripped."""
        self._buffer += delta
        sentences: list[str] = []
        if not self._emitted and self._first_clause_words:
            for match in _CLAUSE_END.finditer(self._buffer):
                clause = self._buffer[: match.end()].strip()
                if len(clause.split()) >= self._first_clause_words and not _END.search(self._buffer[: match.start()]):
                    sentences.append(clause)
                    self._buffer = self._buffer[match.end() :]
                    break
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

    def flush(self) -> str | None:
        """What is left when the stream ends, if anything."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None
