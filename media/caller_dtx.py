"""The caller's DTX: asking the caller's Opus encoder to go quiet in silence, and filling the gaps.

A call is quiet most of its life (the caller listens, or thinks), and receiving the
caller's packets, 50 a second each through SRTP, RTP, RTCP, the jitter buffer and the
decoder, is most of what a quiet call costs the server (`parley bench media`). Opus's
discontinuous transmission (DTX; RFC 7587's `usedtx=1`, which browsers honour in the
answer) lets an encoder that hears only silence send a tiny packet every 400 ms
instead: `ask_for_dtx` puts it in the answer.

The VAD and the turn loop count silence in frames, though (a turn ends after so many
ms of quiet frames), so the stream must stay whole. `SilenceFill` stands in for the
packets a caller in DTX does not send: while the last packet was a DTX packet (at most
`DTX_MAX_BYTES`: libopus's are the TOC byte alone), the time since is filled with 20 ms
frames of zeros, on a clock, a few at a time. A gap after an ordinary packet is left
alone: a network stall mid-word is not silence, and filling it could end a turn that has
not ended.
"""

from __future__ import annotations

import re

# The largest payload read as "the sender is in DTX": libopus marks a frame DTX when it encodes to
# 2 bytes or fewer (the TOC byte, and at most one more).
DTX_MAX_BYTES = 2

_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/", re.IGNORECASE)


def ask_for_dtx(sdp: str) -> str:
    """`sdp` with `usedtx=1` on every Opus payload type: the other end's encoder may then send next
    to nothing while it has only silence to send (the server's answer asks it of the caller's
    microphone; a caller's offer, of the bot's voice). Nothing else changes."""
    lines = sdp.split("\r\n")
    opus = _opus_payload_types(lines)
    with_fmtp = {pt for line in lines if (pt := _fmtp_payload_type(line)) in opus}
    out: list[str] = []
    for line in lines:
        if _fmtp_payload_type(line) in opus and not _params(line).get("usedtx"):
            line += ";usedtx=1" if " " in line else " usedtx=1"
        out.append(line)
        # A payload type without an fmtp line gets one, straight after its rtpmap.
        if (m := _OPUS_RTPMAP.match(line)) and m.group(1) not in with_fmtp:
            out.append(f"a=fmtp:{m.group(1)} usedtx=1")
    return "\r\n".join(out)


def asks_for_dtx(sdp: str) -> bool:
    """Whether `sdp` asks the other end to send Opus with DTX (`usedtx=1` on an Opus payload type)."""
    lines = sdp.split("\r\n")
    opus = _opus_payload_types(lines)
    return any(_fmtp_payload_type(line) in opus and _params(line).get("usedtx") == "1" for line in lines)


def _opus_payload_types(lines: list[str]) -> set[str]:
    return {m.group(1) for line in lines if (m := _OPUS_RTPMAP.match(line))}


def _fmtp_payload_type(line: str) -> str | None:
    """"111" for "a=fmtp:111 minptime=10;useinbandfec=1"; None for any other line."""
    return line.removeprefix("a=fmtp:").split(" ", 1)[0] if line.startswith("a=fmtp:") else None


def _params(fmtp_line: str) -> dict[str, str]:
    """An fmtp line's parameters: {"minptime": "10", "useinbandfec": "1"}."""
    _, _, params = fmtp_line.partition(" ")
    return dict(p.strip().partition("=")[::2] for p in params.split(";") if p.strip())


class SilenceFill:
    """How many 20 ms frames of silence stand for the packets a caller in DTX did not send.

    Times are the monotonic clock's, in seconds. The stream is "covered" up to the moment
    its last frame stands for: a frame that arrives covers up to its arrival, and the fill
    covers the time since, a whole frame at a time.
    """

    def __init__(self, frame_s: float = 0.02) -> None:
        self.frame_s = frame_s
        self._covered: float | None = None

    def before_frame(self, now: float, *, after_dtx: bool) -> int:
        """A frame arrived at `now`: the frames of silence that go before it (the part of a DTX gap
        the clock has not filled yet; none after an ordinary packet)."""
        missing = 0
        if after_dtx and self._covered is not None:
            missing = max(0, round((now - self._covered) / self.frame_s) - 1)
        self._covered = now
        return missing

    def due(self, now: float, *, in_dtx: bool) -> int:
        """The clock's tick at `now`: the frames of silence due for the time since the stream was
        last covered, while the caller is in DTX (none otherwise)."""
        if not in_dtx or self._covered is None:
            return 0
        missing = int((now - self._covered) / self.frame_s)
        self._covered += missing * self.frame_s
        return missing
