"""Typed configuration of the signaling layer ([signaling] in models.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalingConfig:
    """The WebSocket's limits and keepalive.

    ping_interval_s, pong_timeout_s: protocol pings, and the deadline for their pongs (close 1011).
    max_message_bytes: a larger message closes the socket with 1009.
    session_ttl_s, detached_session_ttl_s: how long a session lives in Redis with and without a client.
    """

    ping_interval_s: float = 30.0
    pong_timeout_s: float = 10.0
    max_message_bytes: int = 65536
    session_ttl_s: int = 3600
    detached_session_ttl_s: int = 120
