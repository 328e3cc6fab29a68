"""`parley bench ...`: benchmarks that write their figures to bench/results/ (JSON plus a markdown row).

Benchmarks run with temperature 0 and a fixed seed, so the reply, and with it the
time to the first sentence, is the same from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from media.audio_file import read_audio, write_wav
from parley.server_process import server_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SPEECH = ROOT / "bench" / "audio" / "stereo_diarization.wav"
BENCH_ENV = {"PARLEY_LLM_TEMPERATURE": "0", "PARLEY_LLM_SEED": "42"}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    return round(float(np.percentile(values, q)), 1) if values else None


def add_ratios(results: dict[str, dict[str, Any]], base: str, figure, key: str) -> None:
    """Store each variant's `figure(...)` as a ratio to the `base` variant's, under `key`."""
    reference = figure(results[base])
    for figures in results.values():
        value = figure(figures)
        figures[key] = round(value / reference, 2) if value and reference else None


def write_results(name: str, figures: dict[str, Any], row: str, header: str) -> Path:
    """bench/results/<name>.json, and a row appended to bench/results/<name>.md; prints the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    table = RESULTS / f"{name}.md"
    if not table.exists():
        table.write_text(header)
    with table.open("a") as out:
        out.write(row + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written to {path}")
    return path


async def _call_figures(url: str, files: list[str], calls: int, out_dir: Path) -> dict[str, Any]:
    from parley.call_client import run_call

    turns = []
    for i in range(calls):
        report = await run_call(url, files, out_dir=out_dir / f"call-{i}")
        turns += report["turns"]
        print(f"call {i + 1}/{calls}: " + ", ".join(f"{t['voice_to_voice_ms']} ms" for t in report["turns"]))
    v2v = [t["voice_to_voice_ms"] for t in turns if t["voice_to_voice_ms"] is not None]
    stages: dict[str, list[float]] = {}
    for turn in turns:
        for stage, ms in turn["stages_ms"].items():
            stages.setdefault(stage, []).append(ms)
    return {
        "turns": len(turns),
        "answered": len(v2v),
        "voice_to_voice_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95)},
        "stages_ms_p50": {stage: percentile(values, 50) for stage, values in sorted(stages.items())},
    }


async def bench_call(args: argparse.Namespace) -> None:
    """Voice-to-voice over calls one after another; with --compare, the same against a changed setting."""
    # Replies capped at 40 tokens: the first sentence, which is all the latency depends on,
    # still completes, and ten calls take minutes rather than ten.
    env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": "40"}
    variants: dict[str, dict[str, str]] = {"default": {}}
    for change in args.compare or []:
        key, _, value = change.partition("=")
        variants[change] = {key: value}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = _speaker_files(Path(tmp))
        for name, change in variants.items():
            print(f"variant {name}")
            async with contextlib.AsyncExitStack() as stack:
                url = args.server if args.server and not change else await stack.enter_async_context(
                    server_process({**env, **change})
                )
                results[name] = await _call_figures(url, files, args.calls, Path(tmp) / name)
    add_ratios(results, "default", lambda f: f["voice_to_voice_ms"]["p50"], "v2v_p50_vs_default")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "call",
        "when": when,
        "calls_per_variant": args.calls,
        "settings": {**env, "machine_cores": os.cpu_count()},
        "variants": results,
    }
    rows = []
    for name, f in results.items():
        p50 = f["stages_ms_p50"]
        rows.append(
            f"| {when} | {name} | {f['answered']}/{f['turns']} | {_ms(f['voice_to_voice_ms']['p50'])} | "
            f"{_ms(f['voice_to_voice_ms']['p95'])} | {f['v2v_p50_vs_default']} | {_ms(p50.get('asr'))} | "
            f"{_ms(p50.get('llm_first_token'))} | {_ms(p50.get('first_sentence'))} | "
            f"{_ms(p50.get('tts_first_audio'))} | {_ms(p50.get('end_of_turn_to_first_audio'))} |"
        )
    header = (
        "# Call benchmark: voice-to-voice at the client (ms)\n\n"
        "`parley bench call`: calls one after another, two single-utterance turns each, temperature 0, seed 42,"
        " replies capped at 40 tokens, end-of-turn silence 500 ms, measured at the headless client; with"
        " `--compare KEY=VALUE` the same calls against a server with that setting changed, in the same run.\n\n"
        "| when | variant | answered | v2v p50 | v2v p95 | p50 vs default | asr p50 | llm first token p50 |"
        " first sentence p50 | tts first audio p50 | end of turn to first audio p50 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("call", document, "\n".join(rows), header)


# Each variant: the server's environment and the client's jitter buffer (received packets held).
BARGE_IN_VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "aiortc_jitter_4": ({"PARLEY_MEDIA_JITTER_BUFFER_PACKETS": "4"}, 4),
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
        files = _speaker_files(Path(tmp))
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
        f"| {when} | {name} | {f['measured']}/{f['calls']} | {_ms(f['stop_ms']['p50'])} | {_ms(f['stop_ms']['p95'])} |"
        f" {_ms(f['stop_ms']['max'])} | {f['within_200ms']}/{f['measured']} | {f['p50_vs_aiortc']} |"
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


def _speaker_files(tmp: Path) -> list[str]:
    """The two speakers of the benchmark recording, one file each (a sentence apiece)."""
    files = []
    for channel in (0, 1):
        path = tmp / f"speaker-{channel}.wav"
        write_wav(path, read_audio(SPEECH, 16000, channel=channel), 16000)
        files.append(str(path))
    return files


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


QUESTIONS = [
    ["What is the capital of France?", "How many people live there?", "Name one famous museum in it."],
    ["What colour is the sky?", "Why is it that colour?", "What colour is it at sunset?"],
    ["Give me a tip for sleeping better.", "And another one?", "How long should an adult sleep?"],
    ["What is a good breakfast?", "Is coffee healthy?", "How much water should I drink?"],
    ["Tell me about the moon.", "How far away is it?", "Who first walked on it?"],
    ["What is the largest ocean?", "How deep is it?", "Name an animal that lives there."],
    ["How do I boil an egg?", "How long for a soft egg?", "Should I add salt to the water?"],
    ["What is the tallest mountain?", "Where is it?", "Who climbed it first?"],
]


async def _conversation(pool, questions: list[str], first_tokens: list[float]) -> tuple[int, int]:
    """Ask the questions in order, each with the dialog so far; returns (requests, tokens)."""
    history: list[dict] = []
    tokens = 0
    for question in questions:
        history.append({"role": "user", "content": question})
        started = time.monotonic()
        reply = ""
        async for delta in pool.stream_chat(pool.with_system_prompt(history)):
            if not reply:
                first_tokens.append(1000 * (time.monotonic() - started))
            reply += delta
            tokens += 1
        history.append({"role": "assistant", "content": reply})
    return len(questions), tokens


async def bench_llm(args: argparse.Namespace) -> None:
    import dataclasses

    from parley.runtime import services
    from parley.settings import load_settings
    from pipeline.llm_pool import LLMPool

    settings = load_settings()
    settings = dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, temperature=0.0, seed=42))
    base = settings.llm_pool
    modes = {
        "sequential": dataclasses.replace(base, mode="concurrent", max_inflight=1, max_batch=1, queue_timeout_ms=600_000),
        "concurrent": dataclasses.replace(base, mode="concurrent", queue_timeout_ms=600_000),
        "prompts": dataclasses.replace(base, mode="prompts", queue_timeout_ms=600_000),
    }
    results: dict[str, dict[str, float | None]] = {}
    async with services(settings, redis=False) as running:
        for name, pool_config in modes.items():
            first_tokens: list[float] = []
            async with LLMPool(running.settings.llm, pool_config) as pool:
                await _conversation(pool, ["Say hello."], [])  # warm the server's caches
                started = time.monotonic()
                counts = await asyncio.gather(*(_conversation(pool, q, first_tokens) for q in QUESTIONS))
                elapsed = time.monotonic() - started
            requests, tokens = sum(c[0] for c in counts), sum(c[1] for c in counts)
            results[name] = {
                "requests_per_s": round(requests / elapsed, 2),
                "tokens_per_s": round(tokens / elapsed, 1),
                "first_token_ms_p50": percentile(first_tokens, 50),
                "first_token_ms_p99": percentile(first_tokens, 99),
                "seconds": round(elapsed, 2),
            }
            print(f"{name}: {results[name]}")
    for name in results:
        results[name]["throughput_vs_sequential"] = round(
            results[name]["tokens_per_s"] / results["sequential"]["tokens_per_s"], 2
        )
    figures = {
        "benchmark": "llm",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conversations": len(QUESTIONS),
        "settings": {
            "temperature": 0, "seed": 42, "max_tokens": settings.llm.max_tokens,
            "llm_server_parallel": settings.llm_server.parallel, "llm_server_threads": settings.llm_server.threads,
            "max_batch": base.max_batch, "window_ms": base.window_ms, "machine_cores": os.cpu_count(),
        },
        "modes": results,
    }
    row = f"| {figures['when']} | " + " | ".join(
        f"{results[m]['tokens_per_s']} tok/s ({results[m]['throughput_vs_sequential']}x), "
        f"first token p50 {_ms(results[m]['first_token_ms_p50'])} / p99 {_ms(results[m]['first_token_ms_p99'])} ms"
        for m in modes
    ) + " |"
    header = (
        "# LLM pool benchmark\n\n"
        "`parley bench llm`: 8 concurrent conversations of 3 questions against the bundled llama-server,"
        " temperature 0, seed 42. Throughput as a ratio to `sequential` (one request at a time).\n\n"
        "| when | sequential | concurrent | prompts |\n| --- | --- | --- | --- |\n"
    )
    write_results("llm", figures, row, header)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


