"""A count-based circuit breaker in front of the LLM.

Closed: calls flow and their outcomes fill a sliding window of the last
`window` calls. Once the window holds at least `min_calls` and `failure_rate`
of them failed (errors and timeouts), it opens: calls fail at once for
`open_s`. Then it is half-open: `probes` calls go through; if they all succeed
it closes (with a fresh window), and one failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """window: calls remembered; min_calls: fewest calls before it may open; failure_rate: the
    share of failures that opens it; open_s: how long it stays open; probes: trial calls when half-open."""

    window: int = 50
    min_calls: int = 20
    failure_rate: float = 0.4
    open_s: float = 5.0
    probes: int = 3


class CircuitBreaker:
    """Not thread-safe: used from one event loop."""

    def __init__(self, config: BreakerConfig = BreakerConfig(), *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=config.window)  # True = failed
        self._state: BreakerState = "closed"
        self._opened_at = 0.0
        self._probes_started = 0
        self._probes_passed = 0

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self.config.open_s:
            self._state = "half_open"
            self._probes_started = self._probes_passed = 0
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets probes through (0 unless open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.config.open_s - (self._clock() - self._opened_at))

    def try_acquire(self) -> bool:
        """May a call go through now? A half-open breaker admits only its probes."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes_started < self.config.probes:
            self._probes_started += 1
            return True
        return False

    def record(self, *, failed: bool) -> None:
        """The outcome of a call that `try_acquire` let through."""
        if self._state == "half_open":
            if failed:
                self._open()
            else:
                self._probes_passed += 1
                if self._probes_passed >= self.config.probes:
                    self._state = "closed"
                    self._outcomes.clear()
            return
        if self._state == "open":
            return  # a call admitted before it opened; the window restarts after half-open
        self._outcomes.append(failed)
        failures = sum(self._outcomes)
        if len(self._outcomes) >= self.config.min_calls and failures / len(self._outcomes) >= self.config.failure_rate:
            self._open()

    def abandon(self) -> None:
        """A call that `try_acquire` let through ended with no outcome (its caller went away)."""
        if self._state == "half_open" and self._probes_started > self._probes_passed:
            self._probes_started -= 1

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._outcomes.clear()
