"""The bot's voice as Opus packets made by the track itself, with silence encoded once.

aiortc encodes what a track's `recv()` returns 50 times a second, in its default
executor (a hop to a thread and back for every 20 ms frame), after resampling each
frame to stereo; a quiet bot is frames of zeros, encoded all the same. On a server
carrying many calls that is most of what an idle call costs. A track that returns
`av.Packet`s instead is only packetized, on the event loop.

So `OpusVoice` hands out one packet of silence, made once for all calls, whenever
the bot has nothing to say, and encodes its speech itself: mono (a voice is mono;
the stereo aiortc makes of it is the same channel twice), inline (encoding 20 ms
takes less than the thread hop did), with a fresh encoder for each stretch of
speech so the first packet after a silence is not predicted from the end of the
speech before it (the far end's decoder has heard silence since).

With DTX (when the far end asks for it with `usedtx=1`), a quiet bot sends what
libopus sends in DTX (media.sender_dtx): 200 ms of silence packets, then a
TOC byte alone every 400 ms and nothing between.
"""

from __future__ import annotations

import fractions
from functools import cache

import av
import numpy as np
from aiortc.sdp import SessionDescription

from media.sender_dtx import QuietSchedule

RATE = 48000
FRAME_SAMPLES = RATE // 50  # 20 ms: the packet Opus over RTP uses by default
_TIME_BASE = fractions.Fraction(1, RATE)
# Speech for a listener on a phone-like call: Opus at this rate is transparent for one voice.
_BIT_RATE = 48000
# Frames of silence after which the next speech starts a fresh encoder.
_FRESH_AFTER_FRAMES = 5


def _encoder() -> av.CodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = _BIT_RATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = RATE
    codec.time_base = _TIME_BASE
    codec.options = {"application": "voip"}
    return codec


def _encode(codec: av.CodecContext, pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = RATE
    packets = codec.encode(frame)
    # libopus returns one packet for every full frame it is given, from the first one on.
    return b"".join(bytes(p) for p in packets)


@cache
def silence_payload() -> bytes:
    """20 ms of silence as an Opus payload, as an encoder makes it once it has settled."""
    codec = _encoder()
    zeros = bytes(FRAME_SAMPLES * 2)
    payload = b""
    for _ in range(10):
        payload = _encode(codec, zeros)
    return payload


class OpusVoice:
    """Turns 20 ms chunks of 48 kHz mono 16-bit PCM into Opus packets stamped with `pts`.

    dtx: a quiet bot's frames go out as libopus's DTX sends them (`packet` returns None for
    a frame that sends nothing; `next_sent` says when the next one goes out).
    """

    def __init__(self, *, dtx: bool = False) -> None:
        self.dtx = dtx
        self._codec: av.CodecContext | None = None
        self._quiet = QuietSchedule(FRAME_SAMPLES)
        self.encoded = 0  # frames encoded (the rest went out as the pre-encoded silence, or not at all)
        self.sent = 0  # packets handed out

    def packet(self, pcm: bytes | None, pts: int) -> av.Packet | None:
        """The packet for one frame: `pcm` (exactly 20 ms) encoded, or silence when it is None (with
        DTX: the TOC byte alone, or None when this frame of silence sends nothing)."""
        if pcm is None:
            payload = self._quiet.payload(pts, silence_payload()) if self.dtx else silence_payload()
            if payload is None:
                return None
            self.sent += 1
            return _stamped(payload, pts)
        quiet_frames = self._quiet.quiet_frames(pts)
        if self._codec is None or quiet_frames is None or quiet_frames >= _FRESH_AFTER_FRAMES:
            self._codec = _encoder()
        self._quiet.speech(pts)
        self.encoded += 1
        self.sent += 1
        return _stamped(_encode(self._codec, pcm), pts)

    def next_sent(self, pts: int) -> int:
        """The pts of the next frame that sends a packet if the bot stays quiet from `pts` on."""
        return self._quiet.next_sent(pts) if self.dtx else pts


def sends_opus(answer_sdp: str, mid: str | None) -> bool:
    """Whether the media section `mid` of an answer sends Opus: aiortc sends with the first codec
    the answer lists for it."""
    for media in SessionDescription.parse(answer_sdp).media:
        if media.kind == "audio" and media.rtp.muxId == mid and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.lower() == "audio/opus"
    return False


def _stamped(payload: bytes, pts: int) -> av.Packet:
    packet = av.Packet(payload)
    packet.pts = pts
    packet.time_base = _TIME_BASE
    return packet
