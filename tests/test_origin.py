"""Which pages may open `/ws`: the policy alone, then against a real server."""

from __future__ import annotations

import json

import pytest
import websockets

from signaling.origin import origin_allowed, parse_origins


@pytest.mark.parametrize(
    "origin, host, allowed, expected",
    [
        (None, "parley.example", "", True),  # not a browser
        ("https://parley.example", "parley.example", "", True),  # the page's own
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "", True),
        ("HTTP://127.0.0.1:8000/", "127.0.0.1:8000", "", True),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", "", False),  # another port is another origin
        ("https://evil.example", "parley.example", "", False),
        ("null", "parley.example", "", False),  # a file:// page or a sandboxed frame
        ("https://app.example", "parley.example", "https://app.example, https://other.example", True),
        ("https://app.example", "parley.example", "https://other.example", False),
        ("https://anyone.example", "parley.example", "*", True),
        ("https://parley.example", None, "", False),
    ],
)
def test_origin_policy(origin, host, allowed, expected):
    assert origin_allowed(origin, host, parse_origins(allowed)) is expected


async def test_a_cross_origin_page_cannot_open_a_call_and_the_servers_own_page_can(server):
    url = server.replace("http", "ws") + "/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    for origin in (server, None):  # the server's own page; a client that is not a browser
        async with websockets.connect(url, origin=origin) as ws:
            assert json.loads(await ws.recv())["type"] == "session"
