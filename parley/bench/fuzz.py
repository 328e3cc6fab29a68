"""`parley bench fuzz`: thousands of fuzzed protocol messages against a real server.

hypothesis draws the examples (parley.bench.fuzz_messages), seeded so that runs compare; the
client (parley.bench.fuzz_client) sends them over a few long-lived sockets and checks each
socket still answers a ping afterwards. Figures: dead sockets, tracebacks in the server's log,
`internal_error` answers (goal: 0 of each), documented answers that did not come, answers by
code, closes by code, and messages a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.bench.results import BENCH_ENV, write_results

# Reasons and messages quoted in the results, at most (the counts are complete).
SAMPLES = 10


@dataclass(slots=True)
class Tally:
    """Outcomes added up over a run."""

    examples: int = 0
    frames: int = 0
    bytes_sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    dead: list[str] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)
    undocumented: list[str] = field(default_factory=list)

    def add(self, example, outcome) -> None:
        self.examples += bool(example.frames)
        self.frames += len(example.frames)
        self.bytes_sent += sum(frame.size for frame in example.frames)
        self.kinds.update(frame.kind for frame in example.frames)
        self.received.update(outcome.received)
        self.closes.update(outcome.closes)
        self.dead += outcome.dead
        self.unmet += outcome.unmet
        self.undocumented += outcome.undocumented
        if self.examples % 500 == 0 and example.frames:
            print(f"{self.examples} examples: {len(self.dead)} dead sockets,"
                  f" {self.received['internal_error']} internal errors, {len(self.unmet)} unmet answers")


async def bench_fuzz(args: argparse.Namespace) -> None:
    """`args.examples` examples against a server started for the run (its own Redis and LLM)."""
    from parley.bench.fuzz_client import FUZZ_SERVER_ENV, fuzz, tracebacks
    from parley.bench.fuzz_messages import real_offer
    from parley.server_process import server_process

    sdp = await real_offer()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="parley-fuzz-") as tmp:
        log_path = Path(tmp) / "server.log"
        async with server_process({**BENCH_ENV, **FUZZ_SERVER_ENV}, log_path=str(log_path)) as url:
            started = time.monotonic()
            client = await asyncio.to_thread(
                fuzz, url, sdp, examples=args.examples, seed=args.seed, sockets=args.sockets, each=tally.add
            )
            elapsed = time.monotonic() - started
        found = tracebacks(log_path.read_text(errors="replace"))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    figures: dict[str, Any] = {
        "benchmark": "fuzz",
        "when": when,
        "settings": {
            "examples": args.examples, "seed": args.seed, "sockets": args.sockets, **BENCH_ENV, **FUZZ_SERVER_ENV,
            "machine_cores": os.cpu_count(),
        },
        "examples": tally.examples,
        "frames_sent": tally.frames,
        "bytes_sent": tally.bytes_sent,
        "sockets_opened": client.opened,
        "dead_sockets": len(tally.dead),
        "tracebacks": len(found),
        "internal_errors": tally.received["internal_error"],
        "unmet_answers": len(tally.unmet),
        "undocumented_messages": len(tally.undocumented),
        "frames_per_s": round(tally.frames / elapsed, 1),
        "elapsed_s": round(elapsed, 1),
        "answers": dict(tally.received.most_common()),
        "closes": {str(code): n for code, n in sorted(tally.closes.items())},
        "frames_by_kind": dict(tally.kinds.most_common()),
        "samples": {
            "dead": tally.dead[:SAMPLES],
            "tracebacks": dict(Counter(found).most_common(SAMPLES)),
            "unmet": tally.unmet[:SAMPLES],
            "undocumented": tally.undocumented[:SAMPLES],
        },
    }
    row = (
        f"| {when} | {tally.examples} | {tally.frames} | {client.opened} | {len(tally.dead)} | {len(found)} |"
        f" {figures['internal_errors']} | {len(tally.unmet)} | {figures['frames_per_s']:.0f} | {args.seed} |"
    )
    header = (
        "# parley bench fuzz\n\n"
        "`parley bench fuzz`: hypothesis draws examples of one to four frames (every client message with wrong"
        " values, wrong types and unknown fields; unknown types; not JSON; not an object; binary; around and past"
        " the 64 KiB limit; nested past what the decoder reads; out of order; first messages of sockets opened to"
        " resume; mutations of a real SDP offer) and sends them over 3 long-lived sockets (a fresh one for"
        " examples whose answers depend on it) to a real server with its own Redis and llama-server. After each"
        " example the socket must answer a ping; a socket the server closed must have been closed for the reason"
        " docs/protocol.md gives, and a new one must answer. Goal: 0 dead sockets, 0 tracebacks, 0 internal errors."
        " `unmet`: frames whose documented answer did not come. Frames/s include each example's ping round trip.\n\n"
        "| when | examples | frames | sockets opened | dead sockets | tracebacks | internal_error | unmet | frames/s"
        " | seed |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("fuzz", figures, row, header, copy_to=args.json)
