"""Typed configuration of the signaling layer ([signaling] in models.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalingConfig:
    """The WebSocket's limits and keepalive.

    ping_interval_s, pong_timeout_s: protocol pings, and the deadline for their pongs (close 1011).
    max_message_bytes: a larger message closes the socket with 1009.
    session_ttl_s, detached_session_ttl_s: how long a session lives in Redis with and without a client.
    event_log_max: about how many events a session's log keeps for a client that resumes (MAXLEN ~).
    resume_wait_s: how long a socket opened to resume waits for the `resume` message.
    allowed_origins: web pages, besides the server's own, that may open `/ws` (signaling.origin):
        origins separated by commas or spaces, "*" for any.
    max_call_s: the longest a session (text or voice) lasts, counted from its creation across
        resumes; then it ends after the reply in progress with `bye` reason `max_call_length`,
        and its resume token no longer works. 0: no limit.
    """

    ping_interval_s: float = 30.0
    pong_timeout_s: float = 10.0
    max_message_bytes: int = 65536
    session_ttl_s: int = 3600
    detached_session_ttl_s: int = 120
    event_log_max: int = 2000
    resume_wait_s: float = 10.0
    allowed_origins: str = ""
    max_call_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_call_s < 0:
            raise ValueError("signaling.max_call_s must be 0 (no limit) or more")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionConfig:
    """What one replica takes on ([admission] in models.toml; signaling.admission).

    max_calls: voice calls at once (WebRTC audio: ASR, TTS and the LLM for each).
    max_sessions: WebSocket sessions at once, text or voice.
    cluster_max_calls: voice calls across every replica together (0: no cap but the replicas' own).
    max_calls_per_ip, max_sessions_per_ip: voice calls and sessions one client address holds at
        once, across every replica (signaling.client_cap); 0: no cap.
    retry_after_s: what a refused caller is told to wait before trying again.
    line_max_calls: callers who may wait in the service's line for a voice call (those whose offer
        asks to, `wait_in_line`), each told its position; past it a refused caller gets no place.
        0: no line.
    line_hold_s: a place in line not claimed again (the caller trying again) within this is given
        up: the caller left.
    heartbeat_s, replica_ttl_s: how often a replica writes its load to Redis, and how long
        after its last write the others stop counting it.
    """

    max_calls: int = 2
    max_sessions: int = 2000
    cluster_max_calls: int = 0
    max_calls_per_ip: int = 4
    max_sessions_per_ip: int = 20
    retry_after_s: float = 5.0
    line_max_calls: int = 100
    line_hold_s: float = 15.0
    heartbeat_s: float = 5.0
    replica_ttl_s: float = 15.0

    def __post_init__(self) -> None:
        caps = (self.max_calls, self.max_sessions, self.cluster_max_calls)
        if any(cap < 0 for cap in (*caps, self.max_calls_per_ip, self.max_sessions_per_ip, self.line_max_calls)):
            raise ValueError("admission limits must be 0 or more")
        if self.line_hold_s < 2 * self.retry_after_s:
            # A caller in line comes back after retry_after_s, then resumes its session and offers again.
            raise ValueError("admission.line_hold_s must be at least twice retry_after_s")
        if self.replica_ttl_s <= self.heartbeat_s:
            raise ValueError("admission.replica_ttl_s must be longer than heartbeat_s")
