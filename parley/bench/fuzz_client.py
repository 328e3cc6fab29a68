"""Sends fuzzed examples (parley.bench.fuzz_messages) to a real server and says what became of each.

The client keeps a few sockets open across examples, as long-lived calls would. After each
example it sends the protocol's `ping` and reads up to the `pong`: a socket that gives none
within `pong_timeout_s`, or that the server closed without the reason docs/protocol.md gives
for it, is dead. A socket closed for a documented reason (a message too big: 1009, or 1006
when the connection was reset before the close frame came; `bye`: 1000 after the server's
`bye`; a socket opened to resume whose first message is no good, or an address at its cap:
1008; a refusal: 1013) is replaced, and the new one must answer a ping too.

Synchronous (websockets' sync client): hypothesis calls it from a plain function, which a test
or benchmark runs in a thread of its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from parley.bench import fuzz_messages
from parley.bench.fuzz_messages import ANY, CLOSE_TOO_BIG, SERVER_ERROR_CODES, Example

# The fuzzing server's settings: one client opens thousands of sockets from one address, and
# every one of its sockets may hold a call; refusals would hide the protocol behind them.
FUZZ_SERVER_ENV = {
    "PARLEY_RATE_LIMIT_PER_IP_RATE": "1000",
    "PARLEY_RATE_LIMIT_PER_IP_BURST": "2000",
    "PARLEY_ADMISSION_MAX_CALLS": "16",
    "PARLEY_ADMISSION_MAX_CALLS_PER_IP": "16",
    # Every socket comes from 127.0.0.1, and the count is kept in Redis, where a test suite's
    # earlier servers may still hold sessions from that address: a cap of 100 was reached once in
    # a full run, and the resume sockets were then refused before any `resume` was read.
    "PARLEY_ADMISSION_MAX_SESSIONS_PER_IP": "1000",
}
PING_TEXT = json.dumps({"type": "ping"})
# websockets logs a connection the server reset as an error with its traceback; here that is an
# outcome, counted (a close 1006), not news.
_SOCKET_LOG = logging.getLogger(__name__ + ".socket")
_SOCKET_LOG.setLevel(logging.CRITICAL)
# docs/protocol.md, "From the server".
SERVER_TYPES = frozenset(
    {"session", "history", "answer", "ice", "state", "transcript", "reply", "metrics", "error", "bye", "ping", "pong"}
)
# Error codes after which the server closes the socket with 1013 (docs/protocol.md).
REFUSALS = frozenset({"rate_limited", "over_capacity", "unavailable"})


@dataclass(slots=True)
class Outcome:
    """What became of one example (or of a drain): what came back, and what went wrong.

    received: every server message, by type, errors by code (`pong`, `answer`, `invalid_json`, …).
    closes: the close codes of sockets the server closed for a documented reason.
    dead: why a socket stopped answering (no pong, closed for no documented reason, would not open).
    unmet: frames whose documented answer did not come.
    undocumented: messages or error codes docs/protocol.md does not have.
    """

    received: Counter[str] = field(default_factory=Counter)
    closes: list[int] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)
    undocumented: list[str] = field(default_factory=list)

    @property
    def internal_errors(self) -> int:
        return self.received["internal_error"]

    @property
    def clean(self) -> bool:
        return not (self.dead or self.unmet or self.undocumented or self.internal_errors)

    def describe(self) -> str:
        return (
            f"dead: {self.dead}, unmet: {self.unmet}, undocumented: {self.undocumented},"
            f" internal_error: {self.internal_errors}, received: {dict(self.received)}, closes: {self.closes}"
        )


class FuzzClient:
    """`sockets` WebSockets to the server at `url` (http://host:port), kept across examples."""

    def __init__(self, url: str, *, sockets: int = 3, pong_timeout_s: float = 10.0) -> None:
        self.ws_url = url.replace("http", "ws", 1) + "/ws"
        self.pong_timeout_s = pong_timeout_s
        self._sockets: list[ClientConnection | None] = [None] * sockets
        self.opened = 0

    def __enter__(self) -> FuzzClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for i in range(len(self._sockets)):
            self._drop(i)

    def run(self, example: Example) -> Outcome:
        """Send `example`, then a ping; check what came back, and that a socket still answers."""
        outcome = Outcome()
        slot = example.socket % len(self._sockets)
        if example.fresh or self._sockets[slot] is None:
            self._drop(slot)
            self._sockets[slot] = self._open(outcome, resume=example.resume)
        ws = self._sockets[slot]
        if ws is None:
            return outcome
        heard = example.heard()
        try:
            for frame in example.frames:
                ws.send(frame.data)
            ws.send(PING_TEXT)
        except ConnectionClosed:
            pass  # the server closed it part way: the reading below tells whether it should have
        pongs = sum(frame.answers == {"pong"} for frame in heard) + 1
        answers, close = self._read(ws, pongs, outcome)
        self._match(example, answers, close, outcome)
        if close is not None or outcome.dead or outcome.unmet:
            # Closed, or out of step with what it says: messages still on their way would be
            # counted against the next example.
            self._drop(slot)
            if close is not None and not outcome.dead:
                self._sockets[slot] = self._answering(outcome)
        return outcome

    def drain(self, quiet_s: float = 1.0) -> Outcome:
        """Read what is still arriving on every socket until each has been quiet for `quiet_s`:
        the answers to turns (replies, their errors) come after the example that started them."""
        outcome = Outcome()
        for ws in self._sockets:
            if ws is None:
                continue
            try:
                while True:
                    self._count(json.loads(ws.recv(timeout=quiet_s)), outcome)
            except (TimeoutError, ConnectionClosed):
                pass
        return outcome

    def _open(self, outcome: Outcome, *, resume: bool = False) -> ClientConnection | None:
        """A new socket; an ordinary one is ready once its `session` came."""
        try:
            # Entered rather than used in a `with`: the socket outlives this call (ws.close() ends it).
            ws = connect(self.ws_url + ("?resume" if resume else ""), max_size=None, open_timeout=self.pong_timeout_s,
                         close_timeout=1, logger=_SOCKET_LOG).__enter__()
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            outcome.dead.append(f"could not open a socket: {exc!r}")
            return None
        self.opened += 1
        if resume:
            return ws  # the server speaks once the resume message came
        try:
            first = json.loads(ws.recv(timeout=self.pong_timeout_s))
        except (TimeoutError, ConnectionClosed) as exc:
            outcome.dead.append(f"a new socket said nothing: {exc!r}")
            ws.close()
            return None
        self._count(first, outcome)
        if first["type"] != "session":
            outcome.dead.append(f"a new socket began with {first}")
            ws.close()
            return None
        return ws

    def _answering(self, outcome: Outcome) -> ClientConnection | None:
        """A new socket that answers a ping, to replace one the server closed."""
        ws = self._open(outcome)
        if ws is None:
            return None
        ws.send(PING_TEXT)
        answers, close = self._read(ws, 1, outcome)
        if close is None and answers["pong"]:
            return ws
        if close is not None:
            outcome.dead.append(f"a new socket closed with {close} before answering a ping")
        ws.close()
        return None

    def _read(self, ws: ClientConnection, pongs: int, outcome: Outcome) -> tuple[Counter[str], int | None]:
        """Messages until the `pongs`-th pong, or until the socket closes: (their answers, close code)."""
        answers: Counter[str] = Counter()
        deadline = time.monotonic() + self.pong_timeout_s
        while pongs:
            try:
                message = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                outcome.dead.append(f"no pong within {self.pong_timeout_s:.0f} s")
                return answers, None
            except ConnectionClosed as exc:
                return answers, exc.rcvd.code if exc.rcvd is not None else 1006
            answers[self._count(message, outcome)] += 1
            pongs -= message["type"] == "pong"
        return answers, None

    def _count(self, message: dict[str, Any], outcome: Outcome) -> str:
        """Record a server message; returns its name: its type, or for an error its code."""
        kind = message.get("type")
        name = message.get("code") if kind == "error" else kind
        outcome.received[str(name)] += 1
        if kind not in SERVER_TYPES or (kind == "error" and name not in SERVER_ERROR_CODES):
            outcome.undocumented.append(json.dumps(message)[:200])
        return str(name)

    def _match(self, example: Example, answers: Counter[str], close: int | None, outcome: Outcome) -> None:
        """Each frame the server read got its documented answer (each answer counted once), and
        a close, if any, had its documented reason."""
        heard = example.heard()
        too_big = any(frame.answers == {CLOSE_TOO_BIG} for frame in example.frames)
        # A message too big closes the connection at once, while the rest of it is still
        # arriving, even one sent after the server meant to close for another reason: the kernel
        # may then reset the connection, and what the server said before, the close frame (1009)
        # included, is lost on the way (the client sees 1006). Its answers cannot be checked.
        cut_short = too_big and close is not None
        left = answers.copy()
        for frame in sorted(() if cut_short else heard, key=lambda f: len(f.answers)):  # the most particular first
            if frame.answers in (ANY, {CLOSE_TOO_BIG}):
                continue
            found = next((a for a in frame.answers if left[a] > 0), None)
            if found is None:
                claim = f"{frame.kind} ({frame.size} bytes): {sorted(frame.answers)} expected"
                outcome.unmet.append(f"{claim}, {dict(answers)} came")
            else:
                left[found] -= 1
        if heard[-1].answers == {CLOSE_TOO_BIG} and close not in (1009, 1006):
            outcome.unmet.append(f"a message of {heard[-1].size} bytes: close 1009 expected, {close or 'none'} came")
        if close is None:
            return
        said_bye = any(frame.answers == {"bye"} for frame in heard)
        documented = {
            1009: too_big,
            1006: too_big,
            1000: answers["bye"] > 0 or (said_bye and cut_short),
            # A socket opened to resume whose first message was refused, or an address at its cap.
            1008: (example.resume and heard[0].answers != {"resume_failed"}) or answers["too_many_calls"] > 0,
            1013: bool(answers.keys() & REFUSALS),
        }
        if documented.get(close):
            outcome.closes.append(close)
        else:
            outcome.dead.append(f"closed with {close} after {[f.kind for f in heard]}")

    def _drop(self, slot: int) -> None:
        ws, self._sockets[slot] = self._sockets[slot], None
        if ws is not None:
            ws.close()


def fuzz(url: str, sdp: str, *, examples: int, seed: int, sockets: int = 3,
         each: Callable[[Example, Outcome], None]) -> FuzzClient:
    """Send `examples` examples drawn by hypothesis (seeded: the same run every time) to the
    server at `url`, calling `each(example, outcome)` after every one; a test asserts there (and
    hypothesis then shrinks a failing example to its simplest), a benchmark counts.
    `sdp` is a real offer (fuzz_messages.real_offer). Returns the client, its sockets closed."""
    client = FuzzClient(url, sockets=sockets)

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=examples, deadline=None, database=None, print_blob=False,
        # The examples are big on purpose (near the size limit) and each is a round trip to a server.
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(fuzz_messages.examples(sdp, sockets=sockets))
    def one(example: Example) -> None:
        each(example, client.run(example))

    with client:
        one()
        each(Example(()), client.drain())  # late answers: a reply's error comes after its example
    return client


def tracebacks(log: str) -> list[str]:
    """The exception line ending each traceback in a server log."""
    found = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith((" ", "\t"))), len(lines) - 1)
            found.append(lines[end][:300])
    return found
