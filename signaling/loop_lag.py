"""How late the event loop runs what is due: its lag, sampled for `/metrics`.

Every call's media (Opus in and out, resampling, the VAD) and every socket share one
event loop. When it is busy, a frame due now runs late, and every stage of every call
waits with it, though the inference threads may be idle. A sleep that wakes late by
N ms says the loop was held N ms.
"""

from __future__ import annotations

import asyncio
import time

from signaling.metrics import LOOP_LAG


async def watch_loop_lag(interval_s: float = 0.05) -> None:
    """Sleep `interval_s` over and over; observe how late each wake-up is. Runs until cancelled."""
    while True:
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        LOOP_LAG.observe(max(0.0, time.monotonic() - due))
