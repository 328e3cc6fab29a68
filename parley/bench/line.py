"""`parley bench load line`: callers at a full server, each trying until it gets a line.

N callers arrive a moment apart at a server with fewer lines; each, once it has a line, says its
sentences and hangs up. Two ways of waiting, one after the other on the same server:
- `line`: in the service's waiting line (`wait_in_line` on the offer, as the page does): told its
  place, the caller comes back on the same session each `retry_after` and is served in its turn;
- `backoff`: the page's way without a place: `retry_after` doubled after each refusal in a row,
  with jitter, each try a new session.
Per variant: how long callers waited for a line (p50/p95/max), how many were overtaken by a
caller who came later, offers a caller made, when the last got its line, and the calls' own
voice-to-voice figures.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from parley.bench.load import CallerAddresses, CallRecord, CpuMeter, rotated, turn_figures
from parley.bench.load_call import EncodedSpeech, LoadCall
from parley.bench.results import percentile
from parley.errors import CallFailed, CallRefused

# How long a caller keeps trying for a line before it gives up, in the line benchmark.
LINE_PATIENCE_S = 300.0
# The page's backoff without a place in line (web/app.js lineBusy): retry_after doubled after each
# refusal in a row, at most 8 times, at most a minute, times 0.75-1.25.
BACKOFF_MAX_FACTOR, BACKOFF_MAX_S = 8, 60.0


@dataclass(slots=True)
class LineCaller:
    """One caller of the line benchmark: when it first asked for a line, when it got one, and how
    many offers that took."""

    arrived: float
    admitted: float | None = None
    offers: int = 0
    record: CallRecord | None = None


async def line_caller(url: str, address: str, speeches: list[EncodedSpeech], *, wait_in_line: bool) -> LineCaller:
    """Keep asking for a line until given one, then say the sentences. `wait_in_line`: hold a place
    in the service's line (CallClient's line_patience_s); otherwise the page's backoff, each try a new
    session (without a place in line, which session asks does not matter)."""
    caller = LineCaller(time.monotonic())
    attempt = 0
    while caller.admitted is None:
        attempt += 1
        record = CallRecord(time.monotonic())
        try:
            async with LoadCall(url, local_address=address, reply_timeout_s=20.0,
                                line_patience_s=LINE_PATIENCE_S if wait_in_line else 0.0) as call:
                caller.admitted, record.admitted = time.monotonic(), True
                caller.offers += len(call.line_positions) + 1
                for speech in speeches:
                    record.turns.append(await call.say(speech))
        except CallRefused as refused:
            caller.offers += 1
            if wait_in_line or refused.code != "over_capacity" or time.monotonic() - caller.arrived > LINE_PATIENCE_S:
                record.refused, record.retry_after_s = refused.code, refused.retry_after_s
                caller.record = record
                return caller
            base = (refused.retry_after_s or 5.0) * min(2 ** (attempt - 1), BACKOFF_MAX_FACTOR)
            await asyncio.sleep(min(base, BACKOFF_MAX_S) * random.uniform(0.75, 1.25))
            continue
        except CallFailed as failed:
            record.failure = str(failed)
        caller.record = record
    return caller


def _overtaken(callers: list[LineCaller]) -> int:
    """Callers who got a line after someone who asked later did."""
    admitted = [c for c in callers if c.admitted is not None]
    return sum(any(o.arrived > c.arrived and o.admitted < c.admitted for o in admitted) for c in admitted)


async def line(url: str, meter: CpuMeter, speeches: list[EncodedSpeech], *, callers: int, gap_s: float,
               sentences: int, variants: list[str]) -> dict[str, Any]:
    """`callers` callers arriving `gap_s` apart at a server with fewer lines, each keeping at it until
    it gets one and then saying `sentences` sentences: waiting in line against the page's blind
    backoff, one variant after the other on the same server."""
    if unknown := set(variants) - {"line", "backoff"}:
        raise ValueError(f"unknown line variants {sorted(unknown)}: line, backoff")
    results: dict[str, Any] = {}
    addresses = CallerAddresses()
    for name in variants:
        figures: dict[str, Any] = {"callers": callers, "gap_s": gap_s, "sentences": sentences}
        with meter.measure(figures):
            tasks = []
            for i in range(callers):
                order = rotated(speeches, i)
                said = [order[n % len(order)] for n in range(sentences)]
                tasks.append(asyncio.create_task(line_caller(url, addresses.take(), said, wait_in_line=name == "line")))
                await asyncio.sleep(gap_s)
            done = await asyncio.gather(*tasks)
        waits = [c.admitted - c.arrived for c in done if c.admitted is not None]
        records = [c.record for c in done if c.record is not None]
        figures.update({
            "admitted": len(waits),
            "gave_up_or_failed": callers - len(waits),
            "wait_s_p50": _rounded(percentile(waits, 50)),
            "wait_s_p95": _rounded(percentile(waits, 95)),
            "wait_s_max": _rounded(max(waits, default=None)),
            "overtaken": _overtaken(list(done)),
            "offers_per_caller": round(sum(c.offers for c in done) / callers, 1),
            "last_admitted_s": _rounded(max((c.admitted for c in done if c.admitted), default=None) - done[0].arrived
                                        if waits else None),
            **turn_figures(records),
        })
        results[name] = figures
        print(f"line {name}:", figures)
    return results


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
