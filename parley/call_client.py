"""`parley call`: a headless client that calls the server the way a browser does.

It opens /ws, negotiates WebRTC with aiortc, and plays each audio file as the
microphone in real time (20 ms frames), then silence until the bot's reply has
finished (or nothing started within the reply timeout), then the next file, all
in one session. What it hears is recorded per turn, and the report gives each
turn's transcript, reply, and voice-to-voice time measured here at the client:
from the last 20 ms frame of the file above -40 dBFS to the first received
frame above -40 dBFS. `overlap_ms` is how much of the bot's voice (received
frames above -40 dBFS) arrived while the file's own speech was still being sent,
between its first and last voiced frame: the bot talking over the caller.
`server_turns` is how many turns the server made of the file, and `finals` how
many final transcripts it sent for them: a turn ended in a pause and continued
when the caller went on keeps its id (one turn) but is finalised twice.

When the WebSocket drops (a replica died, or drained and said `bye` with
`reconnect`), the client reconnects to the same URL with a backoff, resumes the
session with the last event id it saw (the server replays what was missed), makes
a new peer connection and goes on with the next file. The report counts the
reconnects and, for each, `resume_ms`: from the drop to the bot's audio flowing
again. A call that cannot be resumed raises CallFailed.

The path can be made worse on purpose: `impairment` drops and delays the RTP
packets the client sends (parley.impairment), `codecs` narrows the offer (G.711
only, say), and `microphone` sets the format the files are captured in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection

from media.audio_file import read_audio, read_audio_channels, write_wav
from media.caller_dtx import ask_for_dtx
from media.frames import level_dbfs
from media.ice import aiortc_configuration
from media.jitter_buffer import set_audio_jitter_buffer
from media.resample import Resampler
from parley.errors import CallFailed, CallRefused
from parley.impairment import ImpairedLink, Impairment, impair_outgoing_audio
from parley.microphone import Microphone, MicrophoneFormat

log = logging.getLogger(__name__)

RATE = 48000
FRAME = RATE // 50
VOICE_DBFS = -40.0
# A frame this quiet is silence (a DTX packet decodes to zeros, the bot's silence to -84 dBFS).
SILENT_DBFS = -70.0
# After the server says the reply is done, its last frames are still on the wire.
TAIL_S = 0.6
# The longest gap in the bot's timestamps recorded as silence (DTX leaves 400 ms between packets).
MAX_GAP_S = 60.0
# Received packets held before decoding. A browser's adaptive buffer on a clean path holds about
# one; aiortc's fixed four would add 60 ms to every figure measured here that a browser does not.
DEFAULT_JITTER_PACKETS = 1
# Reconnecting after a drop: the first wait, the longest, and how long to keep trying in all.
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
RECONNECT_GIVE_UP_S = 30.0


@dataclass(slots=True)
class TurnReport:
    input: str
    transcript: str = ""
    reply_text: str = ""
    reply_generated: str = ""
    interrupted: bool = False
    reply_audio: str | None = None
    voice_to_voice_ms: float | None = None
    barge_in_stop_ms: float | None = None
    overlap_ms: float = 0.0
    server_turns: int = 0
    finals: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)
    # The reply's prompt as the LLM server handled it: total, read, cached (when the server says).
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    # The connection dropped during this turn (and was resumed before the next).
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class Reconnect:
    """One drop survived: how long until the bot's audio flowed again, and what was replayed."""

    resume_ms: float
    replayed: int
    attempts: int


def _event_key(event_id: str) -> tuple[int, int]:
    """Stream ids order as two numbers ("…-10" comes after "…-9")."""
    ms, _, n = event_id.partition("-")
    return int(ms), int(n)


def _raise_refusal(error: dict[str, Any]) -> None:
    """A refusal for want of room or rate, or for this address's calls already in progress,
    becomes CallRefused, with when to try again (if the server said)."""
    if error.get("code") in ("over_capacity", "rate_limited", "too_many_calls"):
        retry_after, position = error.get("retry_after"), error.get("position")
        raise CallRefused(
            f"the server refused the call ({error['code']}): {error.get('message')}",
            code=error["code"],
            retry_after_s=float(retry_after) if isinstance(retry_after, (int, float)) else None,
            position=position if isinstance(position, int) and not isinstance(position, bool) else None,
        )


