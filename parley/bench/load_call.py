"""A cheap caller for the load benchmark: real WebRTC, but the microphone replays pre-encoded Opus.

aiortc sends an `av.Packet` that a track's `recv()` returns as it is (it only packetizes it),
so the speech is encoded once for every call and a client call costs far less CPU than the
server's side of it. The bot's voice is decoded on the event loop as each packet arrives
(media.loop_decoder); only the arrival time of each voiced 20 ms frame is kept. Each `say` is
one turn: the sentence, then silence until the reply is done, with its voice-to-voice time
measured here at the client.
"""

from __future__ import annotations

import asyncio
import bisect
import fractions
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.audio_file import read_audio
from media.caller_dtx import asks_for_dtx
from media.frames import level_dbfs
from media.loop_decoder import decode_on_loop
from media.sender_dtx import QuietSchedule
from media.tracks import FramePacer
from parley.call_client import RATE, TAIL_S, VOICE_DBFS, CallClient, last_voiced_offset_s

FRAME = RATE // 50
_TIME_BASE = fractions.Fraction(1, RATE)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EncodedSpeech:
    """A sentence as 20 ms Opus payloads, and how long after its last voiced frame the file ends."""

    name: str
    payloads: tuple[bytes, ...]
    tail_s: float


def _opus_payloads(samples: np.ndarray) -> list[bytes]:
    """48 kHz mono int16 samples as Opus payloads, one per 20 ms."""
    encoder = OpusEncoder()
    payloads: list[bytes] = []
    for start in range(0, samples.size - FRAME + 1, FRAME):
        frame = av.AudioFrame.from_ndarray(samples[start : start + FRAME].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, _TIME_BASE
        payloads += encoder.encode(frame)[0]
    return payloads


def encode_speech(path: str) -> EncodedSpeech:
    """Encode an audio file once; every call replays the same packets."""
    samples = read_audio(path, RATE)
    return EncodedSpeech(path, tuple(_opus_payloads(samples)), samples.size / RATE - last_voiced_offset_s(samples, RATE))


def _silence_payload() -> bytes:
    """One 20 ms Opus packet of silence, as the encoder makes it once it has settled."""
    return _opus_payloads(np.zeros(RATE, dtype=np.int16))[-1]


class EncodedMicrophone(MediaStreamTrack):
    """Sends queued Opus payloads every 20 ms, and silence between them, without encoding anything.

    With `dtx` (set when the answer asks for it, as a browser's encoder does), silence goes as
    libopus sends it in DTX (media.sender_dtx): ordinary packets for 200 ms after speech, then a
    TOC byte alone every 400 ms and nothing between.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[bytes] = deque()
        self._silence = _silence_payload()
        self._sent = asyncio.Event()
        self._sent.set()
        self._queued = asyncio.Event()  # wakes a `recv` that DTX put to sleep
        self._pacer = FramePacer(RATE)
        self._quiet = QuietSchedule(FRAME)
        self.dtx = False

    async def say(self, speech: EncodedSpeech) -> float:
        """Queue the sentence and wait until its last packet has gone; returns that moment."""
        self._queue.extend(speech.payloads)
        self._sent.clear()
        self._queued.set()
        await self._sent.wait()
        return time.monotonic()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        pts, payload = await self._pacer.next_to_send(self._next_payload, self._quiet.next_sent, self._queued)
        packet = av.Packet(payload)
        packet.pts, packet.time_base = pts, _TIME_BASE
        if not self._queue:
            self._sent.set()
        return packet

    def _next_payload(self, pts: int) -> bytes | None:
        if self._queue:
            self._quiet.speech(pts)
            return self._queue.popleft()
        return self._quiet.payload(pts, self._silence) if self.dtx else self._silence


class VoiceArrivals:
    """When each voiced 20 ms frame of the bot's voice arrived (nothing else is kept)."""

    def __init__(self) -> None:
        self.voiced: list[float] = []

    async def record(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                if level_dbfs(frame.to_ndarray()) > VOICE_DBFS:
                    self.voiced.append(time.monotonic())
        except MediaStreamError:
            return

    def first_voiced_after(self, t: float) -> float | None:
        index = bisect.bisect_left(self.voiced, t)
        return self.voiced[index] if index < len(self.voiced) else None


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """One sentence said: when its speech ended, the voice-to-voice time (None: no reply heard,
    and `missing` says what did not come), and the server's own figures for the turn (its
    `metrics` event: ms per stage)."""

    speech_end: float
    voice_to_voice_ms: float | None
    stages_ms: dict[str, float] = field(default_factory=dict)
    # None when answered; else "turn" (no final transcript nor reply), "reply" (no reply done),
    # "text" (a reply done with no text) or "voice" (a reply, but no voice heard after the speech).
    missing: str | None = None


class LoadCall(CallClient):
    """A call for the load benchmark: `say` encoded sentences one after another."""

    def _make_mic(self) -> EncodedMicrophone:
        return EncodedMicrophone()

    def _make_recorder(self) -> VoiceArrivals:
        return VoiceArrivals()

    def _answered(self, sdp: str) -> None:
        self._mic.dtx = asks_for_dtx(sdp)
        # The bot's voice decoded on the event loop as each packet arrives, as the server decodes
        # the caller's, not in aiortc's decoder thread per call (two hops a packet, 50 packets a
        # second whether the bot speaks or not): what the harness costs is taken from the server.
        decode_on_loop(self._pc)

    async def say(self, speech: EncodedSpeech) -> TurnOutcome:
        """Say the sentence, wait until its reply is done (or the reply timeout passes without one)."""
        seen = len(self.messages)
        speech_end = await self._mic.say(speech) - speech.tail_s
        heard = await self._turn_heard(seen)
        done = heard and await self._wait_for(self._reply_done_for_turns_since(seen), 120.0, since=seen)
        if not done or not done.get("text"):
            missing = "turn" if not heard else "reply" if not done else "text"
            return self._unanswered(TurnOutcome(speech_end, None, missing=missing), seen)
        await asyncio.sleep(TAIL_S)
        voiced = self._recorder.first_voiced_after(speech_end)
        stages = next((m["stages_ms"] for _, m in reversed(self.messages[seen:])
                       if m["type"] == "metrics" and m.get("turn_id") == done["turn_id"]), {})
        if voiced is None:
            return self._unanswered(TurnOutcome(speech_end, None, stages, missing="voice"), seen)
        return TurnOutcome(speech_end, round(1000 * (voiced - speech_end), 1), stages)

    def _unanswered(self, outcome: TurnOutcome, seen: int) -> TurnOutcome:
        """Say in the log which session missed what, and what came instead, to find in the server's log."""
        came = [(m["type"], m.get("turn_id", "")[:8], m.get("code") or m.get("state") or "")
                for _, m in self.messages[seen:] if m["type"] not in ("ping", "pong")]
        log.warning("session %s: a sentence got no %s; the server sent %s",
                    self.session.get("session_id"), outcome.missing, came)
        return outcome
