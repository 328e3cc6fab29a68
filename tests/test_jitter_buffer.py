"""The audio jitter buffer Parley sets on aiortc's receivers."""

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from media.jitter_buffer import set_audio_jitter_buffer
from media.tracks import OutboundAudioTrack


def _packets_until_first_frame(pc: RTCPeerConnection) -> int:
    """Feed the audio receiver's buffer 20 ms packets in order; how many until it releases the first."""
    (transceiver,) = pc.getTransceivers()
    buffer = transceiver.receiver._RTCRtpReceiver__jitter_buffer
    for n in range(1, 16):
        packet = RtpPacket(payload_type=111, sequence_number=1000 + n, timestamp=960 * n)
        packet._data = b"\x00"  # what the receiver stores of a packet's payload
        _, frame = buffer.add(packet)
        if frame is not None:
            assert frame.timestamp == 960  # the first packet, in order
            return n
    raise AssertionError("the buffer released nothing")


async def test_one_packet_of_slack_releases_audio_after_the_next_packet_instead_of_four_more():
    default, ours = RTCPeerConnection(), RTCPeerConnection()
    try:
        default.addTrack(OutboundAudioTrack())
        ours.addTrack(OutboundAudioTrack())
        set_audio_jitter_buffer(ours, 1)
        assert _packets_until_first_frame(default) == 5  # aiortc holds 4 more: 80 ms
        assert _packets_until_first_frame(ours) == 2  # 20 ms
    finally:
        await default.close()
        await ours.close()


async def test_a_late_packet_is_still_put_back_in_order():
    pc = RTCPeerConnection()
    try:
        pc.addTrack(OutboundAudioTrack())
        set_audio_jitter_buffer(pc, 1)
        buffer = pc.getTransceivers()[0].receiver._RTCRtpReceiver__jitter_buffer
        released = []
        for n in (1, 3, 2, 4, 5):  # packet 2 overtaken by 3
            packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n)
            packet._data = bytes([n])
            _, frame = buffer.add(packet)
            if frame is not None:
                released.append(frame.data[0])
        assert released[:3] == [1, 2, 3]
    finally:
        await pc.close()


async def test_an_impossible_size_is_refused():
    pc = RTCPeerConnection()
    try:
        pc.addTrack(OutboundAudioTrack())
        with pytest.raises(ValueError, match="1..15"):
            set_audio_jitter_buffer(pc, 0)
    finally:
        await pc.close()
