"""The bounded thread pool that all blocking model inference in a process runs in.

The event loop only moves bytes and decisions; ASR and TTS run here. A fixed
pool, shared by every call, keeps one busy call from starving the loop and
bounds how many inferences compete for the two cores.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The process-wide inference pool (PARLEY_INFERENCE_THREADS, default 2)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=int(os.environ.get("PARLEY_INFERENCE_THREADS", "2")), thread_name_prefix="inference"
        )
    return _executor


async def run_inference(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call in the inference pool and await its result."""
    return await asyncio.get_running_loop().run_in_executor(executor(), fn, *args)
