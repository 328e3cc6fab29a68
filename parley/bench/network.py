"""`parley bench network`: calls over a lossy, jittery path, and a silent call behind a NAT.

loss: the same calls (the two benchmark sentences each) over a clean path and
over paths that lose and delay the caller's RTP packets (parley.impairment),
interleaved call by call against one server; word error rate and voice-to-voice
for each, as ratios to the clean path.

nat: a silent call through a TCP proxy that drops flows idle for 60 s
(parley.idle_proxy) in front of the server's /ws, for 3 minutes, with the
server's keepalive as configured (pings every 30 s); then the call is used. And
the control: pings every 90 s, which the NAT must cut.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from parley.bench.results import BENCH_ENV, ms, percentile, speaker_files, write_results
from parley.impairment import Impairment
from parley.server_process import server_process
from parley.services.redis_server import private_redis

# What the two speakers of bench/audio/stereo_diarization.wav say (bench/audio/README.md).
SPEAKER_TEXT = (
    "He began a confused complaint against the wizard, who had vanished behind the curtain on the left.",
    "The horizon seems extremely distant.",
)


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Substitutions, deletions and insertions between the two texts (case and punctuation aside),
    and the reference's word count: their ratio is the word error rate."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1], len(ref)


@contextlib.asynccontextmanager
async def _server(env: dict[str, str]) -> AsyncIterator[str]:
    """`parley serve` with `env`, on a Redis of its own (the default one may be another run's)."""
    async with private_redis() as redis, server_process({**env, "REDIS_URL": redis.url}) as url:
        yield url


def _variants(loss: float, jitter_ms: float) -> dict[str, Impairment | None]:
    return {
        "clean": None,
        f"loss_{loss:g}": Impairment(loss=loss),
        f"jitter_{jitter_ms:g}ms": Impairment(jitter_ms=jitter_ms),
        f"loss_{loss:g}_jitter_{jitter_ms:g}ms": Impairment(loss=loss, jitter_ms=jitter_ms),
    }


def _figures(reports: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [(turn, SPEAKER_TEXT[i]) for report in reports for i, turn in enumerate(report["turns"])]
    errors = [word_errors(reference, turn["transcript"]) for turn, reference in turns]
    v2v = [turn["voice_to_voice_ms"] for turn, _ in turns if turn["voice_to_voice_ms"] is not None]
    impaired = [report["impairment"] for report in reports if "impairment" in report]
    return {
        "turns": len(turns),
        "answered": len(v2v),
        "wer": round(sum(e for e, _ in errors) / sum(n for _, n in errors), 3),
        "voice_to_voice_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95)},
        "rtp_packets": sum(i["rtp_packets"] for i in impaired),
        "dropped": sum(i["dropped"] for i in impaired),
        "reordered": sum(i["reordered"] for i in impaired),
        "transcripts": [turn["transcript"] for turn, _ in turns],
    }


async def bench_loss(args: argparse.Namespace) -> None:
    """WER and voice-to-voice over a clean path and impaired ones, the same calls interleaved."""
    from parley.call_client import run_call

    from parley.settings import load_settings

    env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": "40"}
    if args.jitter_buffer is not None:
        env["PARLEY_MEDIA_JITTER_BUFFER_PACKETS"] = str(args.jitter_buffer)
    buffer = load_settings(environ=env).media.jitter_buffer_packets
    variants = _variants(args.loss, args.jitter_ms)
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = speaker_files(Path(tmp))
        async with _server(env) as url:
            for call in range(args.calls):
                for name, impairment in variants.items():
                    seeded = impairment and Impairment(
                        loss=impairment.loss, jitter_ms=impairment.jitter_ms, seed=args.seed + call
                    )
                    report = await run_call(url, files, out_dir=Path(tmp) / name / str(call), impairment=seeded)
                    reports[name].append(report)
                    print(f"call {call + 1}/{args.calls} {name}: " + " | ".join(
                        f"{t['transcript']!r} {t['voice_to_voice_ms']} ms" for t in report["turns"]
                    ))
    results = {name: _figures(done) for name, done in reports.items()}
    clean = results["clean"]
    for figures in results.values():
        figures["wer_minus_clean"] = round(figures["wer"] - clean["wer"], 3)
        p50, base = figures["voice_to_voice_ms"]["p50"], clean["voice_to_voice_ms"]["p50"]
        figures["v2v_p50_vs_clean"] = round(p50 / base, 2) if p50 and base else None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "network",
        "when": when,
        "calls_per_variant": args.calls,
        "seed": args.seed,
        "server_jitter_buffer_packets": buffer,
        "settings": {**env, "machine_cores": os.cpu_count()},
        "variants": results,
    }
    rows = [
        f"| {when} | {buffer or 'aiortc'} | {name} | {f['answered']}/{f['turns']} | {f['dropped']}/{f['rtp_packets']} | {f['reordered']} | "
        f"{f['wer']:.3f} | {f['wer_minus_clean']:+.3f} | {ms(f['voice_to_voice_ms']['p50'])} | "
        f"{ms(f['voice_to_voice_ms']['p95'])} | {f['v2v_p50_vs_clean']} |"
        for name, f in results.items()
    ]
    header = (
        "# Network benchmark: a lossy, jittery path for the caller's audio\n\n"
        "`parley bench network loss`: the same calls (the two benchmark sentences each) over a clean path and"
        " over paths that drop the caller's RTP packets and delay each by a random 0..J ms (so they arrive out of"
        " order), interleaved call by call against one server; temperature 0, seed 42, replies capped at 40"
        " tokens. WER over all the turns of a variant; voice-to-voice at the client. Server buffer: the most"
        " packets the server's jitter buffer holds while one is missing ([media] jitter_buffer_packets), or"
        " aiortc's own buffer.\n\n"
        "| when | server buffer | variant | answered | RTP dropped/sent | reordered | WER | WER - clean | v2v p50 | v2v p95 |"
        " v2v p50 vs clean |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("network", document, "\n".join(rows), header)


async def _silent_call(url: str, idle_s: float, minutes: float, out_dir: Path, speech: str) -> dict[str, Any]:
    """A call through an idle-dropping proxy to `url`, silent for `minutes`, then used if still up."""
    from parley.call_client import CallClient
    from parley.idle_proxy import IdleDroppingProxy

    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with IdleDroppingProxy((host, int(port)), idle_s=idle_s).running() as nat:
        # No client pings (a browser sends none): only the server's keepalive crosses the NAT.
        async with CallClient(nat.url, ping_interval_s=None) as client:
            started = time.monotonic()
            deadline = started + 60 * minutes
            while time.monotonic() < deadline and not client.dropped:
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            outcome: dict[str, Any] = {
                "silent_s": round(time.monotonic() - started, 1),
                "survived": not client.dropped,
                "nat_drops": nat.dropped,
                "server_pings": sum(1 for _, m in client.messages if m["type"] == "ping"),
            }
            if client.dropped:
                return outcome
            outcome["ping_answered"] = await client.ping()
            out_dir.mkdir(parents=True, exist_ok=True)
            turn, _ = await client.talk(speech, out_dir=out_dir, index=1)
            outcome["transcript"] = turn.transcript
            outcome["answered"] = bool(turn.reply_text)
            outcome["connections"] = nat.flows
            return outcome


async def bench_nat(args: argparse.Namespace) -> None:
    """A silent call behind a NAT that drops flows idle for `--idle-s`, with the keepalive as
    configured, then the control with pings slower than the NAT."""
    from parley.settings import load_settings

    ping_s = load_settings().signaling.ping_interval_s
    slow_ping_s = 1.5 * args.idle_s
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = speaker_files(Path(tmp))
        for name, interval, minutes in (("keepalive", ping_s, args.minutes), ("control", slow_ping_s, args.minutes)):
            env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": "40", "PARLEY_SIGNALING_PING_INTERVAL_S": str(interval)}
            async with _server(env) as url:
                print(f"{name}: pings every {interval:g} s, NAT drops flows idle for {args.idle_s:g} s, {minutes:g} min")
                outcome = await _silent_call(url, args.idle_s, minutes, Path(tmp) / name, files[1])
            results[name] = {"ping_interval_s": interval, **outcome}
            print(results[name])
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {"benchmark": "nat", "when": when, "nat_idle_s": args.idle_s, "minutes": args.minutes, **results}
    keep, control = results["keepalive"], results["control"]
    row = (
        f"| {when} | {args.idle_s:g} | {args.minutes:g} | {keep['ping_interval_s']:g} | {keep['survived']} | "
        f"{keep.get('ping_answered')} | {keep.get('answered')} | {control['ping_interval_s']:g} | "
        f"{control['survived']} after {control['silent_s']:.0f} s |"
    )
    header = (
        "# NAT benchmark: a silent call behind a proxy that drops idle TCP flows\n\n"
        "`parley bench network nat`: one call through parley.idle_proxy in front of /ws (RTP goes directly),"
        " the caller silent and sending no WebSocket pings of its own (as a browser), for the given minutes;"
        " then a protocol ping and a spoken sentence. The control: the server pinging less often than the NAT"
        " forgives.\n\n"
        "| when | NAT idle s | minutes | server ping s | survived | ping answered | sentence answered |"
        " control ping s | control survived |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("nat", document, row, header)


async def bench_network(args: argparse.Namespace) -> None:
    """`parley bench network {loss,nat,all}`."""
    if args.mode in ("loss", "all"):
        await bench_loss(args)
    if args.mode in ("nat", "all"):
        await bench_nat(args)
