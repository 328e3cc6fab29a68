"""`parley bench barge-in`: how soon the bot falls silent when the caller talks over it."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from parley.bench.results import BENCH_ENV, add_ratios, ms, percentile, speaker_files, write_results
from parley.server_process import server_process


# Each variant: the server's environment and the client's jitter buffer (0: aiortc's own, 4 packets held).
BARGE_IN_VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "aiortc_jitter_4": ({"PARLEY_MEDIA_JITTER_BUFFER_PACKETS": "0"}, 0),
    "jitter_1": ({"PARLEY_MEDIA_JITTER_BUFFER_PACKETS": "1"}, 1),
}


async def bench_barge_in(args: argparse.Namespace) -> None:
    """How soon the bot falls silent when the caller talks over it, with aiortc's jitter buffer and ours.

    Each call says one sentence, then the other one second into the bot's reply; the figure is
    measured in the client's recording, from the onset of the interrupting speech to the bot's
    last voiced frame.
    """
    from parley.call_client import run_call

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = speaker_files(Path(tmp))
        for name, (change, client_packets) in BARGE_IN_VARIANTS.items():
            print(f"variant {name}")
            stops: list[float] = []
            async with server_process({**BENCH_ENV, **change}) as url:
                for i in range(args.calls):
                    report = await run_call(
                        url, files, out_dir=Path(tmp) / name / f"call-{i}", barge_in_after_s=1.0,
                        jitter_buffer_packets=client_packets,
                    )
                    stop = report["turns"][0]["barge_in_stop_ms"]
                    print(f"call {i + 1}/{args.calls}: bot silent after {stop} ms")
                    if stop is not None:
                        stops.append(stop)
            results[name] = {
                "calls": args.calls,
                "measured": len(stops),
                "stop_ms": {"p50": percentile(stops, 50), "p95": percentile(stops, 95), "max": max(stops, default=None)},
                "within_200ms": sum(s <= 200 for s in stops),
            }
    add_ratios(results, "aiortc_jitter_4", lambda f: f["stop_ms"]["p50"], "p50_vs_aiortc")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "barge_in",
        "when": when,
        "settings": {**BENCH_ENV, "barge_in_after_s": 1.0, "machine_cores": os.cpu_count()},
        "variants": results,
    }
    rows = [
        f"| {when} | {name} | {f['measured']}/{f['calls']} | {ms(f['stop_ms']['p50'])} | {ms(f['stop_ms']['p95'])} |"
        f" {ms(f['stop_ms']['max'])} | {f['within_200ms']}/{f['measured']} | {f['p50_vs_aiortc']} |"
        for name, f in results.items()
    ]
    header = (
        "# Barge-in benchmark: from the caller's first word to the bot's silence (ms)\n\n"
        "`parley bench barge-in`: calls one after another; the second sentence starts 1 s into the bot's reply;"
        " measured in the headless client's recording from the onset of that speech to the bot's last voiced"
        " frame. Variants set the jitter buffer (received audio packets held) on both ends, in the same run.\n\n"
        "| when | variant | measured | p50 | p95 | max | within 200 ms | p50 vs aiortc's 4 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("barge_in", document, "\n".join(rows), header)
