"""Typed configuration of the media layer ([media] in models.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    """WebRTC audio settings.

    jitter_buffer_packets: inbound audio packets (20 ms each) aiortc holds before decoding;
        its default is 4, the least is 1. Each one delays hearing the caller, and so
        barge-in, by 20 ms.
    """

    jitter_buffer_packets: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.jitter_buffer_packets <= 15:
            raise ValueError(f"jitter_buffer_packets must be 1..15, got {self.jitter_buffer_packets}")
