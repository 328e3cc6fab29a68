"""What the protocol fuzzer sends: hypothesis strategies for what a client could put on `/ws`.

An `Example` is a few frames on one of the fuzzer's sockets. Each `Frame` carries the answers
docs/protocol.md allows for it: `{"invalid_json"}` for text that is not JSON, `{"pong"}` for a
ping, `{CLOSE_TOO_BIG}` for a message over the size limit, and so on. A frame whose answer
depends on what came before (an ICE candidate, a well-formed text) allows anything.

The families: every client message, well formed and with wrong values in its fields (a bool
for a number, negative, huge, NaN, lone surrogates, the wrong container), unknown fields and
duplicated keys; unknown types; JSON that is not an object; text that is not JSON; binary
frames; messages just under and just over the size limit; nesting deeper than the decoder
goes; messages out of order (an ICE candidate before the offer, a second offer, a `resume` in
the middle of a session, text after `bye`); sockets opened to resume whose first message is
anything but a good `resume`; and SDP offers made by mutating a real one (lines dropped,
duplicated, swapped, edited; truncated; characters replaced).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from signaling.config import SignalingConfig
from signaling.protocol import MAX_TEXT_CHARS

MAX_MESSAGE_BYTES = SignalingConfig().max_message_bytes
# The socket closes with 1009 (message too big): the one answer to an oversized message.
CLOSE_TOO_BIG = "close 1009"
# Python's decoder gives up far below this depth (about a thousand); no protocol message nests.
TOO_DEEP = 5_000
# Python refuses to read an integer of more digits than this (sys.get_int_max_str_digits()).
TOO_MANY_DIGITS = 4_300
# Messages with no answer, or one that depends on the call's state: anything may come back.
ANY: frozenset[str] = frozenset()
SERVER_ERROR_CODES = frozenset({
    "invalid_json", "invalid_message", "unknown_type", "out_of_order", "invalid_offer", "busy", "rate_limited",
    "over_capacity", "media_failed", "asr_failed", "tts_failed", "internal_error", "llm_busy", "llm_unavailable",
    "dialog_store_unavailable", "unavailable", "resume_failed", "too_many_calls",
})  # docs/protocol.md, `error`


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket message: `data` is a text frame (str) or a binary one (bytes); `kind` names
    its family in reports; `answers` are what the server may answer (ANY: not fixed by the frame)."""

    data: str | bytes
    kind: str
    answers: frozenset[str] = ANY

    @property
    def size(self) -> int:
        return len(self.data.encode() if isinstance(self.data, str) else self.data)


@dataclass(frozen=True, slots=True)
class Example:
    """Frames sent in a row on socket number `socket` of the fuzzer. `fresh`: on a socket opened
    for this example (no offer yet, so out-of-order answers are known); `resume`: opened as
    `/ws?resume`, so the first frame is read as the `resume` message."""

    frames: tuple[Frame, ...]
    socket: int = 0
    fresh: bool = False
    resume: bool = False

    def heard(self) -> tuple[Frame, ...]:
        """The frames the server reads: up to the first after which it closes the socket (one
        too big, a `bye`, or, on a socket opened to resume, a first message that is no good)."""
        for i, frame in enumerate(self.frames):
            refused = self.resume and i == 0 and frame.answers != {"resume_failed"}
            if refused or frame.answers in ({CLOSE_TOO_BIG}, {"bye"}):
                return self.frames[: i + 1]
        return self.frames


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A JSON value Python's decoder refuses (too deep, a number of too many digits): a message
    holding one is answered `invalid_json` whatever else it says."""

    text: str


# -- values --------------------------------------------------------------------------------


def _strings(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any text, lone surrogates, control characters and right-to-left marks included."""
    return st.one_of(
        st.text(max_size=max_size),
        st.text(st.characters(codec=None), max_size=max_size),
        st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zs"]), min_size=1, max_size=8),
    )


