"""How far a reply's speech is ahead of its playing, and so how urgent the next piece's synthesis is.

The TTS lane runs one synthesis at a time for every call. When several replies speak
at once, a reply whose next sentence is wanted only once the 2 s already queued have
played should not hold up the first sentence of a reply some caller waits for in
silence. `Playout` counts the audio a reply has given the speaker since it became
audible, less the time since: while more than `slack_s` of it is left, the next
piece is synthesised ahead of need (Priority.AHEAD), and hurried (made waited for)
when only `slack_s` is left. Hold (the caller starting to speak) stretches the real
playout; the estimate then only hurries a piece sooner than needed.
"""

from __future__ import annotations

import asyncio
import time

from pipeline.inference import Priority, Urgency


class Playout:
    """One reply's audio queued against the time since it became audible."""

    def __init__(self, slack_s: float) -> None:
        self.slack_s = slack_s
        self._audible_at: float | None = None
        self._audio_s = 0.0
        self._hurries: list[asyncio.TimerHandle] = []

    def audible(self, now: float | None = None) -> None:
        """The reply's first audio went to the speaker."""
        self._audible_at = time.monotonic() if now is None else now

    def queued(self, seconds: float) -> None:
        """More of the reply's audio went to the speaker."""
        self._audio_s += seconds

    def left_s(self, now: float | None = None) -> float:
        """The audio given to the speaker that has not played yet (0 before the reply is audible)."""
        if self._audible_at is None:
            return 0.0
        return max(0.0, self._audio_s - ((time.monotonic() if now is None else now) - self._audible_at))

    def urgency(self) -> Priority | Urgency:
        """The next piece's priority in the TTS lane: ahead of need while more than `slack_s` is left
        to play (hurried when it is down to that), waited for otherwise."""
        left_s = self.left_s()
        if not self.slack_s or left_s <= self.slack_s:
            return Priority.WAITED_FOR
        ahead = Urgency(Priority.AHEAD)
        self._hurries.append(asyncio.get_running_loop().call_later(left_s - self.slack_s, ahead.hurry))
        return ahead

    def close(self) -> None:
        """The reply is over: no piece is hurried any more."""
        for hurry in self._hurries:
            hurry.cancel()
        self._hurries.clear()
