"""Typed configuration of the media layer ([media] in models.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    """WebRTC audio settings.

    jitter_buffer_packets: the most inbound audio packets (20 ms each) held while an earlier
        one is missing, before it is given up as lost (media.jitter_buffer); 0 keeps aiortc's
        own buffer, which holds 4 always and waits 15 for a lost one. Each one held delays
        hearing the caller, and so barge-in, by 20 ms.
    """

    jitter_buffer_packets: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.jitter_buffer_packets <= 15:
            raise ValueError(f"jitter_buffer_packets must be 0..15, got {self.jitter_buffer_packets}")
