"""The event-loop lag watch: a loop held by other work shows as late wake-ups in /metrics."""

import asyncio
import time

from signaling.loop_lag import watch_loop_lag
from signaling.metrics import LOOP_LAG


def _observed() -> tuple[float, float]:
    """(count, sum) of the lag histogram so far."""
    values = {s.name: s.value for metric in LOOP_LAG.collect() for s in metric.samples}
    return values["parley_event_loop_lag_seconds_count"], values["parley_event_loop_lag_seconds_sum"]


async def test_a_loop_held_for_200_ms_is_observed_as_lag():
    count, total = _observed()
    watching = asyncio.create_task(watch_loop_lag(interval_s=0.01))
    await asyncio.sleep(0.05)  # the watch sleeps on the loop
    time.sleep(0.2)  # the loop is held: nothing on it runs
    await asyncio.sleep(0.05)
    watching.cancel()
    new_count, new_total = _observed()
    assert new_count > count
    # The wake-up due during the hold came at least 150 ms late (timers may fire early by a tick).
    assert new_total - total >= 0.15
