"""The audio jitter buffer Parley sets on aiortc's receivers."""

import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from media.jitter_buffer import AudioJitterBuffer, set_audio_jitter_buffer
from media.tracks import OutboundAudioTrack


def packet(n: int) -> RtpPacket:
    """The n-th 20 ms Opus packet, as the receiver hands it over (its payload in `_data`)."""
    p = RtpPacket(payload_type=111, sequence_number=n % 65536, timestamp=960 * n % 2**32)
    p._data = n.to_bytes(4, "big")
    return p


def released(buffer, numbers) -> list[int]:
    """Feed the packets in this order; the packets of the frames released, in order."""
    out = []
    for n in numbers:
        _, frame = buffer.add(packet(n))
        if frame is not None:
            out.append(int.from_bytes(frame.data, "big"))
    return out


async def test_set_up_on_a_peer_connection_and_a_packet_in_order_is_released_at_once():
    default, ours = RTCPeerConnection(), RTCPeerConnection()
    try:
        default.addTrack(OutboundAudioTrack())
        ours.addTrack(OutboundAudioTrack())
        set_audio_jitter_buffer(ours, 1)
        set_audio_jitter_buffer(ours, 2)  # again: replaced again
        (theirs,), (mine,) = (
            [t.receiver._RTCRtpReceiver__jitter_buffer for t in pc.getTransceivers()] for pc in (default, ours)
        )
        assert isinstance(mine, AudioJitterBuffer) and mine.packets == 2
        assert released(theirs, range(1000, 1005)) == [1000]  # aiortc holds 4 more: 80 ms
        assert released(mine, range(1000, 1005)) == list(range(1000, 1005))  # none held
    finally:
        await default.close()
        await ours.close()


def test_a_packet_overtaken_by_the_next_is_put_back_in_order():
    assert released(AudioJitterBuffer(1), [1, 3, 2, 4, 5, 7, 6, 8]) == [1, 2, 3, 4, 5, 6, 7]


def test_a_lost_packet_is_given_up_after_one_more_and_the_delay_does_not_last():
    buffer = AudioJitterBuffer(1)
    sent = [n for n in range(1, 101) if n % 20 != 0]  # every twentieth packet lost: 5 %
    out = released(buffer, sent)
    # Every packet that came is decoded, in order, and at the end at most one waits.
    assert out == sent[: len(out)] and len(out) >= len(sent) - 1
    assert buffer.lost == 4 and buffer.late == 0
    # aiortc's own buffer waits 15 packets for each lost one, throws away the packet before it,
    # and stays that far behind.
    out = released(JitterBuffer(capacity=16, prefetch=1), sent)
    assert {19, 39, 59, 79} <= set(sent) - set(out) and sent[-1] - out[-1] >= 14


def test_a_packet_later_than_the_buffer_waits_is_dropped_as_late():
    buffer = AudioJitterBuffer(1)
    assert released(buffer, [1, 3, 4, 2, 5]) == [1, 3, 4]  # 2 given up when 4 came; 5 waits behind 4
    assert buffer.lost == 1 and buffer.late == 1


def test_it_holds_no_more_than_asked_whatever_the_order():
    buffer = AudioJitterBuffer(3)
    order = [1, 5, 4, 3, 2, 9, 8, 7, 6, 10, 14, 11, 13, 12]
    out = released(buffer, order)
    assert out == sorted(out) and len(out) >= len(order) - 3
    assert len(buffer._held) <= 3


def test_sequence_numbers_wrap_and_a_restarted_sequence_is_followed():
    buffer = AudioJitterBuffer(1)
    assert released(buffer, [65534, 65535, 65536, 65537]) == [65534, 65535, 65536, 65537]
    assert released(buffer, [500, 501, 502, 503]) == [500, 501, 502]  # a jump ahead: the gap is given up
    assert released(buffer, [100, 101]) == [100, 101]  # far behind: a restarted sequence


async def test_none_keeps_aiortcs_own_and_an_impossible_size_is_refused():
    pc = RTCPeerConnection()
    try:
        pc.addTrack(OutboundAudioTrack())
        set_audio_jitter_buffer(pc, 0)
        assert type(pc.getTransceivers()[0].receiver._RTCRtpReceiver__jitter_buffer) is JitterBuffer
        with pytest.raises(ValueError, match="0..15"):
            set_audio_jitter_buffer(pc, 16)
    finally:
        await pc.close()
    with pytest.raises(ValueError, match="1..15"):
        AudioJitterBuffer(0)
