"""ICE servers for one session: the STUN and TURN URLs of [media], with TURN credentials of its own.

TURN credentials follow the TURN REST API scheme (draft-uberti-behave-turn-rest-00) that
coturn checks with `use-auth-secret` and `static-auth-secret`: the username is
"<expiry, unix time>:<session id>" and the password base64(HMAC-SHA1(secret, username)).
coturn computes the same from the shared secret, so nothing passes between Parley and the
TURN server, a session's credentials get no relay after their expiry, and the secret itself
is never sent to a client.

The page gets the configuration as WebRTC's RTCConfiguration dictionary (`iceServers`,
`iceTransportPolicy`) in the `session` message; aiortc, on the server and in `parley call`,
gets the same dictionary through `aiortc_configuration`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from media.config import MediaConfig


@dataclass(frozen=True, slots=True)
class TurnCredential:
    """A TURN username and password, valid until `expires_at` (unix time)."""

    username: str
    password: str = field(repr=False)
    expires_at: int


def turn_credential(secret: str, user: str, *, expires_at: int) -> TurnCredential:
    """The TURN REST API credential of `user` (a session id), valid until `expires_at`."""
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires_at)


def rtc_configuration(config: MediaConfig, user: str, *, now: float | None = None) -> dict[str, Any]:
    """The RTCConfiguration dictionary for one session, as a browser's RTCPeerConnection takes it:
    the STUN URLs, the TURN URLs with credentials made for `user`, and the transport policy."""
    servers: list[dict[str, Any]] = []
    if config.stun_urls:
        servers.append({"urls": list(config.stun_urls)})
    if config.turn_urls:
        now = time.time() if now is None else now
        credential = turn_credential(config.turn_secret, user, expires_at=int(now) + config.turn_credential_ttl_s)
        servers.append({"urls": list(config.turn_urls), "username": credential.username, "credential": credential.password})
    return {"iceServers": servers, "iceTransportPolicy": config.ice_transport_policy}


def aiortc_configuration(configuration: dict[str, Any] | None) -> RTCConfiguration:
    """aiortc's RTCConfiguration for an RTCConfiguration dictionary (None: no ICE servers).

    aiortc gathers with the first STUN URL and the first TURN URL only (aioice has one of each);
    a browser tries them all. The relay policy is aiortc's own `iceTransportPolicy`, which it
    hands to aioice (TransportPolicy.RELAY): only relayed candidates are gathered and offered,
    and the related address, the host's own, is left out of them.
    """
    configuration = configuration or {}
    servers = [
        RTCIceServer(urls=list(server["urls"]), username=server.get("username"), credential=server.get("credential"))
        for server in configuration.get("iceServers", [])
    ]
    # An empty list, not None: with None aiortc would ask Google's public STUN server.
    return RTCConfiguration(
        iceServers=servers,
        iceTransportPolicy=RTCIceTransportPolicy(configuration.get("iceTransportPolicy", "all")),
    )