def _voiced_frame_starts(samples: np.ndarray, rate: int) -> list[int]:
    """Sample offsets of the 20 ms frames above -40 dBFS."""
    frame = rate // 50
    return [i for i in range(0, samples.size - frame + 1, frame) if level_dbfs(samples[i : i + frame]) > VOICE_DBFS]


def last_voiced_offset_s(samples: np.ndarray, rate: int) -> float:
    """End of the last 20 ms frame above -40 dBFS, in seconds from the start (0 if none)."""
    voiced = _voiced_frame_starts(samples, rate)
    return (voiced[-1] + rate // 50) / rate if voiced else 0.0


def first_voiced_offset_s(samples: np.ndarray, rate: int) -> float:
    """Start of the first 20 ms frame above -40 dBFS, in seconds from the start (0 if none)."""
    voiced = _voiced_frame_starts(samples, rate)
    return voiced[0] / rate if voiced else 0.0


class _Unrecoverable(CallFailed):
    """The server will not take the session back: trying again cannot help."""


@dataclass(slots=True)
class _Interrupted:
    """A turn whose reply is being cut short by the next file."""

    report: TurnReport
    seen: int
    speech_end: float
    index: int
    out_dir: Path


def timestamp_gap_s(expected_pts: int | None, frame) -> float:
    """Seconds missing before `frame`, by its timestamp (its decoder stamps it with the RTP
    timestamp, at the codec's rate, which wraps at 2^32) against the one expected after the frame
    before; 0 for none, or for a jump past MAX_GAP_S (a new stream, not a gap)."""
    if expected_pts is None:
        return 0.0
    gap_s = ((frame.pts - expected_pts) % 2**32) / frame.sample_rate
    return gap_s if 0.01 < gap_s < MAX_GAP_S else 0.0


class Recorder:
    """Everything received, as (arrival time, 20 ms of 48 kHz mono PCM, voiced or not).

    Each frame's level is judged once, as it arrives: the waits below scan the recording
    every 20 ms, and a call's recording grows by 50 frames a second. A gap in the frames'
    timestamps after a silent frame (a quiet bot in DTX sends a packet every 400 ms) is
    recorded as the silence a browser plays there, when the frame after it arrives; a gap
    mid-speech (packets lost) is left out, as before.
    """

    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes, bool]] = []
        self._resampler = Resampler(RATE)
        self._pending = b""

    async def record(self, track) -> None:
        expected_pts: int | None = None  # this track's next timestamp, if no packet is missing
        after_silence = False
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if after_silence:
                    self._pending += bytes(2 * round(timestamp_gap_s(expected_pts, frame) * RATE))
                expected_pts = (frame.pts + frame.samples) % 2**32
                self._pending += self._resampler.convert(frame)
                while len(self._pending) >= FRAME * 2:
                    pcm = self._pending[: FRAME * 2]
                    level = level_dbfs(pcm)
                    self.frames.append((now, pcm, level > VOICE_DBFS))
                    after_silence = level < SILENT_DBFS
                    self._pending = self._pending[FRAME * 2 :]
        except MediaStreamError:
            return

    def first_voiced_after(self, t: float) -> float | None:
        return next((at for at, _, voiced in self.frames if at >= t and voiced), None)

    def first_after(self, t: float) -> float | None:
        """When the first frame (voiced or not) received after `t` arrived."""
        return next((at for at, _, _ in self.frames if at >= t), None)

    def last_voiced_between(self, start: float, end: float) -> float | None:
        voiced = [at for at, _, loud in self.frames if start <= at <= end and loud]
        return voiced[-1] if voiced else None

    def voiced_ms_between(self, start: float, end: float) -> float:
        """Milliseconds of voiced frames that arrived from `start` to `end`."""
        return 20.0 * sum(1 for at, _, loud in self.frames if start <= at <= end and loud)

    def audio_between(self, start: float, end: float) -> bytes:
        return b"".join(pcm for at, pcm, _ in self.frames if start <= at <= end)


