"""Cutting a stream of LLM text deltas into sentences, so speech can start before the reply ends."""

from __future__ import annotations

import re

# A sentence ends at . ! ? or … (possibly followed by closing quotes or brackets) and then white
# space, or at a line break. A lone initial or a short abbreviation ("Dr.", "e.g.") is not an end.
_END = re.compile(r"""([.!?…]+["')\]]*)\s+|\n+""")
_NOT_AN_END = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|vs|etc|e\.g|i\.e|No))\.$")


class SentenceSplitter:
    """Feed deltas with `push`; complete sentences come out as soon as they end."""

    def __init__(self, min_chars: int = 2) -> None:
        self._buffer = ""
        self._min_chars = min_chars

    def push(self, delta: str) -> list[str]:
        """Add text; return the sentences it completed, stripped."""
        self._buffer += delta
        sentences: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            if match.group(1) and _NOT_AN_END.search(self._buffer[start : match.end(1)]):
                continue
            candidate = self._buffer[start : match.end()].strip()
            if len(candidate) >= self._min_chars:
                sentences.append(candidate)
                start = match.end()
        self._buffer = self._buffer[start:]
        return sentences

    def flush(self) -> str | None:
        """What is left when the stream ends, if anything."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None
