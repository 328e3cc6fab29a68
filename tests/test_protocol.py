import json

import pytest

from pipeline.events import ReplyDelta, ReplyDone, StateChanged, TranscriptEvent, TurnError, TurnMetrics
from signaling import protocol
from signaling.protocol import Bye, IceCandidate, Offer, Ping, ProtocolError, Text

OFFER_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (json.dumps({"type": "offer", "sdp": OFFER_SDP}), Offer(OFFER_SDP)),
        (json.dumps({"type": "offer", "sdp": OFFER_SDP, "wait_in_line": True}), Offer(OFFER_SDP, wait_in_line=True)),
        (json.dumps({"type": "ice", "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}),
         IceCandidate("candidate:1 1 udp 1 1.2.3.4 5 typ host", "0", 0)),
        (json.dumps({"type": "ice", "candidate": ""}), IceCandidate(None, None, None)),
        (json.dumps({"type": "text", "text": "hello"}), Text("hello")),
        ('{"type": "bye"}', Bye()),
        ('{"type": "ping"}', Ping()),
    ],
)
def test_valid_messages_parse_to_typed_messages(raw, expected):
    assert protocol.parse(raw) == expected


@pytest.mark.parametrize(
    "raw, code",
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"sdp": "x"}', "invalid_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "offer"}', "invalid_message"),
        ('{"type": "offer", "sdp": "v=0"}', "invalid_message"),
        ('{"type": "offer", "sdp": "v=0\\r\\nm=audio 9", "wait_in_line": 1}', "invalid_message"),
        ('{"type": "text", "text": 5}', "invalid_message"),
        ('{"type": "text", "text": "   "}', "invalid_message"),
        (json.dumps({"type": "text", "text": "x" * 2001}), "invalid_message"),
        ('{"type": "ice", "candidate": "c", "sdpMLineIndex": "zero"}', "invalid_message"),
        ('{"type": "ice", "candidate": "c", "sdpMLineIndex": true}', "invalid_message"),
        ('{"type": "ice", "candidate": "c", "sdpMLineIndex": -1}', "invalid_message"),
        ("[" * 30_000 + "]" * 30_000, "invalid_json"),
        ('{"type": "text", "text": ' + "[" * 30_000 + "]" * 30_000 + "}", "invalid_json"),
        # Python reads no integer of more than 4300 digits: a ValueError, once an internal_error.
        ('{"type": "ice", "candidate": "c", "sdpMLineIndex": ' + "9" * 4301 + "}", "invalid_json"),
        ('{"type": "ping", "n": -' + "1" * 6000 + "}", "invalid_json"),
        # Half a surrogate pair: no UTF-8 for it, so Redis, the LLM and the socket could not take it.
        ('{"type": "text", "text": "hi \\ud800"}', "invalid_message"),
        ('{"type": "offer", "sdp": "v=0\\r\\nm=audio \\udc8a"}', "invalid_message"),
        ('{"type": "resume", "session_id": "\\udc8a", "resume_token": "t"}', "invalid_message"),
    ],
)
def test_bad_messages_raise_a_protocol_error_with_a_code(raw, code):
    with pytest.raises(ProtocolError) as info:
        protocol.parse(raw)
    assert info.value.code == code and info.value.message


def test_an_escaped_surrogate_pair_is_one_character():
    assert protocol.parse('{"type": "text", "text": "\\ud83d\\ude00"}') == Text("\U0001f600")


def test_turn_events_become_protocol_messages():
    assert protocol.from_event(StateChanged("speaking")) == {"type": "state", "state": "speaking"}
    assert protocol.from_event(TranscriptEvent("t1", "hi", final=False)) == {
        "type": "transcript", "turn_id": "t1", "text": "hi", "final": False,
    }
    assert protocol.from_event(ReplyDelta("t1", "He")) == {"type": "reply", "turn_id": "t1", "delta": "He"}
    assert protocol.from_event(ReplyDone("t1", "Hello.", interrupted=True))["interrupted"] is True
    assert protocol.from_event(TurnMetrics("t1", {"asr": 12.345}))["stages_ms"] == {"asr": 12.3}
    assert protocol.from_event(TurnError("asr_failed", "x")) == {"type": "error", "code": "asr_failed", "message": "x"}