async def wait_voiced_after(recorder: Recorder, t: float, timeout: float) -> float | None:
    """When the first voiced frame `recorder` received after `t` arrived; None if none within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (at := recorder.first_voiced_after(t)) is not None:
            return at
        await asyncio.sleep(0.02)
    return None


class CallClient:
    """One session: connect, negotiate, then `talk` file after file."""

    def __init__(
        self,
        server: str,
        *,
        reply_timeout_s: float = 15.0,
        jitter_buffer_packets: int = DEFAULT_JITTER_PACKETS,
        local_address: str | None = None,
        microphone: MicrophoneFormat = MicrophoneFormat(),
        codecs: tuple[str, ...] = (),
        impairment: Impairment | None = None,
        ping_interval_s: float | None = 20.0,
        bot_dtx: bool = True,
        line_patience_s: float = 0.0,
    ) -> None:
        """microphone: the format the files are played in (the encoder converts it, as a browser's does).
        codecs: the only audio codecs to offer, by name ("opus", "PCMU", "PCMA"); empty: aiortc's own.
        impairment: loss and jitter on the RTP packets sent (parley.impairment).
        ping_interval_s: the WebSocket's own keepalive pings (None: none, as a browser sends none).
        bot_dtx: ask for the bot's voice in DTX while it is quiet (`usedtx=1` in the offer), as the page does.
        line_patience_s: refused for want of a line, wait in the service's line up to this long, as
            the page does: resume the session and offer again each time the server says, holding
            the place it gave; 0: raise CallRefused at once.
        """
        base = server.rstrip("/")
        # The signaling socket's source address: any of 127.0.0.0/8 makes a distinct caller on loopback.
        self.local_address = local_address
        self.jitter_buffer_packets = jitter_buffer_packets
        self.ws_url = base.replace("https://", "wss://").replace("http://", "ws://") + "/ws"
        self.reply_timeout_s = reply_timeout_s
        self.microphone = microphone
        self.codecs = codecs
        self.impairment = impairment
        self.ping_interval_s = ping_interval_s
        self.bot_dtx = bot_dtx
        self.line_patience_s = line_patience_s
        # Each refusal while waiting in line: (seconds since the first offer, position given).
        self.line_positions: list[tuple[float, int | None]] = []
        self.links: list[ImpairedLink] = []  # one per peer connection made
        self.session: dict[str, Any] = {}
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.last_event_id: str | None = None
        self.reconnects: list[Reconnect] = []
        self._arrived = asyncio.Condition()
        self._ws: ClientConnection | None = None
        self._pc: RTCPeerConnection | None = None
        self._mic = self._make_mic()
        self._recorder = self._make_recorder()
        self._reader: asyncio.Task | None = None
        self._dropped_at: float | None = None
        self._leaving = False  # the server's bye said not to come back
        self._tasks: list[asyncio.Task] = []

    def _make_mic(self):
        """The microphone track: audio files played as PCM, encoded by aiortc."""
        return Microphone(self.microphone)

    def _answered(self, sdp: str) -> None:
        """The server's answer has been applied (what it asks of this end's sender is in `sdp`)."""

    def _make_recorder(self):
        """What keeps the bot's voice as it arrives."""
        return Recorder()

    @property
    def dropped(self) -> bool:
        """The server closed the socket (the client did not leave)."""
        return self._reader_done()

    async def __aenter__(self) -> CallClient:
        try:
            await self._enter()
        except BaseException:
            await self.__aexit__(None, None, None)  # a refused or failed call closes what it opened
            raise
        return self

    async def _enter(self) -> None:
        await self._open(self.ws_url)
        first = await self._wait_for(lambda m: m["type"] in ("session", "error"), 10.0)
        if first is not None and first["type"] == "error":
            _raise_refusal(first)
        if first is None or first["type"] == "error":
            raise CallFailed(f"the server refused the call: {first and first.get('message')}")
        self.session = first
        if self.line_patience_s:
            await self._wait_in_line()
        else:
            await self._connect_media()

    async def _wait_in_line(self) -> None:
        """Offer until a line is given: each refusal with a place in line is tried again on the same
        session (the place is the session's) after `retry_after` less a little, so it is kept."""
        started = time.monotonic()
        while True:
            try:
                await self._connect_media()
                return
            except CallRefused as refused:
                waited = time.monotonic() - started
                self.line_positions.append((round(waited, 3), refused.position))
                if refused.code != "over_capacity" or refused.position is None:
                    raise
                if waited > self.line_patience_s:
                    await self._leave_line()
                    raise
                await self._close_peer()
                await asyncio.sleep((refused.retry_after_s or 1.0) * random.uniform(0.75, 1.0))
            self.session, _ = await self._resume()
            self._mic = self._make_mic()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ws is not None:
            try:
                await self._ws.send(json.dumps({"type": "bye"}))
                await self._wait_for(lambda m: m["type"] == "bye", 2.0, since=len(self.messages))
            except websockets.ConnectionClosed:
                pass
            await self._ws.close()
        await self._close_peer()
        for link in self.links:
            await link.aclose()
        tasks = [*self._tasks, *([self._reader] if self._reader else [])]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # The recorder ends quietly with the track; anything else it raised means the bot's voice
        # went unheard, and the call's figures (replies missing) would blame the server.
        for task, result in zip(tasks, results):
            if task in self._tasks and isinstance(result, Exception):
                raise CallFailed(f"the recorder of the bot's voice failed: {result!r}") from result

    async def _open(self, url: str) -> None:
        source = {"local_addr": (self.local_address, 0)} if self.local_address else {}
        try:
            self._ws = await websockets.connect(
                url, open_timeout=10, max_size=2**20, ping_interval=self.ping_interval_s, **source
            )
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            raise CallFailed(f"cannot reach {url}: {exc or type(exc).__name__}") from exc
        self._dropped_at = None
        self._reader = asyncio.create_task(self._read(self._ws), name="call-client-reader")

    async def recover(self) -> None:
        """After a drop: reconnect with a backoff, resume the session, negotiate media anew.

        CallFailed when the session cannot be resumed: the server forgot it or another client
        took it, or no server answered for RECONNECT_GIVE_UP_S.
        """
        if self._leaving:
            raise CallFailed("the server ended the call and said not to come back")
        dropped_at = self._dropped_at or time.monotonic()
        await self._close_peer()
        wait, attempts = RECONNECT_FIRST_S, 0
        while True:
            attempts += 1
            try:
                session, replayed = await self._resume()
                break
            except CallFailed as exc:
                if isinstance(exc, _Unrecoverable) or time.monotonic() - dropped_at > RECONNECT_GIVE_UP_S:
                    raise
                log.info("reconnect attempt %d failed (%s); again in %.1f s", attempts, exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX_S)
        self.session = session
        self._mic = self._make_mic()
        connected = time.monotonic()
        await self._connect_media()
        if await self._wait_audio_after(connected, 10.0) is None:
            raise CallFailed("the resumed call's audio did not come back")
        resume_ms = round(1000 * (time.monotonic() - dropped_at), 1)
        self.reconnects.append(Reconnect(resume_ms, replayed, attempts))
        log.info("call resumed after %.0f ms (%d attempt(s), %d event(s) replayed)", resume_ms, attempts, replayed)

    async def _close_peer(self) -> None:
        """Close the peer connection that is over (refused, or dropped with its socket) before a new one."""
        if self._pc is not None:
            await self._pc.close()
            self._pc = None

    async def _leave_line(self) -> None:
        """Give up the session's place in line at once (a bye on the session), so those behind it
        move up, rather than hold it until it lapses."""
        with contextlib.suppress(CallFailed, websockets.ConnectionClosed):
            self.session, _ = await self._resume()
            await self._send({"type": "bye"})

    async def _resume(self) -> tuple[dict[str, Any], int]:
        """One attempt: open /ws?resume, say which session and the last event seen; the session
        message and how many missed events came back with it."""
        await self._open(self.ws_url + "?resume")
        seen = len(self.messages)
        await self._send({
            "type": "resume", "session_id": self.session["session_id"],
            "resume_token": self.session["resume_token"], "last_event_id": self.last_event_id,
        })
        first = await self._wait_for(lambda m: m["type"] in ("session", "error"), 10.0, since=seen)
        if first is None:
            raise CallFailed("the server did not answer the resume")
        if first["type"] == "error":
            if first.get("code") in ("over_capacity", "rate_limited", "unavailable"):
                raise CallFailed(f"resume refused for now: {first.get('message')}")  # try again
            raise _Unrecoverable(f"the call could not be resumed: {first.get('code')}: {first.get('message')}")
        # The replay comes right after `session` and `history`, before the answer to our offer.
        replayed = sum(1 for _, m in self.messages[seen:] if m.get("replayed"))
        return first, replayed

    async def _wait_audio_after(self, t: float, timeout: float) -> float | None:
        """When the first of the bot's frames (voice or silence) arrived after `t`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._recorder.frames and self._recorder.frames[-1][0] >= t:
                return self._recorder.frames[-1][0]
            await asyncio.sleep(0.01)
        return None

    async def _connect_media(self) -> None:
        # The ICE servers the session gave (TURN credentials of its own) and its transport policy,
        # as a browser's page uses them: a server set to relay-only makes this end relay-only too.
        pc = self._pc = RTCPeerConnection(aiortc_configuration(self.session.get("rtc_configuration")))
        pc.addTrack(self._mic)
        if self.codecs:
            self._offer_only(pc, self.codecs)
        if self.impairment is not None and self.impairment.active:
            self.links.append(impair_outgoing_audio(pc, self.impairment))
        set_audio_jitter_buffer(pc, self.jitter_buffer_packets)

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.create_task(self._recorder.record(track), name="call-client-recorder"))

        await pc.setLocalDescription(await pc.createOffer())
        seen = len(self.messages)  # after a reconnect, the earlier connection's answer is there too
        # As the page does: the bot's voice may come in DTX while it is quiet (the Recorder fills the gaps).
        offer = pc.localDescription.sdp
        line = {"wait_in_line": True} if self.line_patience_s else {}
        await self._send({"type": "offer", "sdp": ask_for_dtx(offer) if self.bot_dtx else offer, **line})
        answer = await self._wait_for(lambda m: m["type"] in ("answer", "error"), 15.0, since=seen)
        if answer is not None and answer["type"] == "error":
            _raise_refusal(answer)
        if answer is None or answer["type"] == "error":
            raise CallFailed(f"the server did not answer the offer: {answer and answer.get('message')}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self._answered(answer["sdp"])
        deadline = time.monotonic() + 15
        while pc.connectionState != "connected":
            if pc.connectionState == "failed" or time.monotonic() > deadline:
                raise CallFailed(f"WebRTC did not connect (state {pc.connectionState})")
            await asyncio.sleep(0.05)

    def candidate_pair(self) -> tuple[str, str] | None:
        """The types ("host", "srflx", "relay") of this end's and the server's candidates that the
        audio flows between, or None before ICE has chosen a pair. ("relay", "relay"): both ends
        reach each other only through the TURN server."""
        if self._pc is None:
            return None
        for transceiver in self._pc.getTransceivers():
            # aiortc reports no candidate-pair stats; aioice keeps the pair it nominated per
            # component (audio and RTCP share component 1: aiortc multiplexes RTCP).
            connection = transceiver.sender.transport.transport.iceGatherer._connection
            pair = connection._nominated.get(1)
            if pair is not None:
                return pair.local_candidate.type, pair.remote_candidate.type
        return None

    @staticmethod
    def _offer_only(pc: RTCPeerConnection, names: tuple[str, ...]) -> None:
        wanted = {name.lower() for name in names}
        codecs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name.lower() in wanted]
        if {c.name.lower() for c in codecs} != wanted:
            raise ValueError(f"aiortc cannot offer {sorted(wanted)}; it knows {[c.name for c in codecs]}")
        (transceiver,) = pc.getTransceivers()
        transceiver.setCodecPreferences(codecs)

    async def talk(
        self, path: str, *, out_dir: Path, index: int, barge_in_after_s: float | None = None
    ) -> tuple[TurnReport, _Interrupted | None]:
        """Play one file and wait for the reply to finish.

        With barge_in_after_s, return that long after the reply starts playing instead,
        with what `finish_interrupted` needs once the next file has cut the reply short.
        """
        report = TurnReport(input=path)
        samples = read_audio(path, RATE)
        if self.dropped:
            await self.recover()
        seen = len(self.messages)
        await self._mic.play(self._as_recorded(path, samples))
        if not await self._said():
            # Dropped while the caller spoke: no use talking on into a dead line. Resume at once;
            # what was said so far may have been heard, as a turn, before the drop.
            await self._dropped_in(report, seen, time.monotonic(), out_dir, index)
            return report, None
        sent = time.monotonic()
        speech_start = sent - (samples.size / RATE - first_voiced_offset_s(samples, RATE))
        speech_end = sent - (samples.size / RATE - last_voiced_offset_s(samples, RATE))
        report.overlap_ms = self._recorder.voiced_ms_between(speech_start, speech_end)
        if await self._turn_heard(seen) is None:
            if self.dropped:
                await self._dropped_in(report, seen, speech_end, out_dir, index)
            return report, None
        if barge_in_after_s is not None:
            voiced = await wait_voiced_after(self._recorder, speech_end, self.reply_timeout_s)
            if voiced is not None:
                report.voice_to_voice_ms = round(1000 * (voiced - speech_end), 1)
                await asyncio.sleep(barge_in_after_s)
                return report, _Interrupted(report, seen, speech_end, index, out_dir)
        done = await self._wait_for(self._reply_done_for_turns_since(seen), 120.0, since=seen)
        if done is None and self.dropped:
            await self._dropped_in(report, seen, speech_end, out_dir, index)
            return report, None
        await asyncio.sleep(TAIL_S)
        self._fill(report, seen, done, speech_end, time.monotonic(), out_dir, index)
        return report, None

    def _as_recorded(self, path: str, samples: np.ndarray) -> np.ndarray:
        """The file in the microphone's format (`samples`: the file as 48 kHz mono)."""
        if self.microphone == MicrophoneFormat(rate=RATE, channels=1):
            return samples
        recorded = read_audio_channels(path, self.microphone.rate, self.microphone.channels)
        return recorded[:, 0] if self.microphone.channels == 1 else recorded

    async def _said(self) -> bool:
        """Wait until the microphone has sent all it was given; False (and the rest not sent) if
        the connection dropped first."""
        said = asyncio.ensure_future(self._mic.drained())
        waits = [said, *([self._reader] if self._reader is not None else [])]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if said.done():
            return True
        said.cancel()
        self._mic.interrupt()
        return False

    async def _dropped_in(self, report: TurnReport, seen: int, speech_end: float, out_dir: Path, index: int) -> None:
        """The connection dropped during this turn: resume, and report what got through (the
        replay included): the transcript, the reply as far as it went."""
        await self.recover()
        heard = any(m["type"] == "transcript" and m["final"] for _, m in self.messages[seen:])
        # A turn the server heard is answered again by the replica that resumed the call.
        wait_s = self.reply_timeout_s + 60 if heard else 0.5
        done = await self._wait_for(self._reply_done_for_turns_since(seen), wait_s, since=seen)
        self._fill(report, seen, done, speech_end, time.monotonic(), out_dir, index)
        report.dropped = True
        report.voice_to_voice_ms = None  # measured across a reconnect, it would mean nothing

    async def finish_interrupted(self, turn: _Interrupted, next_speech_start: float) -> None:
        """Complete the report of a turn whose reply the next file interrupted."""
        done = await self._wait_for(self._reply_done_for_turns_since(turn.seen), 60.0, since=turn.seen)
        await asyncio.sleep(TAIL_S)
        end = time.monotonic()
        v2v = turn.report.voice_to_voice_ms
        self._fill(turn.report, turn.seen, done, turn.speech_end, end, turn.out_dir, turn.index)
        turn.report.voice_to_voice_ms = v2v if turn.report.reply_text else None
        stop = self._recorder.last_voiced_between(next_speech_start, end)
        if stop is not None:
            turn.report.barge_in_stop_ms = round(1000 * (stop - next_speech_start), 1)
        elif self._recorder.first_after(next_speech_start) is not None:
            # The bot was between two sentences when the user began, and was never heard
            # again: the caller heard it stop at once.
            turn.report.barge_in_stop_ms = 0.0

    async def _turn_heard(self, since: int) -> dict[str, Any] | None:
        """The server's first sign, after message `since`, that it took what was said as a turn (a
        final transcript or a reply), within the reply timeout; None if none came."""
        return await self._wait_for(
            lambda m: m["type"] in ("reply", "transcript") and m.get("final", True), self.reply_timeout_s, since=since
        )

    def _reply_done_for_turns_since(self, since: int):
        """Matches the end of a reply to a turn the user began after message `since` (not an
        earlier reply that the user's new speech interrupted)."""

        def match(message: dict[str, Any]) -> bool:
            if message["type"] != "reply" or not message.get("done"):
                return False
            return any(
                m["type"] == "transcript" and m["final"] and m["turn_id"] == message["turn_id"]
                for _, m in self.messages[since:]
            )

        return match

    def _fill(
        self, report: TurnReport, seen: int, done, speech_end: float, end: float, out_dir: Path, index: int
    ) -> None:
        turn_id = done["turn_id"] if done else None
        finals = [m["turn_id"] for _, m in self.messages[seen:] if m["type"] == "transcript" and m["final"]]
        report.server_turns, report.finals = len(set(finals)), len(finals)
        for _, m in self.messages[seen:]:
            if m.get("turn_id") != turn_id:
                continue
            if m["type"] == "transcript" and m["final"]:
                report.transcript = m["text"]
                report.reply_generated = ""  # a continued turn: the reply begun before is void
            elif m["type"] == "reply" and m.get("restart"):
                report.reply_generated = ""  # answered again from the start, after a move
            elif m["type"] == "reply" and "delta" in m:
                report.reply_generated += m["delta"]
            elif m["type"] == "metrics":
                report.stages_ms = m["stages_ms"]
                report.prompt_tokens = m.get("prompt_tokens", {})
        if done:
            report.reply_text = done["text"]
            report.interrupted = bool(done.get("interrupted"))
        audio = self._recorder.audio_between(speech_end, end)
        path = out_dir / f"reply-{index}.wav"
        write_wav(path, audio, RATE)
        report.reply_audio = str(path)
        voiced = self._recorder.first_voiced_after(speech_end)
        report.voice_to_voice_ms = round(1000 * (voiced - speech_end), 1) if voiced and report.reply_text else None
        if not report.reply_text:
            report.voice_to_voice_ms = None
            report.stages_ms = {}
            report.prompt_tokens = {}

    async def ping(self, timeout_s: float = 10.0) -> bool:
        """Send the protocol's `ping`; True once its `pong` came back within `timeout_s`."""
        seen = len(self.messages)
        try:
            await self._send({"type": "ping"})
        except websockets.ConnectionClosed:
            return False
        return await self._wait_for(lambda m: m["type"] == "pong", timeout_s, since=seen) is not None

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send(json.dumps(message))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "ping":
                    await self._send({"type": "pong"})
                if (event_id := message.get("id")) is not None:
                    if self.last_event_id is not None and _event_key(event_id) <= _event_key(self.last_event_id):
                        continue  # seen before the drop: a replay may overlap what arrived
                    self.last_event_id = event_id
                if message.get("type") == "bye" and message.get("reason") in ("resumed_elsewhere", "max_call_length"):
                    self._leaving = True  # another client has the session now, or it is over for good
                async with self._arrived:
                    self.messages.append((time.monotonic(), message))
                    self._arrived.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self._dropped_at = time.monotonic()
            async with self._arrived:
                self._arrived.notify_all()

    async def _wait_for(self, match, timeout: float, *, since: int = 0) -> dict[str, Any] | None:
        """The first message from index `since` on that matches, waiting up to `timeout` seconds."""
        checked = since
        try:
            async with asyncio.timeout(timeout):
                async with self._arrived:
                    while True:
                        for _, message in self.messages[checked:]:
                            if match(message):
                                return message
                        checked = len(self.messages)
                        if self._reader_done():
                            return None
                        await self._arrived.wait()
        except TimeoutError:
            return None

    def _reader_done(self) -> bool:
        return self._reader is not None and self._reader.done()