def _long_strings() -> st.SearchStrategy[str]:
    """Repeated characters around the text limit and far past it (within the message limit)."""
    sizes = st.integers(MAX_TEXT_CHARS - 2, MAX_TEXT_CHARS + 2) | st.integers(0, MAX_MESSAGE_BYTES // 16)
    chars = st.sampled_from(["x", " ", "é", "\u200b", "\U0001f600", "\ud800"])
    return st.builds(lambda char, n: char * n, chars, sizes)


def _unreadable() -> st.SearchStrategy[Unreadable]:
    deep = st.builds(
        lambda brackets, depth: Unreadable(brackets[0] * depth + "1" + brackets[1] * depth),
        st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")]), st.integers(TOO_DEEP, TOO_DEEP * 2),
    )
    digits = st.builds(lambda sign, n: Unreadable(sign + "9" * n), st.sampled_from(["", "-"]),
                       st.integers(TOO_MANY_DIGITS + 1, TOO_MANY_DIGITS + 2000))
    return st.one_of(deep, digits)


def _wrong_values() -> st.SearchStrategy[Any]:
    """What a field must not hold, or holds at its edges: every JSON type, edges of numbers,
    odd strings, containers, nesting the decoder still reads, and values it cannot read."""
    nested = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    return st.one_of(
        st.none(), st.booleans(),
        st.integers(), st.sampled_from([0, -1, 1, 2**31, -(2**63), 10**30]),
        st.floats(), st.sampled_from([float("nan"), float("inf"), -0.0, 1e308]),
        _strings(), _long_strings(),
        nested,
        st.integers(1, 200).map(lambda depth: _nest(depth)),
        _unreadable(),
    )


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- messages ------------------------------------------------------------------------------

_CANDIDATES = [
    "candidate:842163049 1 udp 1677729535 192.0.2.7 46154 typ srflx raddr 10.0.0.2 rport 46154",
    "candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host",
    "candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active",
    "candidate:2 1 UDP 2122252543 fd00::2 50000 typ host",
    "candidate:garbage",
    "candidate:",
    "",
]
# Each client message type and the fields the server reads from it.
FIELDS = {
    "offer": ("sdp",), "ice": ("candidate", "sdpMid", "sdpMLineIndex"), "text": ("text",),
    "resume": ("session_id", "resume_token", "last_event_id"), "ping": (), "pong": (), "bye": (),
}


def _valid_fields(kind: str, offer: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """The fields of a well-formed message of type `kind` (whose answer may still depend on state)."""
    if kind == "offer":
        return st.fixed_dictionaries({"sdp": offer})
    if kind == "ice":
        return st.fixed_dictionaries(
            {"candidate": st.sampled_from(_CANDIDATES) | _strings()},
            optional={"sdpMid": st.sampled_from(["0", "1", "audio"]) | _strings(), "sdpMLineIndex": st.integers(0, 3)},
        )
    if kind == "text":
        texts = st.sampled_from(["Hello?", "What is two plus two?", "Thanks, bye."]) | _strings()
        return st.fixed_dictionaries({"text": texts})
    if kind == "resume":
        return st.fixed_dictionaries({
            "session_id": st.uuids().map(lambda u: u.hex) | _strings(),
            "resume_token": st.text("abcdefXYZ0123456789-_", min_size=1, max_size=43) | _strings(),
            "last_event_id": st.none() | st.sampled_from(["1764253000000-0", "0-0", "1-1"]),
        })
    return st.just({})  # ping, pong, bye


@st.composite
def _message(draw, offer: st.SearchStrategy[str]) -> dict[str, Any]:
    """A message of a protocol type: well formed, or with fields of wrong values, missing, or unknown."""
    kind = draw(st.sampled_from(sorted(FIELDS)))
    message = {"type": kind, **draw(_valid_fields(kind, offer))}
    for name in FIELDS[kind]:
        change = draw(st.sampled_from(["keep", "keep", "wrong", "drop"]))
        if change == "wrong":
            message[name] = draw(_wrong_values())
        elif change == "drop":
            message.pop(name, None)
    unknown = st.sampled_from(["id", "extra", "sdp", "text", "__proto__", "constructor"]) | st.text(max_size=8)
    for name in draw(st.lists(unknown, max_size=3)):
        if name not in message:
            message[name] = draw(_wrong_values())
    return message


def expected(message: Any) -> frozenset[str]:
    """What docs/protocol.md has the server answer to `message` (decoded JSON) in a session,
    where that does not depend on what came before."""
    if _holds_unreadable(message):
        return frozenset({"invalid_json"})
    # As the server reads it: two lone surrogates in a row travel as one escaped pair, which
    # the decoder joins into one character.
    message = json.loads(to_json(message))
    if not isinstance(message, dict):
        return frozenset({"invalid_message"})
    kind = message.get("type")
    if kind is None:
        return frozenset({"invalid_message"})
    if not isinstance(kind, str) or kind not in FIELDS:
        return frozenset({"unknown_type"})
    if any(not _fits(kind, name, message.get(name)) for name in FIELDS[kind]):
        return frozenset({"invalid_message"})
    if kind == "ping":
        return frozenset({"pong"})
    if kind == "bye":
        return frozenset({"bye"})
    if kind == "resume":
        return frozenset({"out_of_order"})  # only the first message of a socket opened to resume
    if kind == "offer":
        return frozenset({"answer", "invalid_offer", "out_of_order"})
    return ANY  # pong: nothing; text: replies later, or busy; ice: depends on the offer before it


def _fits(kind: str, name: str, value: Any) -> bool:
    """Whether a field's value is one the protocol accepts (its answer may still be an error)."""
    if isinstance(value, str) and not _utf8(value):
        return False  # half a surrogate pair: escaped JSON can carry it, no text holds it
    if kind == "text":
        return isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_TEXT_CHARS
    if kind == "offer":
        return isinstance(value, str) and "m=audio" in value
    if name == "sdpMLineIndex":
        return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    if name == "last_event_id":
        return value is None or (isinstance(value, str) and re.fullmatch(r"\d{1,20}-\d{1,20}", value) is not None)
    if kind == "ice":
        return value is None or isinstance(value, str)
    return isinstance(value, str)  # resume's session_id and resume_token


def _holds_unreadable(value: Any) -> bool:
    if isinstance(value, Unreadable):
        return True
    if isinstance(value, dict):
        return any(_holds_unreadable(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_unreadable(v) for v in value)
    return False


def to_json(message: Any, *, ascii_only: bool = True) -> str:
    """The JSON text of `message`, its Unreadable values written as they are. Lone surrogates
    travel only escaped (a text frame is UTF-8), so they force `ascii_only`."""
    pieces: dict[str, str] = {}

    def mark(value: Any) -> Any:
        if isinstance(value, Unreadable):
            token = f"@unreadable{len(pieces)}@"
            pieces[token] = value.text
            return token
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    marked = mark(message)
    text = json.dumps(marked, ensure_ascii=ascii_only)
    if not ascii_only and not _utf8(text):
        text = json.dumps(marked)
    # json.dumps cannot write either kind of unreadable value (it recurses, and it refuses
    # integers that long), hence the markers.
    for token, raw in pieces.items():
        text = text.replace(json.dumps(token), raw)
    return text


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _frame(data: str | bytes, kind: str, answers: frozenset[str]) -> Frame:
    """Over the size limit, the size decides the answer, whatever the content."""
    frame = Frame(data, kind, answers)
    return Frame(data, kind, frozenset({CLOSE_TOO_BIG})) if frame.size > MAX_MESSAGE_BYTES else frame


# -- frames --------------------------------------------------------------------------------


def _messages(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    def frame(message: dict[str, Any], ascii_only: bool) -> Frame:
        unknown = set(message) - {"type"} - set(FIELDS[message["type"]])
        kind = message["type"] + (" with unknown fields" if unknown else "")
        return _frame(to_json(message, ascii_only=ascii_only), kind, expected(message))

    return st.builds(frame, _message(offer), st.booleans())


def _unknown_types() -> st.SearchStrategy[Frame]:
    def frame(kind: Any) -> Frame:
        return _frame(to_json({"type": kind}), "unknown type", expected({"type": kind}))

    def unknown(kind: Any) -> bool:
        return kind is not None and not (isinstance(kind, str) and kind in FIELDS)

    return st.builds(frame, (_strings(20) | _wrong_values()).filter(unknown))


def _duplicated_type(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    """`{"type": X, ..., "type": Y}`: the last one counts (Python's decoder, like JavaScript's)."""
    def frame(first: Any, message: dict[str, Any]) -> Frame:
        text = '{"type": ' + to_json(first) + ", " + to_json(message)[1:]
        answers = frozenset({"invalid_json"}) if _holds_unreadable(first) else expected(message)
        return _frame(text, "duplicated type", answers)

    return st.builds(frame, _wrong_values(), _message(offer))


def _not_objects() -> st.SearchStrategy[Frame]:
    values = _wrong_values().filter(lambda value: not isinstance(value, dict))
    return st.builds(lambda value: _frame(to_json(value), "not an object", expected(value)), values)


def _not_json(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    """Text that no JSON decoder reads: a message cut short, trailing garbage, JavaScript-ish
    syntax, or anything that starts with a character JSON cannot start with."""
    objects = st.builds(to_json, _message(offer))
    texts = st.one_of(
        # A strict prefix of an object lacks its closing brace: never JSON.
        st.builds(lambda text, at: text[: at % len(text)], objects, st.integers(0)),
        st.builds(lambda text, tail: text + " " + tail, objects, st.sampled_from(["x", "{}", "]", ",", "//"])),
        st.sampled_from(["{'type': 'ping'}", "{type: 'ping'}", '{"type": "ping",}', "", " ", "\x00", "undefined"]),
        # A text frame is UTF-8: no lone surrogates here (escaped, inside JSON strings, they go anywhere).
        st.builds(lambda text: "<" + text, _strings(60).filter(_utf8)),
    )
    return st.builds(lambda text: _frame(text, "not JSON", frozenset({"invalid_json"})), texts)


def _binary(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    """Binary frames are not part of the protocol, whatever they hold."""
    payloads = st.one_of(
        st.binary(max_size=64),
        st.builds(lambda message: to_json(message).encode(), _message(offer)),
        st.builds(lambda n: b"\x00" * n, st.integers(MAX_MESSAGE_BYTES - 4, MAX_MESSAGE_BYTES + 4)),
    )
    return st.builds(lambda data: _frame(data, "binary", frozenset({"invalid_message"})), payloads)


def _near_the_limit(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    """A message padded to a few bytes either side of the size limit, or far past it: with
    spaces after the JSON (the same message) or with a long unknown field."""
    def padded(message: dict[str, Any], past: int, field: bool) -> Frame:
        target = MAX_MESSAGE_BYTES + past
        if field:
            message = {**message, "pad": ""}
            message["pad"] = "x" * max(0, target - len(to_json(message)))
        text = to_json(message)
        return _frame(text + " " * max(0, target - len(text)), "near the size limit", expected(message))

    small = st.sampled_from([{"type": "ping"}, {"type": "text", "text": "Hello?"}, {"type": "dance"}]) | _message(offer)
    past = st.integers(-8, 8) | st.sampled_from([-1000, 1000, MAX_MESSAGE_BYTES])
    return st.builds(padded, small, past, st.booleans())


def frames(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    """Any one frame a client could send, from every family."""
    return st.one_of(
        _messages(offer), _unknown_types(), _duplicated_type(offer), _not_objects(), _not_json(offer), _binary(offer),
        _near_the_limit(offer),
    )


# -- SDP -----------------------------------------------------------------------------------

_SDP_MUTATIONS = ["drop", "duplicate", "swap", "edit", "number", "insert", "truncate", "replace", "endings"]
_SDP_NUMBERS = ["-1", "0", "65536", "4294967296", "99999999999999999999", "1e5", "NaN"]
_SDP_LINES = ["a=", "m=audio", "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP6 ::1", "a=candidate:", "a=rtpmap:96 ", "x"]


@st.composite
def mutated_sdp(draw, sdp: str) -> str:
    """A real offer changed by one to four mutations: lines dropped, duplicated, swapped, cut
    and continued with anything, numbers replaced, lines inserted; the whole text truncated, a
    character replaced, line endings changed."""
    lines = sdp.split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(_SDP_MUTATIONS))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if how == "drop" and lines:
            del lines[i]
        elif how == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif how == "swap" and lines:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "edit" and lines:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))] + draw(_strings(12))
        elif how == "number" and lines:
            lines[i] = re.sub(r"\d+", draw(st.sampled_from(_SDP_NUMBERS)), lines[i], count=draw(st.integers(1, 3)))
        elif how == "insert":
            lines.insert(i, draw(st.sampled_from(_SDP_LINES)) + draw(_strings(12)))
        else:
            text = "\r\n".join(lines)
            at = draw(st.integers(0, max(0, len(text) - 1)))
            if how == "truncate":
                text = text[:at]
            elif how == "replace" and text:
                text = text[:at] + draw(st.characters(codec=None)) + text[at + 1 :]
            elif how == "endings":
                text = text.replace("\r\n", draw(st.sampled_from(["\n", "\r", "\r\r\n", ""])))
            lines = text.split("\r\n")
    return "\r\n".join(lines)


# -- examples ------------------------------------------------------------------------------

PING = Frame('{"type": "ping"}', "ping", frozenset({"pong"}))
BYE = Frame('{"type": "bye"}', "bye", frozenset({"bye"}))


def _offer(sdp: str, answers: frozenset[str] | None = None) -> Frame:
    message = {"type": "offer", "sdp": sdp}
    return Frame(to_json(message), "offer", expected(message) if answers is None else answers)


def _ice(fields: dict[str, Any], kind: str, answer: str) -> Frame:
    return Frame(to_json({"type": "ice", **fields}), kind, frozenset({answer}))


def _out_of_order(sdp: str, offer: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[Frame, ...]]:
    """Sequences for a fresh socket, whose answers their order decides: an ICE candidate before
    the offer, a second offer, unusable candidates after one, anything after `bye`."""
    before = st.builds(
        lambda fields: _ice(fields, "ice before the offer", "out_of_order"),
        st.fixed_dictionaries({"candidate": st.sampled_from(_CANDIDATES[:4]), "sdpMid": st.just("0")}),
    )
    accepted = _offer(sdp, frozenset({"answer"}))
    second = st.builds(lambda s: _offer(s, _second(expected({"type": "offer", "sdp": s}))), offer)
    unusable = st.builds(
        lambda fields: _ice(fields, "unusable ice", "invalid_message"),
        st.one_of(
            st.fixed_dictionaries({"candidate": st.sampled_from(["candidate:garbage", "candidate:1 1 udp"])},
                                  optional={"sdpMid": st.just("0")}),
            st.fixed_dictionaries({"candidate": st.just(_CANDIDATES[1]), "sdpMLineIndex": st.integers(1, 2**31)}),
            st.fixed_dictionaries({"candidate": st.just(_CANDIDATES[1]), "sdpMid": st.sampled_from(["1", "x", ""])}),
        ),
    )
    return st.one_of(
        st.tuples(before),
        st.tuples(st.just(accepted), second),
        st.tuples(st.just(accepted), unusable, st.just(PING)),
        st.tuples(st.just(accepted), st.just(BYE)),
        st.lists(frames(offer), max_size=2).map(lambda rest: (BYE, *rest)),
    )


def _second(answers: frozenset[str]) -> frozenset[str]:
    """A second offer is out of order, once it can be read at all."""
    return frozenset({"out_of_order"}) if "out_of_order" in answers else answers


def first_on_a_resume_socket(frame: Frame) -> Frame:
    """`frame` as the first message of a socket opened to resume, which must be a `resume`: a
    well-formed one naming no session gets resume_failed (and a new session follows); anything
    else gets the error it would get anywhere, or out_of_order, and the socket is closed."""
    if frame.answers == {"out_of_order"}:  # a well-formed resume, out of order anywhere else
        return Frame(frame.data, "resume naming no session", frozenset({"resume_failed"}))
    readable = frame.answers not in ({CLOSE_TOO_BIG}, {"invalid_json"}, {"invalid_message"}, {"unknown_type"})
    answers = frozenset({"out_of_order"}) if readable else frame.answers
    return Frame(frame.data, f"{frame.kind} first on a resume socket", answers)


def _resumes(offer: st.SearchStrategy[str]) -> st.SearchStrategy[Frame]:
    def frame(fields: dict[str, Any]) -> Frame:
        message = {"type": "resume", **fields}
        return _frame(to_json(message), "resume", expected(message))

    return st.builds(frame, _valid_fields("resume", offer))


def examples(sdp: str, *, sockets: int = 3) -> st.SearchStrategy[Example]:
    """Examples over `sockets` sockets; `sdp` is a real offer (see `real_offer`), mutated in most
    of the offers sent. Most examples go to a socket already in use; the rest open one."""
    offer = st.one_of(st.just(sdp), mutated_sdp(sdp))
    socket = st.integers(0, sockets - 1)
    mixed = st.builds(
        lambda frames_, socket_, fresh: Example(tuple(frames_), socket_, fresh),
        st.lists(frames(offer), min_size=1, max_size=4), socket, st.integers(0, 9).map(lambda n: n == 0),
    )
    # On a fresh socket no offer was accepted yet, so aiortc reads the mutated one.
    mutated = st.builds(
        lambda sdp_, rest, socket_: Example((_offer(sdp_), *rest), socket_, fresh=True),
        mutated_sdp(sdp), st.lists(frames(offer), max_size=2), socket,
    )
    ordered = st.builds(lambda frames_, socket_: Example(frames_, socket_, True), _out_of_order(sdp, offer), socket)
    resuming = st.builds(
        lambda first, rest, socket_: Example((first_on_a_resume_socket(first), *rest), socket_, True, resume=True),
        _resumes(offer) | frames(offer), st.lists(frames(offer), max_size=2), socket,
    )
    # Listed more than once for weight: one_of picks among its arguments evenly.
    return st.one_of(mixed, mixed, mixed, mixed, mutated, ordered, resuming)


async def real_offer() -> str:
    """An SDP offer as aiortc makes it for a call: one audio section, candidates gathered."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()
