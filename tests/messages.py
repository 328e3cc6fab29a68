"""Reading a test's WebSocket: protocol messages until one matches."""

from __future__ import annotations

import asyncio
import json


async def messages_until(ws, stop, timeout: float = 60) -> list[dict]:
    """Every message received, up to and including the first for which `stop(message)` is true."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append(json.loads(await ws.recv()))
            if stop(seen[-1]):
                return seen