async def run_call(
    server: str,
    files: list[str],
    *,
    out_dir: Path,
    reply_timeout_s: float = 15.0,
    barge_in_after_s: float | None = None,
    jitter_buffer_packets: int = DEFAULT_JITTER_PACKETS,
    impairment: Impairment | None = None,
    codecs: tuple[str, ...] = (),
    line_patience_s: float = 0.0,
) -> dict[str, Any]:
    """Call `server`, say each file in turn, and return the report. `line_patience_s`: every line
    busy, wait in the service's line up to this long (CallClient).

    With barge_in_after_s, each file after the first starts that long after the bot
    began answering the previous one, interrupting it. With an impairment, the report
    says how many RTP packets were sent, dropped and reordered.
    """
    for path in files:
        read_audio(path)  # fail on an unreadable file before calling anyone
    out_dir.mkdir(parents=True, exist_ok=True)
    turns: list[TurnReport] = []
    async with CallClient(
        server, reply_timeout_s=reply_timeout_s, jitter_buffer_packets=jitter_buffer_packets,
        impairment=impairment, codecs=codecs, line_patience_s=line_patience_s,
    ) as client:
        interrupted: _Interrupted | None = None
        for index, path in enumerate(files, start=1):
            finishing = None
            if interrupted is not None:
                onset = time.monotonic() + first_voiced_offset_s(read_audio(path, RATE), RATE)
                finishing = asyncio.create_task(client.finish_interrupted(interrupted, onset), name="finish-interrupted")
            barge = barge_in_after_s if index < len(files) else None
            report, interrupted = await client.talk(path, out_dir=out_dir, index=index, barge_in_after_s=barge)
            turns.append(report)
            if finishing is not None:
                await finishing
        session = client.session
        candidate_pair = client.candidate_pair()
        reconnects = client.reconnects
        links = [link.counts for link in client.links]
    impaired = {}
    if impairment is not None and impairment.active:
        impaired = {"impairment": {
            "loss": impairment.loss, "jitter_ms": impairment.jitter_ms, "seed": impairment.seed,
            "rtp_packets": sum(c.rtp for c in links), "dropped": sum(c.dropped for c in links),
            "reordered": sum(c.reordered for c in links),
        }}
    return {
        "session_id": session.get("session_id"),
        "dialog_id": session.get("dialog_id"),
        **impaired,
        # How the audio went: ["relay", "relay"] through the TURN server ([media] ice_servers).
        "candidate_pair": list(candidate_pair) if candidate_pair else None,
        "reconnects": len(reconnects),
        "resumes": [{"resume_ms": r.resume_ms, "replayed": r.replayed, "attempts": r.attempts} for r in reconnects],
        "turns": [
            {
                "input": t.input,
                "transcript": t.transcript,
                "reply_text": t.reply_text,
                "reply_generated": t.reply_generated,
                "interrupted": t.interrupted,
                "reply_audio": t.reply_audio,
                "voice_to_voice_ms": t.voice_to_voice_ms,
                "barge_in_stop_ms": t.barge_in_stop_ms,
                "overlap_ms": t.overlap_ms,
                "server_turns": t.server_turns,
                "finals": t.finals,
                "stages_ms": t.stages_ms,
                "dropped": t.dropped,
            }
            for t in turns
        ],
    }
