"""Serving a small ASGI app of the tests' own (a proxy, a counting server) on loopback, in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn


@contextlib.asynccontextmanager
async def serving(app, port: int, name: str) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve(), name=name)
    while not server.started:  # uvicorn offers no event for it
        if task.done():
            await task  # raises why it could not start
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task
