"""How long received audio waits in aiortc's jitter buffer before it is decoded.

aiortc's receiver releases an audio packet once the next one has arrived, and by
default only once four more have: 80 ms of Opus, with no option to change it.
Parley feeds received audio to a VAD, not to a loudspeaker, so it needs no
smooth playout, and the buffer orders late and missing packets the same way
whatever its depth (it waits for a missing packet until it is full). Holding
more packets only delays hearing the caller, and with it barge-in. Parley
holds one, the least aiortc allows (`[media] jitter_buffer_packets`).
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
    if not 1 <= packets < _CAPACITY:
        raise ValueError(f"jitter buffer packets must be 1..{_CAPACITY - 1}, got {packets}")
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            _replace(transceiver.receiver, packets)


def _replace(receiver: RTCRtpReceiver, packets: int) -> None:
    if not isinstance(getattr(receiver, _ATTRIBUTE, None), JitterBuffer):
        raise RuntimeError("this aiortc keeps no audio jitter buffer where Parley expects it")
    setattr(receiver, _ATTRIBUTE, JitterBuffer(capacity=_CAPACITY, prefetch=packets))