async def bench_asr(args: argparse.Namespace) -> None:
    """The ASR window sized per utterance against faster-whisper's fixed 30 s, on the same clips."""
    import dataclasses

    from parley.settings import load_settings
    from pipeline.asr import Transcriber

    config = load_settings().asr
    clips = [read_audio(SPEECH, 16000, channel=c) for c in (0, 1)]
    clips.append(np.concatenate(clips))  # a longer utterance: both sentences
    variants = {"window_30s": False, "window_sized": True}
    figures_by_variant: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for name, sized in variants.items():
        transcriber = Transcriber(dataclasses.replace(config, sized_window=sized))
        await transcriber.transcribe(clips[0])  # warm-up
        times: list[float] = []
        texts[name] = []
        for repeat in range(args.repeats):
            for clip in clips:
                started = time.monotonic()
                text = (await transcriber.transcribe(clip)).text
                times.append(1000 * (time.monotonic() - started))
                if repeat == 0:
                    texts[name].append(text)
        figures_by_variant[name] = {"ms_per_clip_p50": percentile(times, 50), "ms_per_clip_mean": round(float(np.mean(times)), 1)}
    ratio = round(figures_by_variant["window_30s"]["ms_per_clip_p50"] / figures_by_variant["window_sized"]["ms_per_clip_p50"], 2)
    figures = {
        "benchmark": "asr",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": config.model,
        "clips_s": [round(c.size / 16000, 2) for c in clips],
        "repeats": args.repeats,
        "variants": figures_by_variant,
        "speedup_sized_vs_30s": ratio,
        "same_text": texts["window_30s"] == texts["window_sized"],
        "texts": texts,
    }
    row = (
        f"| {figures['when']} | {figures_by_variant['window_30s']['ms_per_clip_p50']} | "
        f"{figures_by_variant['window_sized']['ms_per_clip_p50']} | {ratio}x | {figures['same_text']} |"
    )
    header = (
        "# ASR window benchmark\n\n`parley bench asr`: Whisper tiny.en int8, greedy, the same clips (2.5–7.5 s) with"
        " faster-whisper's fixed 30 s window and with the window sized per utterance.\n\n"
        "| when | 30 s window, ms/clip p50 | sized window, ms/clip p50 | speed-up | same text |\n| --- | --- | --- | --- | --- |\n"
    )
    write_results("asr", figures, row, header)


async def run_bench(args: argparse.Namespace) -> None:
    if args.bench == "asr":
        await bench_asr(args)
    elif args.bench == "call":
        await bench_call(args)
    elif args.bench == "llm":
        await bench_llm(args)
    elif args.bench == "barge-in":
        await bench_barge_in(args)
