"""How long received audio waits in aiortc's jitter buffer before it is decoded.

aiortc holds every inbound audio packet until four more have arrived (80 ms of
Opus) and offers no option to change it. In a voice call that delay sits between
the caller's first word and the barge-in that silences the bot, so Parley sets
it: one packet of slack (20 ms) still puts a packet that overtook its
predecessor back in order, which is all the reordering a loopback or LAN path
shows; on a long, jittery path raise `[media] jitter_buffer_packets`.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer

# aiortc's own capacity for audio: packets further apart than this are dropped as too late.
_CAPACITY = 16
# The private attribute aiortc keeps it in (name-mangled). Checked at set-up, so an aiortc that
# renames it fails at the first call rather than leaving the default silently in place.
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


def set_audio_jitter_buffer(pc: RTCPeerConnection, packets: int) -> None:
    """Make every audio receiver of `pc` hold `packets` packets (aiortc's default: 4).

    Call it once the receivers exist (after `addTrack` or `setRemoteDescription`)
    and before media flows.
    """
    if not 0 <= packets < _CAPACITY:
        raise ValueError(f"jitter buffer packets must be 0..{_CAPACITY - 1}, got {packets}")
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            _replace(transceiver.receiver, packets)


def _replace(receiver: RTCRtpReceiver, packets: int) -> None:
    if not isinstance(getattr(receiver, _ATTRIBUTE, None), JitterBuffer):
        raise RuntimeError("this aiortc keeps no audio jitter buffer where Parley expects it")
    setattr(receiver, _ATTRIBUTE, JitterBuffer(capacity=_CAPACITY, prefetch=packets))
