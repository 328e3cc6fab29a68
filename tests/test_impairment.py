"""Packet loss and jitter on what the call client sends (parley.impairment)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from parley.impairment import ImpairedLink, Impairment, impair_outgoing_audio, is_rtp
from parley.microphone import Microphone


def rtp(sequence_number: int) -> bytes:
    """An (S)RTP packet as it leaves for the socket: version 2, Opus's payload type, a payload."""
    return bytes([0x80, 111]) + sequence_number.to_bytes(2, "big") + bytes(8) + b"payload"


class Wire:
    """Stands for the socket: keeps what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(data)


def test_rtp_is_told_from_what_shares_its_socket():
    assert is_rtp(rtp(1))
    assert not is_rtp(bytes([0x80, 200]) + bytes(10))  # RTCP sender report
    assert not is_rtp(bytes([0x00, 0x01]) + bytes(18))  # STUN binding request
    assert not is_rtp(bytes([22, 0xFE, 0xFD]) + bytes(10))  # DTLS handshake


async def test_loss_drops_about_its_share_of_rtp_and_nothing_else():
    wire = Wire()
    link = ImpairedLink(wire.send, Impairment(loss=0.05, seed=7))
    others = [bytes([0x80, 200]) + bytes(10), bytes([0x00, 0x01]) + bytes(18), bytes([22, 0xFE, 0xFD]) + bytes(10)]
    for n in range(2000):
        await link.send(rtp(n))
        if n % 100 == 0:
            for packet in others:
                await link.send(packet)
    await link.aclose()
    sent_rtp = [p for p in wire.sent if is_rtp(p)]
    assert len(wire.sent) - len(sent_rtp) == 20 * len(others)  # every non-RTP packet went out
    assert link.counts.rtp == 2000 and link.counts.dropped == 2000 - len(sent_rtp)
    assert 0.03 < link.counts.dropped / 2000 < 0.07, link.counts
    assert link.counts.reordered == 0  # no jitter, no reordering
    numbers = [int.from_bytes(p[2:4], "big") for p in sent_rtp]
    assert numbers == sorted(numbers)


async def test_jitter_reorders_packets_sent_20_ms_apart_and_loses_none():
    wire = Wire()
    link = ImpairedLink(wire.send, Impairment(jitter_ms=40, seed=3))
    for n in range(60):
        await link.send(rtp(n))
        await asyncio.sleep(0.02)
    async with asyncio.timeout(10):
        while len(wire.sent) < 60:
            await asyncio.sleep(0.02)
    await link.aclose()
    numbers = [int.from_bytes(p[2:4], "big") for p in wire.sent]
    assert sorted(numbers) == list(range(60))
    overtaken = sum(1 for i, n in enumerate(numbers) if any(m > n for m in numbers[:i]))
    assert overtaken > 0 and link.counts.reordered == overtaken


async def test_closing_the_link_stops_its_sender_and_drops_what_waits():
    wire = Wire()
    link = ImpairedLink(wire.send, Impairment(jitter_ms=1000, seed=1))
    for n in range(20):
        await link.send(rtp(n))
    await link.aclose()
    await asyncio.sleep(0.05)
    before = len(wire.sent)
    await asyncio.sleep(1.1)
    assert len(wire.sent) == before < 20


@pytest.mark.parametrize("loss, jitter_ms", [(-0.1, 0), (1.0, 0), (0.1, -5), (0.1, 5000)])
def test_impossible_settings_are_refused(loss, jitter_ms):
    with pytest.raises(ValueError):
        Impairment(loss=loss, jitter_ms=jitter_ms)


@pytest.mark.slow
async def test_the_receiving_peer_counts_the_packets_lost_on_the_wire():
    caller, callee = RTCPeerConnection(), RTCPeerConnection()
    received: list[int] = []

    @callee.on("track")
    def on_track(track) -> None:
        async def read() -> None:
            while True:
                frame = await track.recv()
                received.append(frame.samples)

        tasks.append(asyncio.create_task(read(), name="test-receiver"))

    tasks: list[asyncio.Task] = []
    mic = Microphone()
    try:
        caller.addTrack(mic)
        link = impair_outgoing_audio(caller, Impairment(loss=0.2, jitter_ms=30, seed=5))
        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        tone = (np.sin(np.arange(48000 * 3) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
        await mic.play(tone)
        async with asyncio.timeout(30):
            await mic.drained()
            while link.counts.rtp < 150:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the last delayed packets arrive
        (stats,) = [s for s in (await callee.getStats()).values() if s.type == "inbound-rtp"]
        counts = link.counts
        # What the wire lost is what the receiver misses: the loss happened after the sender counted
        # the packet, on the way, not before the encoder.
        assert counts.dropped > 0.1 * counts.rtp and counts.reordered > 0, counts
        assert abs(stats.packetsLost - counts.dropped) <= 3, (stats.packetsLost, counts)
        assert stats.packetsReceived >= counts.rtp - counts.dropped - 3
        assert received, "nothing was decoded"
    finally:
        await caller.close()
        await callee.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.aclose()
