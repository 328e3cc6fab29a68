"""The WebSocket protocol: JSON messages with a `type`, parsed into typed messages or a ProtocolError.

docs/protocol.md documents every message with an example. Messages from the
client are validated here; nothing past this module sees raw JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

from pipeline.dialog_store import Turn
from signaling.event_log import valid_event_id
from pipeline.events import (
    ReplyDelta,
    ReplyDone,
    ReplyRestarted,
    StateChanged,
    TranscriptEvent,
    TurnError,
    TurnEvent,
    TurnMetrics,
)

MAX_TEXT_CHARS = 2000


class ProtocolError(Exception):
    """A message the server cannot act on; it is answered with an `error` and the socket stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Offer:
    """A call's SDP offer. wait_in_line: refused for want of a line, the caller takes a place in
    the service's waiting line and is told its position (signaling.admission)."""

    sdp: str
    wait_in_line: bool = False


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled ICE candidate; `candidate` is None at the end of candidates."""

    candidate: str | None
    sdp_mid: str | None
    sdp_mline_index: int | None


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    """The first message on a socket opened to resume: which session, its token, the last event seen."""

    session_id: str
    resume_token: str
    last_event_id: str | None


ClientMessage = Offer | IceCandidate | Text | Bye | Ping | Pong | Resume


def _string(data: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError("invalid_message", f"'{data.get('type')}' needs a string '{key}'")
    if not _unicode(value):
        # JSON can escape half a surrogate pair ("\ud800"); no text holds one, and nothing
        # downstream (Redis, the LLM, the socket's own UTF-8) can encode it.
        raise ProtocolError("invalid_message", f"'{key}' is not valid Unicode text (a lone surrogate)")
    return value


def _unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse(raw: str | bytes) -> ClientMessage:
    """One client message; ProtocolError with a code for anything malformed."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc}") from None
    except ValueError:
        # Python reads no integer of more than 4300 digits (sys.get_int_max_str_digits()).
        raise ProtocolError("invalid_json", "a number in the message has too many digits") from None
    except RecursionError:
        # No message of the protocol nests; the decoder gives up on thousands of brackets.
        raise ProtocolError("invalid_json", "message nests too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", "message must be a JSON object with a 'type'")
    kind = data.get("type")
    if kind == "offer":
        sdp = _string(data, "sdp")
        if "m=audio" not in sdp:
            raise ProtocolError("invalid_message", "the offer has no audio section (m=audio)")
        wait = data.get("wait_in_line", False)
        if not isinstance(wait, bool):
            raise ProtocolError("invalid_message", "'wait_in_line' must be true or false")
        return Offer(sdp, wait)
    if kind == "ice":
        index = data.get("sdpMLineIndex")
        # JSON's true is Python's 1; the protocol's integers are integers.
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise ProtocolError("invalid_message", "'sdpMLineIndex' must be a whole number, 0 or more")
        return IceCandidate(_string(data, "candidate", optional=True) or None, _string(data, "sdpMid", optional=True), index)
    if kind == "text":
        text = _string(data, "text")
        if not text.strip():
            raise ProtocolError("invalid_message", "'text' is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError("invalid_message", f"'text' is longer than {MAX_TEXT_CHARS} characters")
        return Text(text)
    if kind == "resume":
        last = _string(data, "last_event_id", optional=True)
        if last is not None and not valid_event_id(last):
            raise ProtocolError("invalid_message", "'last_event_id' is not an event id (like \"1764253000000-0\")")
        return Resume(_string(data, "session_id"), _string(data, "resume_token"), last)
    if kind == "bye":
        return Bye()
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind is None:
        raise ProtocolError("invalid_message", "message has no 'type'")
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


# -- server messages ---------------------------------------------------------------------


def session(
    session_id: str, dialog_id: str, resume_token: str, *, resumed: bool = False,
    rtc_configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """rtc_configuration: the ICE servers (TURN credentials made for this session) and transport
    policy, as a browser's RTCPeerConnection takes them (media.ice)."""
    return {
        "type": "session", "session_id": session_id, "dialog_id": dialog_id, "resume_token": resume_token,
        "resumed": resumed, "rtc_configuration": rtc_configuration or {"iceServers": [], "iceTransportPolicy": "all"},
    }


def history(turns: Sequence[Turn]) -> dict[str, Any]:
    """The dialog so far, sent after `session` when a client resumes."""
    return {
        "type": "history",
        "turns": [{"turn_id": t.turn_id, "role": t.role, "text": t.text, "interrupted": t.interrupted} for t in turns],
    }


def answer(sdp: str) -> dict[str, Any]:
    return {"type": "answer", "sdp": sdp}


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


def logged(message: dict[str, Any]) -> bool:
    """Whether a server message belongs in the session's event log, for a client that resumes:
    the conversation (final transcripts, replies, turn errors), not what is only for this
    connection or superseded at once (state, metrics, partial transcripts, WebRTC answers)."""
    kind = message["type"]
    return kind in ("reply", "error") or (kind == "transcript" and message["final"])


def bye(reason: str, *, reconnect: bool = False) -> dict[str, Any]:
    """The server ends the session; `reconnect`: come back (to any replica) with the resume token."""
    message: dict[str, Any] = {"type": "bye", "reason": reason}
    if reconnect:
        message["reconnect"] = True
    return message


def from_event(event: TurnEvent) -> dict[str, Any]:
    """The protocol message for a turn loop event."""
    match event:
        case StateChanged(state):
            return {"type": "state", "state": state}
        case TranscriptEvent(turn_id, text, final):
            return {"type": "transcript", "turn_id": turn_id, "text": text, "final": final}
        case ReplyDelta(turn_id, text):
            return {"type": "reply", "turn_id": turn_id, "delta": text}
        case ReplyRestarted(turn_id):
            return {"type": "reply", "turn_id": turn_id, "restart": True}
        case ReplyDone(turn_id, text, interrupted):
            return {"type": "reply", "turn_id": turn_id, "done": True, "text": text, "interrupted": interrupted}
        case TurnMetrics(turn_id, stages_ms, prompt):
            message = {"type": "metrics", "turn_id": turn_id, "stages_ms": {k: round(v, 1) for k, v in stages_ms.items()}}
            if prompt is not None:
                message["prompt_tokens"] = {"total": prompt.tokens, "read": prompt.read, "cached": prompt.cached}
            return message
        case TurnError(code, message):
            return error(code, message)
    raise TypeError(f"not a turn event: {event!r}")


