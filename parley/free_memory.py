"""Giving freed memory back to the system, so a long-running server's footprint stays flat.

glibc's malloc serves a large block from the heap, not from a mapping of its own,
once a block of that size has been freed (its mmap threshold rises with what it
sees, up to 32 MB). The call path allocates and frees many such blocks (audio
buffers, transcription features, synthesis tensors) from several threads, so the
heaps fill with free holes that malloc keeps: measured on the soak, 10-18 % more
RSS in two minutes with nothing leaking (tracemalloc flat; the main arena held
120 MB for 23 MB in use). `malloc_trim` hands the free pages back. A fixed mmap
threshold would too, but every large block then costs a fresh mapping: the soak's
server used 40 % more CPU and answered ~400 ms later.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


async def trim_periodically(interval_s: float) -> None:
    """Every `interval_s`, give the pages malloc holds free back to the system (in a thread: it
    takes malloc's locks for a few milliseconds). Returns at once without glibc or with 0."""
    trim = _malloc_trim()
    if trim is None or interval_s <= 0:
        log.info("free memory is not trimmed (%s)", "disabled" if trim else "no glibc malloc_trim")
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)
