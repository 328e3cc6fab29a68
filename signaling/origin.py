"""Which web pages may open a call: the check on `/ws`'s Origin header.

A browser sends the Origin of the page that opens a WebSocket, and does not stop a
page from opening one to any server (no same-origin rule for WebSockets). Without
this check, any page on the web could open calls on a Parley server from its
visitors' browsers and spend its LLM (cross-site WebSocket hijacking). Allowed:
clients that send no Origin (not browsers: `parley call`, other servers), the
page's own origin (the Origin's host is the Host the request came to), and the
origins listed in `[signaling] allowed_origins`.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_origins(setting: str) -> frozenset[str]:
    """`[signaling] allowed_origins`: origins separated by commas or spaces ("*": any)."""
    return frozenset(o.rstrip("/").lower() for o in setting.replace(",", " ").split())


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a WebSocket opened from page `origin` to `host` (the Host header) may go on."""
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    if "*" in allowed or origin in allowed:
        return True
    # "null" (a file:// page, a sandboxed frame) has no host, and so is never the page's own.
    netloc = urlsplit(origin).netloc
    return bool(netloc) and host is not None and netloc == host.lower()
