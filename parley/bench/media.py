"""What a connected call costs the server while nobody speaks (`parley bench media`).

Most of a call's life is quiet: the caller listens or thinks, the bot waits. Every
20 ms, both ways, aiortc still carries a packet: the caller's is decoded, resampled
and put to the VAD; the bot's is made from silence. This benchmark connects K calls
whose microphone sends Opus silence (the load harness's caller, which encodes
nothing), lets them settle, and reads the server's CPU time over a window, against the
same server with no call. Variants run one after another, each on a
server of its own, in one run: who encodes the bot's voice ([media] voice_encoder), who
decodes the caller's, and DTX each way. Receiving the caller's packets cost the server
most (variant caller_dtx: the caller's encoder in DTX, [media] caller_dtx, the gaps
filled on the server). Sending a quiet packet every 400 ms instead of every 20 ms saved
little while the track still woke every 20 ms (0.0464 of a core a call against 0.0476,
2026-11-27); the bot's DTX as it is now ([media] bot_dtx, variant bot_dtx) sleeps
between packets, and spares the callers too: this process, which runs every call's
client, reports its own CPU beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from typing import Any

import httpx

from parley.bench.load import CallerAddresses, CpuMeter, bench_server
from parley.bench.load_call import LoadCall
from parley.bench.results import BENCH_ENV, write_results
from parley.services.redis_server import private_redis

_NO_DTX = {"PARLEY_MEDIA_CALLER_DTX": "false"}
VARIANTS: dict[str, dict[str, str]] = {
    "aiortc_encodes": {"PARLEY_MEDIA_VOICE_ENCODER": "aiortc", "PARLEY_MEDIA_DECODER": "thread", **_NO_DTX},
    "parley_encodes": {"PARLEY_MEDIA_VOICE_ENCODER": "parley", "PARLEY_MEDIA_DECODER": "thread", **_NO_DTX},
    "loop_decodes": {"PARLEY_MEDIA_VOICE_ENCODER": "parley", "PARLEY_MEDIA_DECODER": "loop", **_NO_DTX},
    # The caller's encoder in DTX while silent (the load caller does as libopus does).
    "caller_dtx": {"PARLEY_MEDIA_VOICE_ENCODER": "parley", "PARLEY_MEDIA_DECODER": "loop",
                   "PARLEY_MEDIA_BOT_DTX": "false"},
    # The default: both ends in DTX while quiet.
    "bot_dtx": {"PARLEY_MEDIA_VOICE_ENCODER": "parley", "PARLEY_MEDIA_DECODER": "loop"},
}
GOAL_CORES_PER_CALL = 0.02

HEADER = (
    "# Media benchmark: what a connected, silent call costs the server\n\n"
    "`parley bench media`: K calls connected, nobody speaking; the server's CPU over a window,"
    " less the same server with no call, per call. Variants: who encodes the bot's voice"
    " ([media] voice_encoder). Goal: at most 0.02 of a core a call.\n\n"
    "| when | calls | window s | variant | server idle cores | with calls | cores a call | vs aiortc_encodes"
    " | callers' cores a call |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)


async def _calls_up(url: str, calls: int, deadline_s: float = 30.0) -> None:
    """Wait until the server counts `calls` voice calls."""
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + deadline_s
        while (await http.get(f"{url}/stats")).json()["voice_calls"] < calls:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not count {calls} voice calls within {deadline_s:g} s")
            await asyncio.sleep(0.2)


async def _cores(meter: CpuMeter, seconds: float) -> tuple[float, float]:
    """Mean cores the server's process tree, and this process (the callers), used over the next `seconds`."""
    figures: dict[str, Any] = {}
    with meter.measure(figures):
        await asyncio.sleep(seconds)
    return figures["server_cores"], figures["client_cores"]


async def idle_cost(url: str, meter: CpuMeter, calls: int, window_s: float, settle_s: float) -> dict[str, Any]:
    """The server's cores with no call, then with `calls` silent calls connected, and per call."""
    await asyncio.sleep(settle_s)  # the server's start-up work (models warming) out of the way
    idle, _ = await _cores(meter, window_s)
    addresses = CallerAddresses()
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(calls):
            await stack.enter_async_context(LoadCall(url, local_address=addresses.take(), reply_timeout_s=20.0))
        await _calls_up(url, calls)
        await asyncio.sleep(settle_s)  # ICE and DTLS done, the first packets' one-off work past
        loaded, callers = await _cores(meter, window_s)
    return {
        "server_idle_cores": round(idle, 4),
        "server_cores_with_calls": round(loaded, 4),
        "cores_per_call": round((loaded - idle) / calls, 4),
        "caller_cores_per_call": round(callers / calls, 4),
    }


async def bench_media(args: argparse.Namespace) -> None:
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    results: dict[str, dict[str, Any]] = {}
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    async with private_redis() as redis:
        for name in names:
            env = {**BENCH_ENV, "REDIS_URL": redis.url, "PARLEY_ADMISSION_MAX_CALLS": str(args.calls + 1),
                   "PARLEY_ADMISSION_MAX_CALLS_PER_IP": str(args.calls + 1), **VARIANTS[name]}
            async with bench_server(env) as (url, meter):
                print(f"media: {name}, {args.calls} silent calls")
                results[name] = await idle_cost(url, meter, args.calls, args.window_s, args.settle_s)
    base = results.get("aiortc_encodes", {}).get("cores_per_call")
    for figures in results.values():
        figures["ratio_to_aiortc_encodes"] = round(figures["cores_per_call"] / base, 2) if base else None
    document = {"benchmark": "media", "when": when, "machine_cores": os.cpu_count(), "calls": args.calls,
                "window_s": args.window_s, "goal_cores_per_call": GOAL_CORES_PER_CALL, "variants": results}
    rows = [f"| {when} | {args.calls} | {args.window_s:g} | {name} | {f['server_idle_cores']} |"
            f" {f['server_cores_with_calls']} | {f['cores_per_call']} | {f['ratio_to_aiortc_encodes']} |"
            f" {f['caller_cores_per_call']} |"
            for name, f in results.items()]
    write_results("media", document, "\n".join(rows), HEADER, copy_to=args.json)
