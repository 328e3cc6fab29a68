"""Typed configuration of the media layer ([media] in models.toml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# STUN and TURN URLs as RFC 7064 and 7065 write them, as far as aiortc reads them (no IPv6
# literals); browsers refuse a `transport` on a STUN URL.
_STUN_URL = re.compile(r"stuns?:[^?:\s]+(:\d+)?")
_TURN_URL = re.compile(r"turns?:[^?:\s]+(:\d+)?(\?transport=(udp|tcp))?")


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    """WebRTC audio settings.

    jitter_buffer_packets: the most inbound audio packets (20 ms each) held while an earlier
        one is missing, before it is given up as lost (media.jitter_buffer); 0 keeps aiortc's
        own buffer, which holds 4 always and waits 15 for a lost one. Each one held delays
        hearing the caller, and so barge-in, by 20 ms.
    voice_encoder: who encodes the bot's voice when the call sends Opus: "parley" (the track,
        mono, with silence encoded once: media.voice_encoder) or "aiortc" (every 20 ms frame,
        silence too, in a thread), for comparison. Other codecs (PCMU, PCMA) are aiortc's.
    decoder: where the caller's packets are decoded: "loop" (on the event loop as each arrives,
        media.loop_decoder) or "thread" (aiortc's decoder thread per call, two hops a packet).
    caller_dtx: ask the caller's Opus encoder for DTX (`usedtx=1` in the answer): in silence it
        sends a tiny packet every 400 ms instead of 50 a second, and the server fills the gaps
        with silence (media.caller_dtx). Needs decoder "loop", which sees each packet's size.
    bot_dtx: the bot's voice in DTX when the caller's offer asks for it (`usedtx=1` on Opus; the
        page and `parley call` ask): while the bot is quiet, 200 ms of silence packets, then a
        TOC byte alone every 400 ms and nothing between (media.sender_dtx). Needs voice_encoder
        "parley", which makes the packets.
    ice_servers: STUN and TURN URLs ("stun:host:3478", "turn:host:3478?transport=udp") that
        both ends of a call use to find a path for the audio (media.ice); empty: host
        candidates only, which is enough when the caller can reach the server's address.
    turn_secret: the TURN server's shared secret (coturn's `static-auth-secret`); each session
        is given credentials made from it. Needed as soon as ice_servers has a TURN URL.
        Never logged (not in this object's repr).
    turn_credential_ttl_s: how long a session's TURN credentials work. The TURN server allocates
        no relay to them afterwards (coturn goes on refreshing one allocated before), and the
        page may dial at any point of its session: at least [signaling] max_call_s.
    ice_transport_policy: "all", or "relay" to use the TURN server's relayed candidates only,
        at both ends (WebRTC's iceTransportPolicy): the caller's and the server's addresses
        stay hidden from each other, at the cost of every packet passing through the relay.
    """

    jitter_buffer_packets: int = 1
    voice_encoder: str = "parley"
    decoder: str = "loop"
    caller_dtx: bool = True
    bot_dtx: bool = True
    ice_servers: tuple[str, ...] = ()
    turn_secret: str = field(default="", repr=False)
    turn_credential_ttl_s: int = 7200
    ice_transport_policy: str = "all"

    def __post_init__(self) -> None:
        if not 0 <= self.jitter_buffer_packets <= 15:
            raise ValueError(f"jitter_buffer_packets must be 0..15, got {self.jitter_buffer_packets}")
        if self.voice_encoder not in ("parley", "aiortc"):
            raise ValueError(f'voice_encoder must be "parley" or "aiortc", got {self.voice_encoder!r}')
        if self.decoder not in ("loop", "thread"):
            raise ValueError(f'decoder must be "loop" or "thread", got {self.decoder!r}')
        if self.caller_dtx and self.decoder != "loop":
            raise ValueError('caller_dtx needs decoder "loop" (the decoder that sees when a packet is DTX)')
        # models.toml gives a list; the config holds a tuple, like every other frozen value.
        object.__setattr__(self, "ice_servers", tuple(self.ice_servers))
        for url in self.ice_servers:
            if not (_STUN_URL.fullmatch(url) or _TURN_URL.fullmatch(url)):
                raise ValueError(
                    f"ice_servers: {url!r} is not a STUN or TURN URL "
                    '(like "stun:host:3478" or "turn:host:3478?transport=udp")'
                )
        if self.turn_urls and not self.turn_secret:
            raise ValueError("ice_servers has a TURN URL but turn_secret is empty (PARLEY_MEDIA_TURN_SECRET)")
        if self.turn_credential_ttl_s <= 0:
            raise ValueError("turn_credential_ttl_s must be more than 0")
        if self.ice_transport_policy not in ("all", "relay"):
            raise ValueError(f'ice_transport_policy must be "all" or "relay", got {self.ice_transport_policy!r}')
        if self.ice_transport_policy == "relay" and not self.turn_urls:
            raise ValueError('ice_transport_policy "relay" needs a TURN URL in ice_servers: nothing else relays')

    @property
    def stun_urls(self) -> tuple[str, ...]:
        return tuple(url for url in self.ice_servers if url.startswith("stun"))

    @property
    def turn_urls(self) -> tuple[str, ...]:
        return tuple(url for url in self.ice_servers if url.startswith("turn"))
