"""`parley bench failover`: calls through a local cluster while replicas are killed under them.

A cluster of three replicas behind haproxy (parley.services.cluster). Each call says
three sentences; at a random moment of each call (seeded, so runs compare), the
replica serving it is killed with SIGKILL and a replacement is started. Figures:
caller turns lost (a final transcript the client received whose turn is not in
Redis; goal 0), turns said into a replica as it died (no final transcript came: the
caller must say them again), reconnects, resume time p50/p95 (from the drop to the
bot's audio flowing again; goal p95 ≤ 2 s), events replayed, and replies answered
again after a move.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from parley.bench.results import BENCH_ENV, ms, percentile, speaker_files, write_results

REPLICAS = 3


async def bench_failover(args: argparse.Namespace) -> None:
    """`args.calls` calls, one after another, each with its serving replica killed at a random moment."""
    from parley.call_client import CallClient
    from parley.server_process import free_port
    from parley.services.cluster import Cluster, ClusterConfig
    from parley.services.haproxy import BalancerConfig

    rng = random.Random(args.seed)
    state = Path(tempfile.mkdtemp(prefix="parley-failover-", dir="/tmp"))
    heard_ids: list[str] = []
    unheard = 0
    resumes: list[float] = []
    replayed = restarts = kills = 0
    lost: list[str] = []
    try:
        config = ClusterConfig(replicas=REPLICAS, state_dir=str(state), balancer=BalancerConfig(port=free_port()))
        async with Cluster(config, env=BENCH_ENV) as cluster:
            files = speaker_files(state)
            sentences = [files[0], files[1], files[0]]
            for index in range(args.calls):
                kill_after_s = rng.uniform(1.0, 12.0)
                out_dir = state / f"call-{index}"
                out_dir.mkdir()
                async with CallClient(cluster.url) as client:
                    killer = asyncio.create_task(_kill_serving(cluster, client, kill_after_s))
                    for n, path in enumerate(sentences, start=1):
                        report, _ = await client.talk(path, out_dir=out_dir, index=n)
                        unheard += report.dropped and not report.transcript
                    killed = await killer
                    kills += killed
                    heard = {m["turn_id"] for _, m in client.messages if m["type"] == "transcript" and m["final"]}
                    heard_ids += heard
                    stored = await _stored_user_turns(cluster.redis_url, client.session["dialog_id"])
                    lost += sorted(heard - stored)
                    resumes += [r.resume_ms for r in client.reconnects]
                    replayed += sum(r.replayed for r in client.reconnects)
                    restarts += sum(1 for _, m in client.messages if m["type"] == "reply" and m.get("restart"))
                print(
                    f"call {index + 1}/{args.calls}: killed {'at %.1f s' % kill_after_s if killed else 'nothing (call over)'},"
                    f" reconnects {len(client.reconnects)}, turns lost so far {len(lost)}"
                )
                await cluster.replace_dead()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    figures: dict[str, Any] = {
        "calls": args.calls,
        "replicas": REPLICAS,
        "replicas_killed": kills,
        "caller_turns_heard": len(heard_ids),
        "caller_turns_lost": len(lost),
        "turns_said_into_a_dying_replica": unheard,
        "reconnects": len(resumes),
        "resume_ms_p50": percentile(resumes, 50),
        "resume_ms_p95": percentile(resumes, 95),
        "resume_ms_max": max(resumes, default=None),
        "events_replayed": replayed,
        "replies_answered_again": restarts,
    }
    row = (
        f"| {args.calls} | {kills} | {len(heard_ids)} | {len(lost)} | {unheard} | {len(resumes)} |"
        f" {ms(figures['resume_ms_p50'])} | {ms(figures['resume_ms_p95'])} | {replayed} | {restarts} |"
    )
    header = (
        "# parley bench failover\n\nCalls through haproxy and 3 replicas; each call's replica killed (SIGKILL) at a"
        " random moment.\n\n| calls | killed | caller turns heard | lost | said into a dying replica | reconnects |"
        " resume p50 ms | resume p95 ms | events replayed | replies answered again |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("failover", figures, row, header, copy_to=args.json)


async def _kill_serving(cluster, client, after_s: float) -> bool:
    """SIGKILL the replica serving `client`'s session `after_s` into the call; False if it ended first."""
    await asyncio.sleep(after_s)
    if client.dropped:
        return False
    os.kill((await cluster.serving(client.session["session_id"])).pid, signal.SIGKILL)
    return True


async def _stored_user_turns(redis_url: str, dialog_id: str) -> set[str]:
    from pipeline.dialog_store import DialogStore

    redis = aioredis.from_url(redis_url)
    try:
        return {t.turn_id for t in await DialogStore(redis).turns(dialog_id) if t.role == "user"}
    finally:
        await redis.aclose()
