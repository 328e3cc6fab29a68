"""One call: a session's turn loop and, once the client offers, its WebRTC peer connection.

Every task of the call lives in the TaskGroup of `run()`; cancelling it ends the
turn loop, the media pump and the peer connection together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from media.caller_dtx import ask_for_dtx, asks_for_dtx
from media.config import MediaConfig
from media.ice import aiortc_configuration, rtc_configuration
from media.jitter_buffer import set_audio_jitter_buffer
from media.loop_decoder import decode_on_loop
from media.tracks import InboundAudio, OutboundAudioTrack
from media.voice_encoder import sends_opus
from pipeline.turns import TurnLoop
from signaling import metrics
from signaling.protocol import IceCandidate, ProtocolError

log = logging.getLogger(__name__)


class Call:
    """The media and turns of one session.

    ice_user: who the server's own TURN credentials are made for (the session id, as the page's).
    """

    def __init__(
        self, turns: TurnLoop, config: MediaConfig, *, ice_user: str,
        on_media_failed: Callable[[str], Awaitable[None]],
    ) -> None:
        self.turns = turns
        self.config = config
        self.ice_user = ice_user
        self._on_media_failed = on_media_failed
        self._pc: RTCPeerConnection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()

    async def run(self) -> None:
        """Run the call's tasks until cancelled; the peer connection is closed on the way out."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._ready.set()
                tasks.create_task(self.turns.run(), name=f"turns-{self.turns.dialog_id}")
        finally:
            await asyncio.shield(self.close())

    async def accept_offer(self, sdp: str) -> str:
        """Set up the peer connection from the client's offer; returns the answer's SDP."""
        await self._ready.wait()
        if self._pc is not None:
            raise ProtocolError("out_of_order", 'Cannot accept an offer: the call already has a peer connection')
        # Credentials made now, not at the session's start: they must outlast this peer connection.
        pc = self._pc = RTCPeerConnection(aiortc_configuration(rtc_configuration(self.config, self.ice_user)))
        outbound = OutboundAudioTrack()
        tracks: list[MediaStreamTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._tasks is not None:
                tracks.append(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("call %s: peer connection %s", self.turns.dialog_id, pc.connectionState)
            if pc.connectionState == "failed":
                await self._on_media_failed("ICE failed: no network path for the audio; text chat still works")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            set_audio_jitter_buffer(pc, self.config.jitter_buffer_packets)
            decoders = decode_on_loop(pc) if self.config.decoder == "loop" else {}
            sender = pc.addTrack(outbound)
            await pc.setLocalDescription(await pc.createAnswer())
            mid = next(t.mid for t in pc.getTransceivers() if t.sender is sender)
            if self.config.voice_encoder == "parley" and sends_opus(pc.localDescription.sdp, mid):
                outbound.send_opus(dtx=self.config.bot_dtx and asks_for_dtx(sdp))
        except Exception as exc:  # noqa: BLE001 - aiortc checks SDP with asserts and raises any type
            await self.close()
            raise ProtocolError("invalid_offer", f"Cannot accept the offer: {exc or type(exc).__name__}") from exc
        # The caller's audio is read once its decoder is in place: no packet flows before the answer.
        for track in tracks:
            inbound = InboundAudio(
                track, dtx=decoders.get(track) if self.config.caller_dtx else None,
                on_filled=metrics.CALLER_SILENCE_FILLED.inc,
            )
            self._tasks.create_task(inbound.pump(), name=f"inbound-{self.turns.dialog_id}")
            self.turns.attach_audio(inbound, outbound)
        answer = pc.localDescription.sdp
        return ask_for_dtx(answer) if self.config.caller_dtx else answer

    async def add_ice_candidate(self, message: IceCandidate) -> None:
        """A trickled candidate from the client (aiortc's own candidates come inside the answer)."""
        if self._pc is None:
            raise ProtocolError("out_of_order", "Cannot add an ICE candidate before the offer")
        if message.candidate is None:
            return  # end of candidates
        if message.sdp_mid is None and message.sdp_mline_index is None:
            raise ProtocolError("invalid_message", "an ICE candidate needs 'sdpMid' or 'sdpMLineIndex'")
        sections = self._pc.getTransceivers()
        if message.sdp_mid not in {t.mid for t in sections} and not (
            message.sdp_mline_index is not None and message.sdp_mline_index < len(sections)
        ):
            # aiortc would drop it without a word; the client should hear it went nowhere.
            raise ProtocolError("invalid_message", "the ICE candidate names no media section of the offer")
        try:
            candidate = candidate_from_sdp(message.candidate.removeprefix("candidate:"))
            candidate.sdpMid = message.sdp_mid
            candidate.sdpMLineIndex = message.sdp_mline_index
            await self._pc.addIceCandidate(candidate)
        except Exception as exc:  # noqa: BLE001 - aiortc raises any type for a candidate it cannot use
            raise ProtocolError("invalid_message", f"unusable ICE candidate: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        """Close the peer connection; safe to call more than once."""
        pc, self._pc = self._pc, None
        if pc is not None:
            try:
                await pc.close()
            except Exception:  # noqa: BLE001 - the call is ending either way; say why it did not close cleanly
                log.warning("call %s: closing the peer connection failed", self.turns.dialog_id, exc_info=True)
