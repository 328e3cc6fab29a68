"""`parley bench ...`: benchmarks that write their figures to bench/results/ (JSON, a markdown row, a plot).

One module per benchmark; parley.bench.results is what they share.
"""

from __future__ import annotations

import argparse


async def run_bench(args: argparse.Namespace) -> None:
    """Run the benchmark `args.bench` names."""
    if args.bench == "asr":
        from parley.bench.asr import bench_asr

        await bench_asr(args)
    elif args.bench == "call":
        from parley.bench.call import bench_call

        await bench_call(args)
    elif args.bench == "llm":
        from parley.bench.llm import bench_llm

        await bench_llm(args)
    elif args.bench == "barge-in":
        from parley.bench.barge_in import bench_barge_in

        await bench_barge_in(args)
    elif args.bench == "long-call":
        from parley.bench.long_call import bench_long_call

        await bench_long_call(args)
    elif args.bench == "load":
        from parley.bench.load import bench_load

        await bench_load(args)
    elif args.bench == "failover":
        from parley.bench.failover import bench_failover

        await bench_failover(args)
    elif args.bench == "fuzz":
        from parley.bench.fuzz import bench_fuzz

        await bench_fuzz(args)
    elif args.bench == "media":
        from parley.bench.media import bench_media

        await bench_media(args)
    elif args.bench == "network":
        from parley.bench.network import bench_network

        await bench_network(args)
    elif args.bench == "pipecat":
        from parley.bench.pipecat import bench_pipecat

        await bench_pipecat(args)
    elif args.bench == "quality":
        from parley.bench.quality import bench_quality

        await bench_quality(args)
    elif args.bench == "turns":
        from parley.bench.turns import bench_turns

        await bench_turns(args)
