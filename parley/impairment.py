"""Packet loss and jitter on the audio a WebRTC client sends, in user space.

What is modelled: the network between the caller and the server losing and
delaying the caller's audio. Each RTP packet is impaired as it leaves for the UDP
socket, already SRTP-protected, exactly as a lossy path would treat it: dropped
with probability `loss`, otherwise held for a delay drawn uniformly from
0..`jitter_ms`. Packets go out every 20 ms, so with more than 20 ms of jitter
later packets overtake earlier ones, and the receiver's jitter buffer sees them
out of order, as on a real jittery path. Nothing is dropped or reordered before
the encoder: the loss is of packets, not of audio frames.

Left alone: RTCP (a report lost now and then changes nothing for audio), and STUN
and DTLS, so the call connects the same way every run and only its audio is
impaired. The kernel's netem would impair everything; this one is aimed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection
from aiortc.rtp import is_rtcp

Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Impairment:
    """How the path loses and delays the caller's RTP packets.

    loss: probability that a packet is dropped, 0 to below 1.
    jitter_ms: each packet that is not dropped waits a random 0..jitter_ms (uniform).
    seed: the random generator's seed, for a run that can be repeated (None: random).
    """

    loss: float = 0.0
    jitter_ms: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"packet loss must be from 0 to below 1, not {self.loss}")
        if not 0.0 <= self.jitter_ms <= 1000.0:
            raise ValueError(f"jitter must be from 0 to 1000 ms, not {self.jitter_ms}")

    @property
    def active(self) -> bool:
        return self.loss > 0 or self.jitter_ms > 0


@dataclass(frozen=True, slots=True)
class LinkCounts:
    """What an impaired link did: RTP packets handed to it, dropped, and sent after a packet with a
    later sequence number (reordered)."""

    rtp: int
    dropped: int
    reordered: int


def is_rtp(data: bytes) -> bool:
    """RTP, as opposed to RTCP, STUN or DTLS on the same socket (RFC 7983: RTP and RTCP start
    with a byte from 128 to 191; the header stays readable under SRTP)."""
    return len(data) >= 12 and 128 <= data[0] <= 191 and not is_rtcp(data)


def _sequence_number(packet: bytes) -> int:
    return int.from_bytes(packet[2:4], "big")


class ImpairedLink:
    """Stands between a transport's `send` and the socket, dropping and delaying RTP packets.

    Delayed packets wait in a heap ordered by when they are due; one task sends each
    at its time. The heap is bounded by the delay itself: at 50 packets a second it
    holds at most jitter_ms / 20 + 1 packets.
    """

    def __init__(self, send: Send, impairment: Impairment) -> None:
        self.impairment = impairment
        self._send = send
        self._random = random.Random(impairment.seed)
        self._due: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()  # ties in the heap keep the order of arrival
        self._changed = asyncio.Event()
        self._sender: asyncio.Task | None = None
        self._highest_sent: int | None = None
        self._rtp = self._dropped = self._reordered = 0

    @property
    def counts(self) -> LinkCounts:
        return LinkCounts(self._rtp, self._dropped, self._reordered)

    async def send(self, data: bytes) -> None:
        """What the transport calls instead of its own send."""
        if not is_rtp(data):
            await self._send(data)
            return
        self._rtp += 1
        if self._random.random() < self.impairment.loss:
            self._dropped += 1
            return
        delay_s = self._random.uniform(0.0, self.impairment.jitter_ms) / 1000.0
        if delay_s == 0.0 and not self._due:
            await self._send_now(data)
            return
        loop = asyncio.get_running_loop()
        heapq.heappush(self._due, (loop.time() + delay_s, next(self._order), data))
        self._changed.set()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_when_due(), name="impaired-link-sender")

    async def aclose(self) -> None:
        """Stop sending; packets still delayed are lost, as they would be on a closed path."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
        self._due.clear()

    async def _send_when_due(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            wait_s = self._due[0][0] - loop.time() if self._due else None
            if wait_s is not None and wait_s <= 0:
                _, _, data = heapq.heappop(self._due)
                await self._send_now(data)
                continue
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()  # an earlier packet may have been queued meanwhile
            except TimeoutError:
                pass

    async def _send_now(self, data: bytes) -> None:
        number = _sequence_number(data)
        if self._highest_sent is not None and (self._highest_sent - number) % 65536 < 32768:
            self._reordered += 1
        else:
            self._highest_sent = number
        try:
            await self._send(data)
        except ConnectionError:
            pass  # the path closed while the packet was delayed: it is lost, as on a real network


def impair_outgoing_audio(pc: RTCPeerConnection, impairment: Impairment) -> ImpairedLink:
    """Put an ImpairedLink under the audio sender of `pc`.

    Call it after `addTrack` (the transports exist) and before media flows. aiortc
    keeps the ICE transport's send in an attribute of its own (RTCIceTransport._send,
    its aioice connection's send); the link wraps that one.
    """
    (sender,) = [s for s in pc.getSenders() if s.track is not None and s.track.kind == "audio"]
    ice = sender.transport.transport
    link = ImpairedLink(ice._send, impairment)
    ice._send = link.send
    return link
